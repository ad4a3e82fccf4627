"""Rule qc_pair: thin adapter to mschange.preprocessing.steps."""

from mschange.logs import logging_to
from mschange.preprocessing.steps import qc_pair_step

with logging_to(snakemake.log[0], "qc_pair"):
    qc_pair_step(
        snakemake.input.followup,
        snakemake.input.baseline,
        snakemake.input.followup_mask,
        snakemake.input.baseline_mask,
        snakemake.output.png,
        snakemake.output.json,
        subject=snakemake.wildcards.subject,
        min_similarity=snakemake.params.min_similarity,
        max_contrast=snakemake.params.max_contrast,
    )
