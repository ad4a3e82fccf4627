"""Rule lesion_figures: thin adapter to mschange.synthesis.steps."""

from mschange.logs import logging_to
from mschange.synthesis.steps import lesion_figures_step

with logging_to(snakemake.log[0], "lesion_figures"):
    lesion_figures_step(
        {"baseline": snakemake.input.baseline, "followup": snakemake.input.followup},
        [snakemake.input.baseline_mask, snakemake.input.followup_mask],
        {
            "baseline": snakemake.input.painted_baseline,
            "followup": snakemake.input.painted_followup,
            "label": snakemake.input.painted_label,
        },
        png=snakemake.output.figure,
        record_json=snakemake.output.record,
    )
