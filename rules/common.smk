# Configuration, cohort and helpers shared by every rule file.
from pathlib import Path

from snakemake.exceptions import WorkflowError

from mschange import demo as mschange_demo
from mschange.cohort import (
    CohortError,
    check_cohort_images,
    cohort_from_bids,
    read_cohort_sheet,
)
from mschange.config import ConfigError, validate_config
from mschange.detection.outputs import prediction_paths

try:
    _validated = validate_config(config)
except ConfigError as error:
    raise WorkflowError(str(error)) from None
config.clear()
config.update(_validated)

SUBJECT_PATTERN = r"[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*"
TIMEPOINTS = ["baseline", "followup"]
DEMO_DIR = "results/demo"


wildcard_constraints:
    subject=SUBJECT_PATTERN,
    tp="baseline|followup",


def demo_cohort():
    """The demo cohort's rows, known from the config before the images exist."""
    import pandas as pd

    rows = []
    for subject, has_change in mschange_demo.demo_subject_ids(
        config["demo"]["n_train"], config["demo"]["n_test"]
    ):
        paths = mschange_demo.demo_subject_paths(Path(DEMO_DIR), subject)
        rows.append(
            {
                "subject": subject,
                "baseline": str(paths.baseline),
                "followup": str(paths.followup),
                "split": "test" if has_change else "train",
                "change": "yes" if has_change else "no",
                "label": str(paths.change_mask) if has_change else "",
            }
        )
    for subject in mschange_demo.demo_single_ids(
        config["demo"]["n_train"], config["demo"]["n_test"], config["demo"]["n_single"]
    ):
        paths = mschange_demo.demo_subject_paths(Path(DEMO_DIR), subject)
        rows.append(
            {
                "subject": subject,
                "baseline": "",
                "followup": str(paths.followup),
                "split": "train",
                "change": "no",
                "label": "",
            }
        )
    return pd.DataFrame(rows)


def load_cohort():
    """The cohort, checked before any job starts (the demo's images are checked by its jobs)."""
    import pandas as pd

    cohort_config = config["cohort"]
    try:
        if cohort_config["source"] == "demo":
            return demo_cohort()
        if cohort_config["source"] == "sheet":
            cohort = read_cohort_sheet(cohort_config["sheet"])
        else:
            cohort = cohort_from_bids(
                cohort_config["bids_dir"],
                split=cohort_config["bids_split"],
                change=cohort_config["bids_change"],
            )
        check_cohort_images(
            cohort,
            check_voxels=cohort_config["check_voxels"],
            cache_file="results/cache/input_checks.json",
        )
    except CohortError as error:
        raise WorkflowError(str(error)) from None
    if cohort_config["include_demo"]:
        demo = demo_cohort()
        clash = sorted(set(demo["subject"]) & set(cohort["subject"]))
        if clash:
            raise WorkflowError(
                f"cohort.include_demo: subject id(s) {', '.join(clash)} are used by both "
                "the cohort and the demo cohort"
            )
        cohort = pd.concat([cohort, demo], ignore_index=True)
    return cohort


COHORT = load_cohort().set_index("subject", drop=False)
SUBJECTS = list(COHORT["subject"])
USES_DEMO = config["cohort"]["source"] == "demo" or config["cohort"]["include_demo"]
DEMO_SUBJECTS = list(demo_cohort()["subject"]) if USES_DEMO else []
# Rows without a baseline: single scans, paired with a simulated rescan of themselves.
SINGLE_SUBJECTS = list(COHORT.loc[COHORT["baseline"] == "", "subject"])
# The no-change training pairs: the VAE and SuperMix use these only.
NOCHANGE_SUBJECTS = list(
    COHORT.loc[(COHORT["change"] == "no") & (COHORT["split"] == "train"), "subject"]
)
if SINGLE_SUBJECTS and not config["synthesis"]["rescan"]["enabled"]:
    raise WorkflowError(
        f"the cohort has {len(SINGLE_SUBJECTS)} single scan(s) without a baseline "
        f"({', '.join(SINGLE_SUBJECTS[:5])}{'...' if len(SINGLE_SUBJECTS) > 5 else ''}), "
        "but synthesis.rescan.enabled is false; enable it or give these rows a baseline"
    )


def raw_scan(wildcards):
    """The user's scan for one subject and time point (a simulated rescan for single scans)."""
    if wildcards.tp == "baseline" and wildcards.subject in SINGLE_SUBJECTS:
        return "results/rescan/sub-{subject}/sub-{subject}_tp-baseline_desc-rescan_FLAIR.nii.gz".format(
            subject=wildcards.subject
        )
    return COHORT.loc[wildcards.subject, wildcards.tp]


def gpu_count():
    """GPUs a network-running job asks for: one on CUDA, none on CPU."""
    return 1 if config["device"].startswith("cuda") else 0


def preprocessed_pairs():
    """Final preprocessed images of every pair (both time points on the follow-up grid)."""
    return expand(
        "results/preproc/sub-{subject}/sub-{subject}_tp-{tp}_space-followup_desc-preproc_FLAIR.nii.gz",
        subject=SUBJECTS,
        tp=TIMEPOINTS,
    )


def brain_on_followup_grid(wildcards):
    """Skull-stripped image and mask of a time point, on the follow-up's 1 mm grid."""
    if wildcards.tp == "followup":
        return {
            "brain": "results/preproc/sub-{subject}/sub-{subject}_tp-followup_desc-brain_FLAIR.nii.gz",
            "mask": "results/preproc/sub-{subject}/sub-{subject}_tp-followup_desc-brain_mask.nii.gz",
        }
    return {
        "brain": "results/preproc/sub-{subject}/sub-{subject}_tp-baseline_space-followup_desc-brain_FLAIR.nii.gz",
        "mask": "results/preproc/sub-{subject}/sub-{subject}_tp-baseline_space-followup_desc-brain_mask.nii.gz",
    }


def demo_sheet():
    """The demo cohort's sheet, a target only when the demo cohort is the input."""
    return ["results/demo/cohort.tsv"] if USES_DEMO else []


# ----------------------------------------------------------------------------- synthesis

SYNTHESIS = config["synthesis"]
MAIN_ENCODER = SYNTHESIS["vae"]["encoder"]
OTHER_ENCODER = {"maxpool": "strided", "strided": "maxpool"}[MAIN_ENCODER]
VAE_ENCODERS = [MAIN_ENCODER] + (
    [OTHER_ENCODER] if SYNTHESIS["vae"]["compare_encoders"] else []
)
SAMPLES = [f"{k:03d}" for k in range(SYNTHESIS["supermix"]["samples_per_subject"])]


def nochange_scans():
    """Preprocessed scans (both time points, follow-up grid) of the no-change pairs."""
    if not NOCHANGE_SUBJECTS:
        raise WorkflowError(
            "the VAE and SuperMix need no-change training pairs (change: no, split: train), "
            "and the cohort has none"
        )
    return expand(
        "results/preproc/sub-{subject}/sub-{subject}_tp-{tp}_space-followup_desc-preproc_FLAIR.nii.gz",
        subject=NOCHANGE_SUBJECTS,
        tp=TIMEPOINTS,
    )


def nochange_masks():
    """Brain masks matching :func:`nochange_scans`, in the same order."""
    masks = []
    for subject in NOCHANGE_SUBJECTS:
        folder = f"results/preproc/sub-{subject}"
        masks += [
            f"{folder}/sub-{subject}_tp-baseline_space-followup_desc-brain_mask.nii.gz",
            f"{folder}/sub-{subject}_tp-followup_desc-brain_mask.nii.gz",
        ]
    return masks


def synthesis_targets():
    """The VAE(s), every SuperMix sample and the figures; none without no-change pairs."""
    if not NOCHANGE_SUBJECTS:
        return []
    return [
        *expand("results/vae/encoder-{encoder}/vae.pt", encoder=VAE_ENCODERS),
        *expand(
            "results/supermix/sub-{subject}/sub-{subject}_sample-{sample}_desc-supermix.json",
            subject=NOCHANGE_SUBJECTS,
            sample=SAMPLES,
        ),
        "results/synthesis/figures/supermix_examples.png",
    ]


# ----------------------------------------------------------------------------- detector

DETECTOR = config["detector"]
DETECTOR_DIR = f"results/detector/model-{DETECTOR['name']}"
PREDICT_DIR = f"results/predict/model-{DETECTOR['name']}"
# The pairs the detector is run on.
TEST_SUBJECTS = list(COHORT.loc[COHORT["split"] == "test", "subject"])


def supermix_files(desc):
    """One kind of SuperMix file (e.g. ``change_mask``) of every sample, in a fixed order."""
    return expand(
        "results/supermix/sub-{subject}/sub-{subject}_sample-{sample}_desc-{desc}.nii.gz",
        subject=NOCHANGE_SUBJECTS,
        sample=SAMPLES,
        desc=desc,
    )


def prediction_outputs():
    """Outputs of one pair's prediction (names shared with `mschange predict`)."""
    outputs = prediction_paths(f"{PREDICT_DIR}/sub-{{subject}}", "{subject}")
    outputs["figure"] = report(
        outputs["figure"],
        category="Detector",
        subcategory="Predictions",
        caption="../report/prediction_overlay.rst",
    )
    return outputs


def detector_targets():
    """The trained detector and the predictions of every test pair."""
    if not NOCHANGE_SUBJECTS:
        return []
    return [
        f"{DETECTOR_DIR}/model.pt",
        *expand(prediction_outputs()["lesions"], subject=TEST_SUBJECTS),
    ]
