# Helpers of rules/validation.smk: the validation pairs and the model that scores them.


def validation_pair_table():
    """The validation pairs as columns: each held-out scan's no-change pair, then its
    painted ones (pair, subject, the preprocessed images and masks, label: empty for a
    no-change pair). Rule list_validation_pairs writes it; validate_method reads it."""
    columns = {
        key: []
        for key in (
            "pair",
            "subject",
            "baseline",
            "followup",
            "baseline_mask",
            "followup_mask",
            "label",
        )
    }

    def add(pair, subject, baseline, followup, label):
        masks = preprocessed_pair_of(subject)
        for key, value in (
            ("pair", pair),
            ("subject", subject),
            ("baseline", baseline),
            ("followup", followup),
            ("baseline_mask", masks["baseline_mask"]),
            ("followup_mask", masks["followup_mask"]),
            ("label", label),
        ):
            columns[key].append(value)

    for subject in VALIDATION_SUBJECTS:
        files = preprocessed_pair_of(subject)
        add(f"{subject}-nochange", subject, files["baseline"], files["followup"], "")
    for subject in VALIDATION_SUBJECTS:
        painted = lesion_sample_outputs(
            VALIDATION_SAMPLE, VALIDATION_SAMPLES, subject=[subject]
        )
        for k, sample in enumerate(VALIDATION_SAMPLES):
            add(
                f"{subject}-sample{sample}",
                subject,
                painted["baseline"][k],
                painted["followup"][k],
                painted["label"][k],
            )
    return columns


def validation_pair_files():
    """Every file of the validation pair table (the inputs of list_validation_pairs)."""
    table = validation_pair_table()
    return sorted(
        {
            path
            for key in (
                "baseline",
                "followup",
                "baseline_mask",
                "followup_mask",
                "label",
            )
            for path in table[key]
            if path
        }
    )


def validation_model(wildcards):
    """The model file a validated method needs; none for the subtraction baseline."""
    if wildcards.method == BASELINE_NAME:
        return []
    return f"{DETECTOR_DIR}/model.pt".format(model=wildcards.method)
