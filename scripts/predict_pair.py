"""Rule predict_pair: thin adapter to mschange.detection.steps."""

from mschange.detection.steps import inference_settings, predict_pair_step
from mschange.logs import logging_to

with logging_to(snakemake.log[0], "predict_pair"):
    predict_pair_step(
        snakemake.input.baseline,
        snakemake.input.followup,
        [snakemake.input.baseline_mask, snakemake.input.followup_mask],
        snakemake.input.native_followup,
        snakemake.input.model,
        dict(snakemake.output.items()),
        subject=snakemake.wildcards.subject,
        settings=inference_settings(snakemake.params.inference),
        device=snakemake.params.device,
        threads=snakemake.threads,
    )
