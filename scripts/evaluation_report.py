"""Rule evaluation_report: thin adapter to mschange.evaluation.report."""

from pathlib import Path

from mschange.evaluation.report import PairPages, ReportInputs, write_report
from mschange.logs import logging_to
from mschange.status import status_from_request, write_cohort_status

with logging_to(snakemake.log[0], "evaluation_report"):
    cohort_status = status_from_request(snakemake.params.status)
    write_cohort_status(cohort_status, snakemake.output.cohort_status)
    write_report(
        ReportInputs(
            tables={Path(p).stem: p for p in snakemake.input.tables},
            boxplots=snakemake.input.boxplots,
            threshold_curves=snakemake.input.threshold_curves,
            overlays={(s, m): p for s, m, p in snakemake.params.overlays},
            training_curves=dict(
                zip(snakemake.params.models, snakemake.input.training_curves, strict=True)
            ),
            qc_table=snakemake.input.qc_table,
            supermix_examples=snakemake.input.get("supermix_examples"),
            lesion_examples=snakemake.input.get("lesion_examples"),
            validation=snakemake.input.get("validation"),
            augmentations=snakemake.input.get("augmentations"),
            rescan_realism=snakemake.input.get("rescan_realism"),
            cohort_status=cohort_status,
            pair_pages={
                page["subject"]: PairPages(
                    page["summary_json"], page["summary_html_href"], page["viewer_href"]
                )
                for page in snakemake.params.pair_pages
            },
        ),
        snakemake.output.html,
        methods=snakemake.params.methods,
        baseline=snakemake.params.baseline,
        headline_blob=snakemake.params.headline_blob,
        metric_settings=snakemake.params.metrics,
    )
