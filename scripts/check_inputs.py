"""Rule check_inputs: thin adapter to mschange.cohort (cohort.check_inputs: per_subject)."""

from mschange.cohort import check_pair_images_step
from mschange.logs import logging_to

with logging_to(snakemake.log[0], "check_inputs"):
    check_pair_images_step(
        snakemake.wildcards.subject,
        dict(snakemake.input.items()),
        snakemake.output[0],
        check_voxels=snakemake.params.check_voxels,
    )
