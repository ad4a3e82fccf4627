"""Rule resample_isotropic: thin adapter to mschange.preprocessing.steps."""

from mschange.logs import logging_to
from mschange.preprocessing.steps import resample_step

with logging_to(snakemake.log[0], "resample_isotropic"):
    resample_step(
        snakemake.input.scan,
        snakemake.output[0],
        subject=snakemake.wildcards.subject,
        resolution_mm=snakemake.params.resolution_mm,
        order=snakemake.params.order,
    )
