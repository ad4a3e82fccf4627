"""Rule simulate_rescan: thin adapter to mschange.synthesis.steps."""

from mschange.logs import logging_to
from mschange.synthesis.steps import rescan_settings, rescan_step

with logging_to(snakemake.log[0], "simulate_rescan"):
    rescan_step(
        snakemake.input.scan,
        snakemake.output.image,
        snakemake.output.record,
        subject=snakemake.wildcards.subject,
        seed=snakemake.params.seed,
        settings=rescan_settings(snakemake.params.settings),
    )
