"""Rule list_validation_pairs: the validation pair table (rules/common.smk) as a file."""

from mschange.io import write_file_table
from mschange.logs import logging_to

with logging_to(snakemake.log[0], "list_validation_pairs"):
    write_file_table(dict(snakemake.params.table), snakemake.output[0])
