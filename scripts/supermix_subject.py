"""Rule supermix_subject: thin adapter to mschange.synthesis.steps."""

from mschange.logs import logging_to
from mschange.synthesis.steps import supermix_settings, supermix_step, tiling_settings

with logging_to(snakemake.log[0], "supermix_subject"):
    supermix_step(
        {"baseline": snakemake.input.baseline, "followup": snakemake.input.followup},
        [snakemake.input.baseline_mask, snakemake.input.followup_mask],
        snakemake.input.model,
        {
            "synthesised": snakemake.output.synthesised,
            "reference": snakemake.output.reference,
            "label": snakemake.output.label,
            "record": snakemake.output.record,
        },
        subject=snakemake.wildcards.subject,
        seed=snakemake.params.seed,
        settings=supermix_settings(snakemake.params.supermix),
        tiling=tiling_settings(snakemake.params.crop_size, snakemake.params.supermix),
        device=snakemake.params.device,
        threads=snakemake.threads,
    )
