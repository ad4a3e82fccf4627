"""Rule rescan_realism: thin adapter to mschange.synthesis.realism."""

from mschange.logs import logging_to
from mschange.synthesis.realism import realism_step

with logging_to(snakemake.log[0], "rescan_realism"):
    realism_step(
        snakemake.params.pairs,
        png=snakemake.output.figure,
        tsv=snakemake.output.table,
        augmentation=snakemake.params.augmentation,
        seed=snakemake.params.seed,
    )
