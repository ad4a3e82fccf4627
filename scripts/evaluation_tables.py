"""Rule evaluation_tables: thin adapter to mschange.evaluation.tables and .figures."""

from mschange.evaluation.steps import tables_step
from mschange.logs import logging_to

with logging_to(snakemake.log[0], "evaluation_tables"):
    tables_step(
        snakemake.input.metrics,
        snakemake.input.sweeps,
        table_dir=snakemake.params.table_dir,
        boxplots=snakemake.output.metric_boxplots,
        threshold_curves=snakemake.output.threshold_curves,
        methods=snakemake.params.methods,
        headline_blob=snakemake.params.headline_blob,
        descriptions=snakemake.params.descriptions,
    )
