# Quality control: a picture and a row of numbers per pair, and the cohort table.

PREPROC_STEPS = [
    "resample_isotropic",
    "skullstrip_hdbet",
    "register_baseline_to_followup",
    "correct_bias_n4",
    "normalize_intensity",
]


rule qc_pair:
    input:
        followup=PREPROC + "_tp-followup_space-followup_desc-preproc_FLAIR.nii.gz",
        baseline=PREPROC + "_tp-baseline_space-followup_desc-preproc_FLAIR.nii.gz",
        followup_mask=PREPROC + "_tp-followup_desc-brain_mask.nii.gz",
        baseline_mask=PREPROC + "_tp-baseline_space-followup_desc-brain_mask.nii.gz",
    output:
        png=report(
            QC_DIR + "/sub-{subject}_desc-preproc_qc.png",
            category="Preprocessing QC",
            caption="../report/qc_pair.rst",
        ),
        json=QC_DIR + "/sub-{subject}_desc-preproc_qc.json",
    log:
        "results/logs/qc_pair/sub-{subject}.log",
    benchmark:
        "results/benchmarks/qc_pair/sub-{subject}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/mschange.yaml"
    script:
        "../scripts/qc_pair.py"


rule aggregate_qc:
    input:
        expand(QC_DIR + "/sub-{subject}_desc-preproc_qc.json", subject=SUBJECTS),
    output:
        report(
            QC_DIR + "/preprocessing_qc.tsv",
            category="Preprocessing QC",
            caption="../report/preprocessing_qc.rst",
        ),
    params:
        cohort=COHORT[["subject", "split", "change"]].to_dict("records"),
        steps=PREPROC_STEPS,
        benchmark_dir="results/benchmarks",
        min_correlation=config["qc"]["min_registration_correlation"],
        min_brain_ml=config["qc"]["min_brain_ml"],
        max_brain_ml=config["qc"]["max_brain_ml"],
    log:
        "results/logs/aggregate_qc/aggregate_qc.log",
    localrule: True
    conda:
        "../envs/mschange.yaml"
    script:
        "../scripts/aggregate_qc.py"
