"""Rule validate_method: thin adapter to mschange.evaluation.validation."""

from mschange.evaluation.metrics import MetricSettings
from mschange.evaluation.validation import validation_pairs, validation_step
from mschange.io import read_file_table
from mschange.logs import logging_to

with logging_to(snakemake.log[0], "validate_method"):
    validation_step(
        validation_pairs(read_file_table(snakemake.input.pairs)),
        snakemake.output.scores,
        method=snakemake.wildcards.method,
        threshold=snakemake.params.threshold,
        blob_sizes=snakemake.params.blob_sizes,
        settings=MetricSettings.from_dict(snakemake.params.metrics),
        model=snakemake.input.get("model") or None,
        inference=snakemake.params.inference,
        baseline_settings=snakemake.params.baseline,
        device=snakemake.params.device,
        threads=snakemake.threads,
    )
