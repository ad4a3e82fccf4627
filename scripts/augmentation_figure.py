"""Rule augmentation_figure: thin adapter to mschange.detection.steps."""

from mschange.detection.steps import augmentation_figure_step
from mschange.logs import logging_to

with logging_to(snakemake.log[0], "augmentation_figure"):
    augmentation_figure_step(
        snakemake.input.baseline,
        snakemake.input.followup,
        [snakemake.input.baseline_mask, snakemake.input.followup_mask],
        settings=snakemake.params.settings,
        seed=snakemake.params.seed,
        png=snakemake.output.figure,
    )
