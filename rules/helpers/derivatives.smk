# Helpers of rules/derivatives.smk: the main model's predictions that make the BIDS
# derivatives dataset (mschange.bids; docs/bids.md).
import os
from types import SimpleNamespace

from mschange.bids import pair_entities
from mschange.detection.outputs import page_paths, pair_page_paths, viewer_link

BIDS_DERIVATIVES_DIR = "results/derivatives/mschange"
# Each test pair's viewer and summary as rule pair_pages writes them, before they are
# copied into the dataset.
PAGES_DIR = "results/pages/sub-{subject}"


def main_prediction_of(subject):
    """The main model's prediction files of one pair (flat, as predict_pair leaves them)."""
    return prediction_paths(
        f"{PREDICT_DIR}/sub-{{subject}}".format(model=MAIN_MODEL, subject=subject),
        subject,
    )


def main_prediction(wildcards):
    paths = main_prediction_of(wildcards.subject)
    return {key: paths[key] for key in ("probability", "labels", "lesions", "record")}


def entities_of(subject):
    """The pair's subject and session labels in the dataset (mschange.bids)."""
    return pair_entities(subject, COHORT_ROWS[subject]["followup"])


def pages_of(subject):
    """The pair's pages as rule pair_pages writes them, and its QC picture."""
    return {
        **page_paths(PAGES_DIR.format(subject=subject), subject),
        "qc_figure": f"results/qc/sub-{subject}_desc-preproc_qc.png",
    }


def dataset_pages_of(subject):
    """Where the pair's pages end up in the dataset."""
    return pair_page_paths(BIDS_DERIVATIVES_DIR, entities_of(subject))


def report_pair_pages():
    """Each test pair's summary record, and its pages as the report links them."""
    if not derivatives_targets():
        return []
    return [
        {
            "subject": subject,
            "summary_json": pages_of(subject)["summary_json"],
            **{
                f"{key}_href": os.path.relpath(
                    dataset_pages_of(subject)[key], REPORT_DIR
                )
                for key in ("summary_html", "viewer")
            },
        }
        for subject in TEST_SUBJECTS
    ]


def derivative_predictions():
    """Each test pair's main-model prediction files (flat, as predict_pair leaves them)
    and raw scans (a single scan's baseline: its simulated rescan), by subject id."""
    pairs = {}
    for subject in TEST_SUBJECTS:
        pairs[subject] = {
            "outputs": prediction_paths(
                f"{PREDICT_DIR}/sub-{{subject}}".format(
                    model=MAIN_MODEL, subject=subject
                ),
                subject,
            ),
            "pages": pages_of(subject),
            **{
                tp: raw_scan(SimpleNamespace(subject=subject, tp=tp))
                for tp in TIMEPOINTS
            },
        }
    return pairs


def derivative_inputs():
    return [
        path
        for pair in derivative_predictions().values()
        for files in (pair["outputs"], pair["pages"])
        for path in files.values()
    ]


def derivatives_targets():
    """The dataset, when the main model predicts any test pair."""
    if not MODELS_AVAILABLE or not TEST_SUBJECTS:
        return []
    return [BIDS_DERIVATIVES_DIR]
