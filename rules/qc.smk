# Quality control: a picture and a row of numbers per pair, and the cohort table.


rule qc_pair:
    input:
        **PREPROCESSED_PAIR,
    output:
        png=report(
            "results/qc/sub-{subject}_desc-preproc_qc.png",
            category="Preprocessing QC",
            caption="../report/qc_pair.rst",
        ),
        json="results/qc/sub-{subject}_desc-preproc_qc.json",
    log:
        "results/logs/qc_pair/sub-{subject}.log",
    benchmark:
        "results/benchmarks/qc_pair/sub-{subject}.tsv"
    conda:
        "../envs/qc.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        min_similarity=config["qc"]["min_registration_similarity"],
        max_contrast=config["qc"]["max_contrast_difference"],
    script:
        "../scripts/qc_pair.py"


rule aggregate_qc:
    input:
        expand("results/qc/sub-{subject}_desc-preproc_qc.json", subject=SUBJECTS),
    output:
        report(
            "results/qc/preprocessing_qc.tsv",
            category="Preprocessing QC",
            caption="../report/preprocessing_qc.rst",
        ),
    log:
        "results/logs/aggregate_qc/aggregate_qc.log",
    localrule: True
    conda:
        "../envs/qc.yaml"
    params:
        cohort=COHORT[["subject", "split", "change"]].to_dict("records"),
        steps=STEP_RULES,
        benchmark_dir="results/benchmarks",
        min_similarity=config["qc"]["min_registration_similarity"],
        max_contrast=config["qc"]["max_contrast_difference"],
        min_brain_ml=config["qc"]["min_brain_ml"],
        max_brain_ml=config["qc"]["max_brain_ml"],
    script:
        "../scripts/aggregate_qc.py"
