"""Rule skullstrip_hdbet: thin adapter to mschange.preprocessing.steps."""

from mschange.logs import logging_to
from mschange.preprocessing.steps import skullstrip_step

with logging_to(snakemake.log[0], "skullstrip_hdbet"):
    skullstrip_step(
        snakemake.input[0],
        snakemake.output.brain,
        snakemake.output.mask,
        subject=snakemake.wildcards.subject,
        mode=snakemake.params.mode,
        device=snakemake.params.device,
        tta=snakemake.params.tta,
        threads=snakemake.threads,
        source=snakemake.params.source,
    )
