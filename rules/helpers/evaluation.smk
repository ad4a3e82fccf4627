# Helpers of rules/evaluation.smk (and the report): which score each method gives, its
# thresholds, and the files a pair's evaluation and the report read and write.


def change_score(wildcards):
    """The 1 mm change score a method leaves: probability, or the baseline's z-map."""
    if wildcards.method == BASELINE_NAME:
        return "results/baseline/sub-{subject}/sub-{subject}_space-followup_desc-subtraction_zmap.nii.gz".format(
            subject=wildcards.subject
        )
    outputs = prediction_paths(f"{PREDICT_DIR}/sub-{{subject}}", "{subject}")
    return outputs["probability"].format(
        model=wildcards.method, subject=wildcards.subject
    )


def method_threshold(method):
    """The threshold on |score|: the model's kappa, or the baseline's k."""
    if method == BASELINE_NAME:
        return EVALUATION["baseline"]["k"]
    return MODELS[method]["inference"]["kappa"]


def method_sweep(method):
    """The thresholds of a method's LTPR-versus-PPV curve."""
    if method == BASELINE_NAME:
        return EVALUATION["baseline"]["k_sweep"]
    return EVALUATION["kappa_sweep"]


def evaluation_files(key):
    """One kind of evaluation output of every method, blob size and evaluated pair."""
    return expand(
        evaluation_paths(EVALUATION_DIR, "{subject}")[key],
        method=METHODS,
        minblob=BLOB_SIZES,
        subject=EVALUATED_SUBJECTS,
    )


def evaluation_outputs():
    """Outputs of one method's evaluation of one pair at one blob size."""
    outputs = evaluation_paths(EVALUATION_DIR, "{subject}")
    outputs["figure"] = report(
        outputs["figure"],
        category="Evaluation",
        subcategory="Pairs",
        caption="../report/evaluation_overlay.rst",
        labels={"pair": "{subject}", "method": "{method}", "blob": "{minblob}"},
    )
    return outputs


def headline_overlays():
    """[pair, method, figure] at the headline blob size, in the report's order."""
    return [
        [
            subject,
            method,
            evaluation_paths(
                EVALUATION_DIR.format(
                    method=method, minblob=BLOB_SIZES[0], subject=subject
                ),
                subject,
            )["figure"],
        ]
        for subject in EVALUATED_SUBJECTS
        for method in METHODS
    ]


def training_curves():
    """Every model's training curve, in the order of MODELS."""
    return expand(f"{DETECTOR_DIR}/training_curve.png", model=MODELS)


def evaluation_targets():
    """The report; nothing when no test pair has a ground truth or nothing is trained."""
    if not EVALUATED_SUBJECTS or not MODELS_AVAILABLE:
        return []
    return [f"{REPORT_DIR}/index.html"]


def report_extras():
    """Optional report inputs: synthesis figures and the validation summary."""
    extras = {}
    if SAMPLES and NOCHANGE_SUBJECTS:
        extras["supermix_examples"] = "results/synthesis/figures/supermix_examples.png"
    if LESION_SAMPLES and NOCHANGE_SUBJECTS:
        extras["lesion_examples"] = "results/synthesis/figures/lesion_examples.png"
    if validation_targets():
        extras["validation"] = f"{REPORT_DIR}/tables/validation.tsv"
    if realism_pairs():
        extras["rescan_realism"] = "results/synthesis/figures/rescan_realism.png"
    if MAIN_AUGMENTATION.get("enabled") and NOCHANGE_SUBJECTS:
        extras["augmentations"] = "results/synthesis/figures/augmentations.png"
    return extras


def method_descriptions():
    """The Table 1 columns (model, loss, gamma, L2) of every method."""
    from mschange.evaluation.methods import baseline_description, model_description

    descriptions = {name: model_description(model) for name, model in MODELS.items()}
    if EVALUATION["baseline"]["enabled"]:
        descriptions[BASELINE_NAME] = baseline_description(
            EVALUATION["baseline"]["k"],
            EVALUATION["baseline"]["sigma_mm"],
            EVALUATION["baseline"]["erode_mm"],
            EVALUATION["baseline"]["harmonise"],
        )
    return descriptions
