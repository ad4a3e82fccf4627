"""Rule aggregate_qc: thin adapter to mschange.qc_report."""

from mschange.logs import logging_to
from mschange.qc_report import write_cohort_qc_table

with logging_to(snakemake.log[0], "aggregate_qc"):
    write_cohort_qc_table(
        snakemake.input,
        snakemake.output[0],
        cohort=snakemake.params.cohort,
        steps=snakemake.params.steps,
        benchmark_dir=snakemake.params.benchmark_dir,
        min_similarity=snakemake.params.min_similarity,
        max_contrast=snakemake.params.max_contrast,
        min_brain_ml=snakemake.params.min_brain_ml,
        max_brain_ml=snakemake.params.max_brain_ml,
    )
