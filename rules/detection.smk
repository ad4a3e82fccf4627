# The change detector (To et al., section 3.2): trained on the SuperMix samples of the
# no-change pairs, then run on every test pair. Helpers: rules/common.smk.


rule train_detector:
    input:
        synthesised=lambda wildcards: supermix_files("synthesised_FLAIR"),
        reference=lambda wildcards: supermix_files("reference_FLAIR"),
        label=lambda wildcards: supermix_files("change_mask"),
    output:
        model=f"{DETECTOR_DIR}/model.pt",
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
        f"results/logs/train_detector/model-{DETECTOR['name']}.log",
    benchmark:
        f"results/benchmarks/train_detector/model-{DETECTOR['name']}.tsv"
    conda:
        "../envs/detection.yaml"
    threads: 8
    resources:
        # Every sample's brain box is held in memory (float16, about 25 MB per sample).
        mem_mb=lambda wildcards, input: 6000 + 30 * len(input.synthesised),
        runtime=1440,
        gpu=gpu_count(),
    params:
        # Not an output: it must survive the job being killed, so a rerun resumes from it.
        checkpoint_dir=f"{DETECTOR_DIR}/checkpoints",
        detector={k: v for k, v in DETECTOR.items() if k not in ("inference", "name")},
        # Stored in the model file: `mschange predict` preprocesses a new pair the same way.
        metadata={
            "name": DETECTOR["name"],
            "preprocessing": config["preprocessing"],
            "seed": config["seed"],
        },
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/train_detector.py"


rule predict_pair:
    input:
        baseline="results/preproc/sub-{subject}/sub-{subject}_tp-baseline_space-followup_desc-preproc_FLAIR.nii.gz",
        followup="results/preproc/sub-{subject}/sub-{subject}_tp-followup_space-followup_desc-preproc_FLAIR.nii.gz",
        baseline_mask="results/preproc/sub-{subject}/sub-{subject}_tp-baseline_space-followup_desc-brain_mask.nii.gz",
        followup_mask="results/preproc/sub-{subject}/sub-{subject}_tp-followup_desc-brain_mask.nii.gz",
        native_followup=lambda wildcards: COHORT.loc[wildcards.subject, "followup"],
        model=f"{DETECTOR_DIR}/model.pt",
    output:
        **prediction_outputs(),
    log:
        f"results/logs/predict_pair/model-{DETECTOR['name']}_sub-{{subject}}.log",
    benchmark:
        f"results/benchmarks/predict_pair/model-{DETECTOR['name']}_sub-{{subject}}.tsv"
    conda:
        "../envs/detection.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=30,
        gpu=gpu_count(),
    params:
        inference=DETECTOR["inference"],
        device=config["device"],
    script:
        "../scripts/predict_pair.py"
