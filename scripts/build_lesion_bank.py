"""Rule build_lesion_bank: thin adapter to mschange.synthesis.lesions."""

from mschange.logs import logging_to
from mschange.synthesis.lesions import build_lesion_bank_step

with logging_to(snakemake.log[0], "build_lesion_bank"):
    build_lesion_bank_step(
        snakemake.input.masks,
        snakemake.output.bank,
        snakemake.output.summary,
        min_volume_mm3=snakemake.params.min_volume_mm3,
        max_volume_mm3=snakemake.params.max_volume_mm3,
    )
