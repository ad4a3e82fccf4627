"""Rules paint_lesions_subject and paint_validation_subject: thin adapter to
mschange.synthesis.lesions."""

from mschange.logs import logging_to
from mschange.synthesis.lesions import lesion_paint_settings, paint_lesions_step

with logging_to(snakemake.log[0], snakemake.rule):
    paint_lesions_step(
        {"baseline": snakemake.input.baseline, "followup": snakemake.input.followup},
        [snakemake.input.baseline_mask, snakemake.input.followup_mask],
        snakemake.input.bank,
        {
            "baseline": snakemake.output.baseline,
            "followup": snakemake.output.followup,
            "label": snakemake.output.label,
            "record": snakemake.output.record,
        },
        subject=snakemake.wildcards.subject,
        seed=snakemake.params.seed,
        settings=lesion_paint_settings(snakemake.params.settings),
        raw_followup=snakemake.input.raw_followup,
    )
