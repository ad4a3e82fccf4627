"""Rule register_baseline_to_followup: thin adapter to mschange.preprocessing.steps."""

from mschange.logs import logging_to
from mschange.preprocessing.steps import register_step

with logging_to(snakemake.log[0], "register_baseline_to_followup"):
    register_step(
        snakemake.input.followup_brain,
        snakemake.input.baseline_brain,
        snakemake.input.baseline_mask,
        snakemake.output.transform,
        snakemake.output.brain,
        snakemake.output.mask,
        subject=snakemake.wildcards.subject,
        transform=snakemake.params.transform,
        sampling_points=snakemake.params.sampling_points,
        seed=snakemake.params.seed,
        threads=snakemake.threads,
    )
