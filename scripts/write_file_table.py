"""Rules list_training_scans and list_training_samples: the input files as one table."""

from mschange.io import write_file_table
from mschange.logs import logging_to

with logging_to(snakemake.log[0], snakemake.rule):
    write_file_table(
        {name: list(files) for name, files in snakemake.input.items()}, snakemake.output[0]
    )
