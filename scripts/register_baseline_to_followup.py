"""Rule register_baseline_to_followup: thin adapter to mschange.preprocessing.steps."""

from mschange.logs import logging_to
from mschange.preprocessing.steps import register_step

with logging_to(snakemake.log[0], "register_baseline_to_followup"):
    register_step(
        followup_brain=snakemake.input.followup_brain,
        baseline_brain=snakemake.input.baseline_brain,
        baseline_mask=snakemake.input.baseline_mask,
        transform_output=snakemake.output.transform,
        moved_brain_output=snakemake.output.brain,
        moved_mask_output=snakemake.output.mask,
        subject=snakemake.wildcards.subject,
        transform=snakemake.params.transform,
        sampling_points=snakemake.params.sampling_points,
        seed=snakemake.params.seed,
        threads=snakemake.threads,
    )
