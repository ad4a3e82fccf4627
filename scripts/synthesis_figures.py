"""Rule synthesis_figures: thin adapter to mschange.synthesis.steps."""

from mschange.logs import logging_to
from mschange.synthesis.steps import figures_step, supermix_settings, tiling_settings

with logging_to(snakemake.log[0], "synthesis_figures"):
    figures_step(
        snakemake.input.scan,
        snakemake.input.masks,
        dict(zip(snakemake.params.encoders, snakemake.input.models, strict=True)),
        main_encoder=snakemake.params.main_encoder,
        supermix_png=snakemake.output.supermix,
        encoders_png=snakemake.output.encoders,
        record_json=snakemake.output.record,
        seed=snakemake.params.seed,
        settings=supermix_settings(snakemake.params.supermix),
        tiling=tiling_settings(snakemake.params.crop_size, snakemake.params.supermix),
        n_segments=snakemake.params.figures["n_segments"],
        deltas=snakemake.params.figures["deltas"],
        device=snakemake.params.device,
        threads=snakemake.threads,
    )
