"""Rule predict_pair: thin adapter to mschange.detection.steps."""

from mschange.detection.steps import inference_settings, predict_pair_step
from mschange.logs import logging_to

with logging_to(snakemake.log[0], "predict_pair"):
    predict_pair_step(
        baseline=snakemake.input.baseline,
        followup=snakemake.input.followup,
        masks=[snakemake.input.baseline_mask, snakemake.input.followup_mask],
        native_followup=snakemake.input.native_followup,
        model=snakemake.input.model,
        outputs=dict(snakemake.output.items()),
        subject=snakemake.wildcards.subject,
        settings=inference_settings(snakemake.params.inference),
        device=snakemake.params.device,
        threads=snakemake.threads,
    )
