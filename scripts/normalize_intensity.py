"""Rule normalize_intensity: thin adapter to mschange.preprocessing.steps."""

from mschange.logs import logging_to
from mschange.preprocessing.steps import normalize_step

with logging_to(snakemake.log[0], "normalize_intensity"):
    normalize_step(
        snakemake.input.image,
        snakemake.input.mask,
        snakemake.output[0],
        subject=snakemake.wildcards.subject,
        low_percentile=snakemake.params.low_percentile,
        high_percentile=snakemake.params.high_percentile,
    )
