# The change detector (To et al., section 3.2): trained on the SuperMix samples of the
# no-change pairs, then run on every test pair. Helpers: rules/common.smk.


rule list_training_samples:
    input:
        baseline=lambda wildcards: training_sample_files("baseline"),
        followup=lambda wildcards: training_sample_files("followup"),
        label=lambda wildcards: training_sample_files("label"),
    output:
        "results/detector/training_samples.tsv",
    log:
        "results/logs/list_training_samples/list_training_samples.log",
    localrule: True
    conda:
        "../envs/detection.yaml"
    script:
        "../scripts/write_file_table.py"


rule annotated_change_mask:
    input:
        label=lambda wildcards: COHORT_ROWS[wildcards.subject]["label"],
        followup=PREPROCESSED_PAIR["followup"],
    output:
        ANNOTATED_LABEL,
    log:
        "results/logs/annotated_change_mask/sub-{subject}.log",
    conda:
        "../envs/detection.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../scripts/annotated_change_mask.py"


rule list_finetune_samples:
    input:
        baseline=lambda wildcards: finetune_sample_files("baseline"),
        followup=lambda wildcards: finetune_sample_files("followup"),
        label=lambda wildcards: finetune_sample_files("label"),
    output:
        "results/detector/finetune_samples.tsv",
    log:
        "results/logs/list_finetune_samples/list_finetune_samples.log",
    localrule: True
    conda:
        "../envs/detection.yaml"
    script:
        "../scripts/write_file_table.py"


rule use_pretrained_detector:
    input:
        # The shipped (or given) model folder's files, copied as if trained here.
        model=lambda wildcards: pretrained_file(wildcards, "model.pt"),
        log=lambda wildcards: pretrained_file(wildcards, "training_log.tsv"),
        curve=lambda wildcards: pretrained_file(wildcards, "training_curve.png"),
    output:
        model=f"{DETECTOR_DIR}/model.pt",
        log=f"{DETECTOR_DIR}/training_log.tsv",
        curve=f"{DETECTOR_DIR}/training_curve.png",
    log:
        "results/logs/use_pretrained_detector/model-{model}.log",
    wildcard_constraints:
        model=names_pattern(PRETRAINED_MODELS),
    localrule: True
    conda:
        "../envs/detection.yaml"
    script:
        "../scripts/use_pretrained_detector.py"


rule train_detector:
    input:
        # One table of every training sample (see train_vae).
        samples=training_table,
        # Scored every detector.training.validate_every iterations (model selection).
        validation=training_validation,
        # A fine-tuned model starts from another model's weights (and architecture).
        initial=initial_model,
    output:
        # The best validated weights (the last without validation); model_last.pt: the last.
        model=f"{DETECTOR_DIR}/model.pt",
        last=f"{DETECTOR_DIR}/model_last.pt",
        # (the same outputs as use_pretrained_detector, for the models trained here)
        log=report(
            f"{DETECTOR_DIR}/training_log.tsv",
            category="Detector",
            caption="../report/detector_training.rst",
        ),
        curve=report(
            f"{DETECTOR_DIR}/training_curve.png",
            category="Detector",
            caption="../report/detector_training.rst",
        ),
    log:
        "results/logs/train_detector/model-{model}.log",
    benchmark:
        "results/benchmarks/train_detector/model-{model}.tsv"
    wildcard_constraints:
        model=names_pattern(TRAINED_MODELS),
    conda:
        "../envs/detection.yaml"
    threads: 8
    resources:
        # Every sample's brain box is held in memory (float16, about 25 MB per sample).
        mem_mb=6000 + 30 * len(NOCHANGE_SUBJECTS) * (len(SAMPLES) + len(LESION_SAMPLES)),
        runtime=1440,
        gpu=gpu_count(),
    params:
        # Not an output: it must survive the job being killed, so a rerun resumes from it.
        checkpoint_dir=lambda wildcards, output: str(
            Path(output.model).with_name("checkpoints")
        ),
        detector=lambda wildcards: {
            k: v
            for k, v in MODELS[wildcards.model].items()
            if k not in ("inference", "name", "pretrained")
        },
        # Stored in the model file: `mschange predict` preprocesses a new pair the same way.
        metadata=lambda wildcards: {
            "name": wildcards.model,
            "preprocessing": config["preprocessing"],
            "seed": config["seed"],
            # The scans it learned from, and any that are images of a test pair.
            "training_data": training_data_of(wildcards.model),
        },
        seed=config["seed"],
        device=config["device"],
        # Validation during training: the model's inference, every threshold of the sweep.
        # (without kappa: thresholds are swept, so tuning kappa does not retrain)
        inference=lambda wildcards: {
            k: v
            for k, v in MODELS[wildcards.model]["inference"].items()
            if k != "kappa"
        },
        kappa_sweep=config["evaluation"]["kappa_sweep"],
        metrics=config["evaluation"]["metrics"],
    script:
        "../scripts/train_detector.py"


rule predict_pair:
    input:
        **PREPROCESSED_PAIR,
        native_followup=lambda wildcards: COHORT_ROWS[wildcards.subject]["followup"],
        model=f"{DETECTOR_DIR}/model.pt",
    output:
        **prediction_outputs(),
    log:
        "results/logs/predict_pair/model-{model}_sub-{subject}.log",
    benchmark:
        "results/benchmarks/predict_pair/model-{model}_sub-{subject}.tsv"
    conda:
        "../envs/detection.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=30,
        gpu=gpu_count(),
    params:
        inference=lambda wildcards: MODELS[wildcards.model]["inference"],
        device=config["device"],
    script:
        "../scripts/predict_pair.py"
