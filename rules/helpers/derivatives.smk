# Helpers of rules/derivatives.smk: the main model's predictions that make the BIDS
# derivatives dataset (mschange.bids; docs/bids.md).
from types import SimpleNamespace

BIDS_DERIVATIVES_DIR = "results/derivatives/mschange"


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
        for path in pair["outputs"].values()
    ]


def derivatives_targets():
    """The dataset, when the main model predicts any test pair."""
    if not MODELS_AVAILABLE or not TEST_SUBJECTS:
        return []
    return [BIDS_DERIVATIVES_DIR]
