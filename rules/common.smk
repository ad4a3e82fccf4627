# Configuration, cohort and helpers shared by every rule file.
import functools
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from mschange.cohort import (
    IMAGE_COLUMNS,
    CohortError,
    check_cohort_files_exist,
    check_cohort_images,
    cohort_from_bids,
    read_cohort_sheet,
    training_data_record,
)
from mschange.config import (
    BASELINE_NAME,
    ConfigError,
    config_warnings,
    model_configs,
    validate_config,
)
from mschange.demo_cohort import demo_cohort_rows
from mschange.detection.outputs import prediction_paths
from mschange.evaluation.outputs import REPORT_FIGURES, REPORT_TABLES, evaluation_paths
from mschange import layout
from mschange.preprocessing.pipeline import STEP_RULES
from mschange.pretrained import SHIPPED_FILES, preprocessing_differences, resolve_model
from mschange.subject_id import SUBJECT_ID_WILDCARD

try:
    _validated = validate_config(config)
except ConfigError as error:
    raise WorkflowError(str(error)) from None
config.clear()
config.update(_validated)
for _warning in config_warnings(config):
    print(f"mschange: warning: {_warning}", file=sys.stderr)

SUBJECT_PATTERN = SUBJECT_ID_WILDCARD  # mschange.subject_id: one rule for subject ids
# Check each subject's images in its own job (rules/status.smk) rather than all before
# the run, so that one broken image fails only its subject under --keep-going.
PER_SUBJECT_CHECKS = config["cohort"]["check_inputs"] == "per_subject"
TIMEPOINTS = list(layout.TIMEPOINTS)
# Every preprocessed file of a time point, and the pair every later stage reads, as
# wildcard patterns (mschange.layout names them for the rules and the package alike).
PREPROC_FILES = layout.timepoint_files()
PREPROCESSED_PAIR = layout.preprocessed_pair()
DEMO_DIR = "results/demo"


wildcard_constraints:
    subject=SUBJECT_PATTERN,
    tp="baseline|followup",


def demo_cohort():
    """The demo cohort's rows, known from the config before the images exist."""
    import pandas as pd

    demo = config["demo"]
    return pd.DataFrame(
        demo_cohort_rows(
            Path(DEMO_DIR), demo["n_train"], demo["n_test"], demo["n_single"]
        )
    )


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
        if PER_SUBJECT_CHECKS:
            check_cohort_files_exist(cohort)
        else:
            # Warnings (e.g. a pair whose scans hold identical voxels) do not stop the run.
            for warning in check_cohort_images(
                cohort,
                check_voxels=cohort_config["check_voxels"],
                cache_file="results/cache/input_checks.json",
            ):
                print(f"mschange: warning: {warning}", file=sys.stderr)
    except CohortError as error:
        raise WorkflowError(str(error)) from None
    if cohort_config["include_demo"]:
        demo = demo_cohort()
        # Case-insensitive, as within a sheet: sub-Demo01/ is sub-demo01/ on macOS.
        demo_ids = {subject.casefold() for subject in demo["subject"]}
        clash = sorted(s for s in cohort["subject"] if s.casefold() in demo_ids)
        if clash:
            raise WorkflowError(
                f"cohort.include_demo: subject id(s) {', '.join(clash)} are used by both "
                "the cohort and the demo cohort"
            )
        cohort = pd.concat([cohort, demo], ignore_index=True)
    return cohort


COHORT = load_cohort().set_index("subject", drop=False)
SUBJECTS = list(COHORT["subject"])
# Each subject's row as a plain dict (subject -> column -> value): input functions look
# a subject up here, once per job, rather than in the DataFrame (COHORT.loc costs tens
# of microseconds a call, over 10,000 jobs).
COHORT_ROWS = COHORT.to_dict("index")
USES_DEMO = config["cohort"]["source"] == "demo" or config["cohort"]["include_demo"]
DEMO_SUBJECTS = list(demo_cohort()["subject"]) if USES_DEMO else []
# Rows without a baseline: single scans, paired with a simulated rescan of themselves.
SINGLE_SUBJECTS = list(COHORT.loc[COHORT["baseline"] == "", "subject"])
SINGLE_SUBJECT_SET = frozenset(SINGLE_SUBJECTS)
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
    if wildcards.tp == "baseline" and wildcards.subject in SINGLE_SUBJECT_SET:
        return "results/rescan/sub-{subject}/sub-{subject}_tp-baseline_desc-rescan_FLAIR.nii.gz".format(
            subject=wildcards.subject
        )
    return COHORT_ROWS[wildcards.subject][wildcards.tp]


def cohort_images(wildcards):
    """A subject's own images (baseline, follow-up, label; those it has), as given."""
    row = COHORT_ROWS[wildcards.subject]
    return {column: row[column] for column in IMAGE_COLUMNS if row[column]}


# The record of a subject's input check, an input of its first steps when each subject
# is checked by a job (a plain template: no input function to call per job).
CHECKED_INPUTS = (
    {"checked": "results/inputs/sub-{subject}/sub-{subject}_desc-checked_inputs.json"}
    if PER_SUBJECT_CHECKS
    else {}
)


def gpu_count():
    """GPUs a network-running job asks for: one on CUDA, none on CPU."""
    return 1 if config["device"].startswith("cuda") else 0


def preprocessed_pairs():
    """Final preprocessed images of every pair (both time points on the follow-up grid)."""
    return expand(PREPROC_FILES["preproc"], subject=SUBJECTS, tp=TIMEPOINTS)


def brain_on_followup_grid(wildcards):
    """Skull-stripped image and mask of a time point, on the follow-up's 1 mm grid."""
    return layout.brain_on_followup_grid(wildcards.tp)


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
# Lesion-based samples per no-change pair (Kamraoui et al.); with SAMPLES, the mix.
LESION_SAMPLES = [
    f"{k:03d}" for k in range(SYNTHESIS["lesions"]["samples_per_subject"])
]
LESION_BANK = "results/lesions/lesion_bank.npz"
LESION_SAMPLE = "results/lesions/sub-{subject}/sub-{subject}_sample-{sample}"
# Held-out scans (split: validation): their no-change pairs and painted changes.
VALIDATION_SUBJECTS = list(COHORT.loc[COHORT["split"] == "validation", "subject"])
VALIDATION_SAMPLES = [
    f"{k:03d}" for k in range(config["validation"]["samples_per_subject"])
]
VALIDATION_SAMPLE = "results/validation/sub-{subject}/sub-{subject}_sample-{sample}"
if (LESION_SAMPLES or (VALIDATION_SUBJECTS and VALIDATION_SAMPLES)) and not SYNTHESIS[
    "lesions"
]["bank"]:
    raise WorkflowError(
        "lesion-based synthesis (synthesis.lesions.samples_per_subject > 0, or a cohort "
        "with split: validation scans) needs synthesis.lesions.bank: a folder of real "
        "lesion masks, e.g. open_ms_data/lesion_masks/raw"
    )
if (LESION_SAMPLES or VALIDATION_SUBJECTS) and config["preprocessing"][
    "resolution_mm"
] != 1.0:
    raise WorkflowError(
        "lesion-based synthesis paints the lesion bank's 1 mm shapes and needs "
        f"preprocessing.resolution_mm: 1.0 (got {config['preprocessing']['resolution_mm']})"
    )


def nochange_scans():
    """Preprocessed scans (both time points, follow-up grid) of the no-change pairs."""
    if not NOCHANGE_SUBJECTS:
        raise WorkflowError(
            "the VAE and SuperMix need no-change training pairs (change: no, split: train), "
            "and the cohort has none"
        )
    return expand(PREPROC_FILES["preproc"], subject=NOCHANGE_SUBJECTS, tp=TIMEPOINTS)


def nochange_masks():
    """Brain masks matching :func:`nochange_scans`, in the same order."""
    return [
        layout.preprocessed_pair(subject)[f"{tp}_mask"]
        for subject in NOCHANGE_SUBJECTS
        for tp in TIMEPOINTS
    ]


def synthesis_targets():
    """The VAE(s), every SuperMix and lesion-based sample and the figures; none without
    no-change pairs (the VAE only when SuperMix samples are asked for)."""
    if not NOCHANGE_SUBJECTS:
        return []
    targets = expand(
        f"{LESION_SAMPLE}_desc-lesions.json",
        subject=NOCHANGE_SUBJECTS,
        sample=LESION_SAMPLES,
    )
    if SAMPLES:
        targets += [
            *expand("results/vae/encoder-{encoder}/vae.pt", encoder=VAE_ENCODERS),
            *expand(
                "results/supermix/sub-{subject}/sub-{subject}_sample-{sample}_desc-supermix.json",
                subject=NOCHANGE_SUBJECTS,
                sample=SAMPLES,
            ),
            "results/synthesis/figures/supermix_examples.png",
        ]
    if LESION_SAMPLES:
        targets.append("results/synthesis/figures/lesion_examples.png")
    if MAIN_AUGMENTATION.get("enabled"):
        targets.append("results/synthesis/figures/augmentations.png")
    if realism_pairs():
        targets.append("results/synthesis/figures/rescan_realism.png")
    return targets


# Each file of a lesion-based sample, after its prefix (LESION_SAMPLE, VALIDATION_SAMPLE).
LESION_SAMPLE_FILES = {
    "baseline": "tp-baseline_FLAIR.nii.gz",
    "followup": "tp-followup_FLAIR.nii.gz",
    "label": "desc-change_mask.nii.gz",
    "record": "desc-lesions.json",
}


def lesion_sample_outputs(template, samples, **wildcards):
    """Baseline, follow-up, label and record of every sample, by role; ``wildcards``
    (e.g. subject=[...]) fill the template, the others stay wildcards."""
    return {
        key: expand(
            f"{template}_{suffix}", sample=samples, allow_missing=True, **wildcards
        )
        for key, suffix in LESION_SAMPLE_FILES.items()
    }


# The painting settings (the keys of synthesis.lesions that are not the workflow's).
LESION_PAINT_SETTINGS = {
    k: v
    for k, v in SYNTHESIS["lesions"].items()
    if k
    not in ("samples_per_subject", "bank", "bank_min_volume_mm3", "bank_max_volume_mm3")
}


def preprocessed_pair_of(subject):
    """A subject's preprocessed pair and brain masks (follow-up grid), and its raw
    follow-up, whose slice thickness painted lesions take."""
    return {
        **layout.preprocessed_pair(subject),
        "raw_followup": COHORT_ROWS[subject]["followup"],
    }


def preprocessed_pair(wildcards):
    return preprocessed_pair_of(wildcards.subject)


def preprocessed_images_of(subject):
    """:func:`preprocessed_pair_of` without the raw follow-up (the figures' inputs)."""
    files = preprocessed_pair_of(subject)
    del files["raw_followup"]
    return files


def lesion_bank_masks():
    """The real lesion masks (NIfTI) of synthesis.lesions.bank, in a fixed order."""
    folder = Path(SYNTHESIS["lesions"]["bank"])
    masks = sorted(str(p) for p in folder.glob("*.nii*"))
    if not masks:
        raise WorkflowError(
            f"synthesis.lesions.bank: no lesion masks (*.nii, *.nii.gz) in {folder}"
        )
    return masks


# ----------------------------------------------------------------------------- detector

# Every model trained and evaluated (the main `detector` first, then
# `experiments.compare`), name -> its full detector settings.
MODELS = model_configs(config)
MAIN_MODEL = config["detector"]["name"]
DETECTOR_DIR = "results/detector/model-{model}"
PREDICT_DIR = "results/predict/model-{model}"
# The pairs the detector is run on.
TEST_SUBJECTS = list(COHORT.loc[COHORT["split"] == "test", "subject"])
# The main model's augmentation (the gallery shows it when it is on).
MAIN_AUGMENTATION = MODELS[MAIN_MODEL]["training"].get("augmentation") or {}


def names_pattern(names):
    """A regular expression matching exactly these names (nothing when there are none)."""
    return "|".join(re.escape(name) for name in names) or "(?!)"


wildcard_constraints:
    model=names_pattern(MODELS),


# Models used with pretrained weights (detector.pretrained): name -> the folder of the
# model file, whose training log and curve are copied beside it; the others are trained.
PRETRAINED_MODELS = {}
for _name, _model in MODELS.items():
    if _model["pretrained"]:
        try:
            PRETRAINED_MODELS[_name] = resolve_model(_model["pretrained"]).parent
        except FileNotFoundError as error:
            raise WorkflowError(
                f"model {_name}: detector.pretrained: {error}"
            ) from None
        _missing = [
            f for f in SHIPPED_FILES if not (PRETRAINED_MODELS[_name] / f).is_file()
        ]
        if _missing:
            raise WorkflowError(
                f"model {_name}: detector.pretrained: {PRETRAINED_MODELS[_name]} lacks "
                f"{', '.join(_missing)} (a model folder holds {', '.join(SHIPPED_FILES)})"
            )
        try:
            _differences = preprocessing_differences(
                PRETRAINED_MODELS[_name] / "model.pt", config["preprocessing"]
            )
        except ValueError as error:  # the model file is broken: say so before any job
            raise WorkflowError(
                f"model {_name}: detector.pretrained: {error}"
            ) from None
        if _differences:
            raise WorkflowError(
                f"model {_name}: detector.pretrained was trained on pairs preprocessed "
                "otherwise; set the config's preprocessing section to the model's:\n  "
                + "\n  ".join(_differences)
            )
TRAINED_MODELS = [name for name in MODELS if name not in PRETRAINED_MODELS]


for _name, _model in MODELS.items():
    if (
        not _model["pretrained"]
        and _model["training"]["validate_every"]
        and not (VALIDATION_SUBJECTS and VALIDATION_SAMPLES)
    ):
        raise WorkflowError(
            f"model {_name}: detector.training.validate_every needs a validation set "
            "(cohort scans with split: validation, validation.samples_per_subject > 0)"
        )


# Annotated training pairs (split: train, change: yes, with a label): the data of the
# models fine-tuned from another one (experiments.models.<name>.finetune_from).
ANNOTATED_SUBJECTS = list(
    COHORT.loc[
        (COHORT["split"] == "train")
        & (COHORT["change"] == "yes")
        & (COHORT["label"] != ""),
        "subject",
    ]
)
FINETUNE_SOURCES = {
    name: model["finetune_from"]
    for name, model in MODELS.items()
    if model["finetune_from"]
}


def needs_synthetic_data(name):
    """Whether a model (or the one it is fine-tuned from) trains on synthetic changes."""
    if name in PRETRAINED_MODELS:
        return False
    if name in FINETUNE_SOURCES:
        return needs_synthetic_data(FINETUNE_SOURCES[name])
    return True


# Every model can be had: those trained on synthetic changes need no-change pairs.
MODELS_AVAILABLE = bool(NOCHANGE_SUBJECTS) or not any(
    needs_synthetic_data(name) for name in MODELS
)
if not MODELS_AVAILABLE:
    # Said at every parse (a dry run too): otherwise the run silently plans no detector.
    _untrainable = [name for name in MODELS if needs_synthetic_data(name)]
    _pretrained = [name for name in MODELS if name in PRETRAINED_MODELS]
    print(
        "mschange: warning: the cohort has no no-change training pairs (split: train, "
        "change: no), so no detector is trained and no pair is predicted, scored or "
        f"validated (model(s) needing training: {', '.join(_untrainable)}). "
        + (
            f"The pretrained model(s) {', '.join(_pretrained)} need none: leave the "
            "others out (experiments.compare, experiments.models) to predict with them. "
            if _pretrained
            else "Add no-change training pairs, or predict with a trained model: set "
            "detector.pretrained (e.g. flair-lesions-v1, as presets/pretrained.yaml does)."
        ),
        file=sys.stderr,
    )
for _name in FINETUNE_SOURCES:
    if not ANNOTATED_SUBJECTS:
        raise WorkflowError(
            f"model {_name}: fine-tuning needs annotated training pairs (cohort rows with "
            "split: train, change: yes and a label), and the cohort has none"
        )
ANNOTATED_LABEL = "results/finetune/sub-{subject}/sub-{subject}_space-followup_desc-change_mask.nii.gz"


def finetune_sample_files(role):
    """One file of every annotated pair: ``baseline``, ``followup`` (preprocessed) or
    ``label`` (its change mask on the 1 mm follow-up grid)."""
    if role == "label":
        return expand(ANNOTATED_LABEL, subject=ANNOTATED_SUBJECTS)
    return [preprocessed_pair_of(subject)[role] for subject in ANNOTATED_SUBJECTS]


def training_table(wildcards):
    """The samples a model trains on: synthetic ones, or the annotated pairs when it is
    fine-tuned."""
    if wildcards.model in FINETUNE_SOURCES:
        return "results/detector/finetune_samples.tsv"
    return "results/detector/training_samples.tsv"


def initial_model(wildcards):
    """The model file a fine-tuned model starts from; none for the others."""
    source = FINETUNE_SOURCES.get(wildcards.model)
    return f"{DETECTOR_DIR}/model.pt".format(model=source) if source else []


@functools.cache
def synthetic_training_record():
    """What the models trained on synthetic changes learn from (the same for each)."""
    return training_data_record(COHORT, NOCHANGE_SUBJECTS)


def training_data_of(model):
    """What a model learns from, for its model file."""
    if model not in FINETUNE_SOURCES:
        return synthetic_training_record()
    return {
        "finetuned_from": FINETUNE_SOURCES[model],
        "annotated_pairs": {
            subject: {
                column: str(COHORT_ROWS[subject][column])
                for column in ("baseline", "followup", "label")
            }
            for subject in ANNOTATED_SUBJECTS
        },
        "labels_used": "the annotated pairs' change labels (supervised fine-tuning)",
    }


def pretrained_file(wildcards, name):
    """One file of a pretrained model's folder (one of SHIPPED_FILES)."""
    return str(PRETRAINED_MODELS[wildcards.model] / name)


def training_validation(wildcards):
    """The validation pair table, when the model is selected on the validation set."""
    if MODELS[wildcards.model]["training"]["validate_every"]:
        return "results/validation/pairs.tsv"
    return []


def training_sample_files(role):
    """One file of every training sample, SuperMix then lesion-based, in a fixed order:
    ``baseline`` (what the network gets as the baseline), ``followup`` or ``label``.
    For SuperMix the untouched time point plays the baseline, the synthesised one the
    follow-up (To et al.); lesion-based samples have both time points (a resolving
    lesion is painted into the baseline)."""
    supermix_desc = {
        "baseline": "reference_FLAIR",
        "followup": "synthesised_FLAIR",
        "label": "change_mask",
    }[role]
    return (
        expand(
            "results/supermix/sub-{subject}/sub-{subject}_sample-{sample}_desc-{desc}.nii.gz",
            subject=NOCHANGE_SUBJECTS,
            sample=SAMPLES,
            desc=supermix_desc,
        )
        + lesion_sample_outputs(
            LESION_SAMPLE, LESION_SAMPLES, subject=NOCHANGE_SUBJECTS
        )[role]
    )


def prediction_outputs():
    """Outputs of one pair's prediction (names shared with `mschange predict`)."""
    outputs = prediction_paths(f"{PREDICT_DIR}/sub-{{subject}}", "{subject}")
    outputs["figure"] = report(
        outputs["figure"],
        category="Detector",
        subcategory="Predictions",
        caption="../report/prediction_overlay.rst",
        labels={"model": "{model}", "pair": "{subject}"},
    )
    return outputs


def detector_targets():
    """Every detector and its predictions of every test pair."""
    if not MODELS_AVAILABLE:
        return []
    return [
        *expand(f"{DETECTOR_DIR}/model.pt", model=MODELS),
        *expand(
            prediction_paths(f"{PREDICT_DIR}/sub-{{subject}}", "{subject}")["lesions"],
            model=MODELS,
            subject=TEST_SUBJECTS,
        ),
    ]


# ----------------------------------------------------------------------------- evaluation

EVALUATION = config["evaluation"]
BLOB_SIZES = config["experiments"]["min_blob_voxels"]
# Methods in every table: the learned models, then the classical baseline.
METHODS = list(MODELS) + ([BASELINE_NAME] if EVALUATION["baseline"]["enabled"] else [])
# Test pairs with a ground truth: a label, or none needed because nothing changed.
EVALUATED_SUBJECTS = list(
    COHORT.loc[
        (COHORT["split"] == "test")
        & ((COHORT["label"] != "") | (COHORT["change"] == "no")),
        "subject",
    ]
)
EVALUATION_DIR = "results/evaluation/model-{method}_minblob-{minblob}/sub-{subject}"
REPORT_DIR = "results/report"


wildcard_constraints:
    method="|".join(re.escape(name) for name in METHODS) or "none",
    minblob=r"\d+",


@functools.cache
def validation_targets():
    """The validation summary; nothing without validation scans or trained models."""
    if not VALIDATION_SUBJECTS or not MODELS_AVAILABLE:
        return []
    return [f"{REPORT_DIR}/tables/validation.tsv"]


def realism_pairs():
    """Each labelled test pair whose follow-up is also a single-scan row, beside that
    row's simulated-rescan pair: the real and simulated no-change differences of one
    scan (rule rescan_realism). Worked out once (several rules and targets ask)."""
    import os

    singles = {os.path.realpath(COHORT_ROWS[s]["followup"]): s for s in SINGLE_SUBJECTS}
    pairs = []
    for subject in EVALUATED_SUBJECTS if singles else []:
        row = COHORT_ROWS[subject]
        if not row["label"]:
            continue
        simulated = singles.get(os.path.realpath(row["followup"]))
        if simulated is None:
            continue
        for name, source, label in (
            (f"real {subject}", subject, row["label"]),
            (f"simulated {simulated}", simulated, ""),
        ):
            files = preprocessed_pair_of(source)
            pairs.append(
                {
                    "name": name,
                    "baseline": files["baseline"],
                    "followup": files["followup"],
                    "masks": [files["baseline_mask"], files["followup_mask"]],
                    "label": label,
                }
            )
    return pairs


def realism_inputs():
    """The files rule rescan_realism reads."""
    return [
        path
        for pair in realism_pairs()
        for path in [pair["baseline"], pair["followup"], *pair["masks"]]
        + ([pair["label"]] if pair["label"] else [])
    ]
