"""Rule train_vae: thin adapter to mschange.synthesis.steps."""

from mschange.io import read_file_table
from mschange.logs import logging_to
from mschange.synthesis.steps import train_vae_step, vae_settings

with logging_to(snakemake.log[0], "train_vae"):
    scans = read_file_table(snakemake.input.scans)
    train_vae_step(
        scans["images"],
        scans["masks"],
        model=snakemake.output.model,
        loss_tsv=snakemake.output.loss,
        curve_png=snakemake.output.curve,
        checkpoint_dir=snakemake.params.checkpoint_dir,
        settings=vae_settings(
            snakemake.params.settings,
            encoder=snakemake.wildcards.encoder,
            seed=snakemake.params.seed,
        ),
        device=snakemake.params.device,
        threads=snakemake.threads,
    )
