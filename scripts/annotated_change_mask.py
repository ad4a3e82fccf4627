"""Rule annotated_change_mask: thin adapter to mschange.detection.steps."""

from mschange.detection.steps import annotated_change_mask_step
from mschange.logs import logging_to

with logging_to(snakemake.log[0], "annotated_change_mask"):
    annotated_change_mask_step(
        snakemake.input.label,
        snakemake.input.followup,
        snakemake.output[0],
        subject=snakemake.wildcards.subject,
    )
