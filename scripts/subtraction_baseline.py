"""Rule subtraction_baseline: thin adapter to mschange.evaluation.baseline."""

from mschange.evaluation.baseline import subtraction_step
from mschange.logs import logging_to

with logging_to(snakemake.log[0], "subtraction_baseline"):
    subtraction_step(
        snakemake.input.baseline,
        snakemake.input.followup,
        [snakemake.input.baseline_mask, snakemake.input.followup_mask],
        snakemake.output.zmap,
        snakemake.output.record,
        subject=snakemake.wildcards.subject,
        sigma_mm=snakemake.params.sigma_mm,
        erode_mm=snakemake.params.erode_mm,
        harmonise=snakemake.params.harmonise,
    )
