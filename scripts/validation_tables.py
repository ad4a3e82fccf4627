"""Rule validation_tables: thin adapter to mschange.evaluation.validation."""

from mschange.evaluation.validation import validation_tables_step
from mschange.logs import logging_to

with logging_to(snakemake.log[0], "validation_tables"):
    validation_tables_step(
        snakemake.input.scores,
        methods=snakemake.params.methods,
        summary_tsv=snakemake.output.summary,
        summary_md=snakemake.output.markdown,
    )
