"""Rule evaluate_pair: thin adapter to mschange.evaluation.steps."""

from mschange.evaluation.metrics import MetricSettings
from mschange.evaluation.steps import evaluate_pair_step
from mschange.logs import logging_to

with logging_to(snakemake.log[0], "evaluate_pair"):
    evaluate_pair_step(
        score=snakemake.input.score,
        baseline=snakemake.input.baseline,
        followup=snakemake.input.followup,
        masks=[snakemake.input.baseline_mask, snakemake.input.followup_mask],
        native_followup=snakemake.input.native_followup,
        label=snakemake.input.label or None,
        outputs=dict(snakemake.output.items()),
        subject=snakemake.wildcards.subject,
        method=snakemake.wildcards.method,
        threshold=snakemake.params.threshold,
        sweep_thresholds=snakemake.params.sweep,
        min_blob_voxels=int(snakemake.wildcards.minblob),
        settings=MetricSettings.from_dict(snakemake.params.metrics),
        max_slices=snakemake.params.max_slices,
    )
