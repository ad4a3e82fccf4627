"""Rule pair_pages: thin adapter to mschange.pair_pages."""

from mschange.logs import logging_to
from mschange.pair_pages import write_pair_pages
from mschange.summary import qc_thresholds

with logging_to(snakemake.log[0], "pair_pages"):
    write_pair_pages(
        baseline=snakemake.input.baseline,
        followup=snakemake.input.followup,
        masks=[snakemake.input.baseline_mask, snakemake.input.followup_mask],
        probability=snakemake.input.probability,
        labels=snakemake.input.labels,
        lesions=snakemake.input.lesions,
        record=snakemake.input.record,
        qc=snakemake.input.qc,
        qc_thresholds=qc_thresholds(snakemake.params.qc),
        outputs=snakemake.output,
        subject=snakemake.params.entities.subject,
        session=snakemake.params.entities.session,
        label=snakemake.input.label or None,
        viewer_link=snakemake.params.viewer_link,
        qc_figure=snakemake.input.qc_figure,
    )
