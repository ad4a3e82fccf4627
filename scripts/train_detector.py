"""Rule train_detector: thin adapter to mschange.detection.steps."""

from mschange.detection.steps import inference_settings, train_detector_step, training_settings
from mschange.detection.training import TrainingSample
from mschange.evaluation.metrics import MetricSettings
from mschange.evaluation.validation import TrainingValidation, validation_pairs
from mschange.io import read_file_table
from mschange.logs import logging_to

with logging_to(snakemake.log[0], "train_detector"):
    samples = read_file_table(snakemake.input.samples)
    validate = None
    if snakemake.input.validation:
        validate = TrainingValidation(
            validation_pairs(read_file_table(snakemake.input.validation)),
            inference_settings(snakemake.params.inference),
            MetricSettings.from_dict(snakemake.params.metrics),
            snakemake.params.kappa_sweep,
        )
    train_detector_step(
        [
            TrainingSample(baseline=b, followup=f, label=y)
            for b, f, y in zip(
                samples["baseline"], samples["followup"], samples["label"], strict=True
            )
        ],
        model=snakemake.output.model,
        last_model=snakemake.output.last,
        log_tsv=snakemake.output.log,
        curve_png=snakemake.output.curve,
        checkpoint_dir=snakemake.params.checkpoint_dir,
        settings=training_settings(snakemake.params.detector, seed=snakemake.params.seed),
        metadata=snakemake.params.metadata,
        device=snakemake.params.device,
        threads=snakemake.threads,
        validate=validate,
        initial_model=snakemake.input.initial or None,
    )
