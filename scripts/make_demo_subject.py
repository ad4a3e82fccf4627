"""Rule make_demo_subject: thin adapter to mschange.demo_phantom."""

from pathlib import Path

from mschange.demo_phantom import make_demo_subject
from mschange.logs import logging_to

with logging_to(snakemake.log[0], "make_demo_subject"):
    make_demo_subject(
        snakemake.wildcards.subject,
        Path(snakemake.output.baseline).parent.parent,
        has_change=snakemake.params.has_change,
        seed=snakemake.params.seed,
        voxel_size_mm=snakemake.params.voxel_size_mm,
    )
