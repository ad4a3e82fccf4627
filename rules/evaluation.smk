# Evaluation (docs/metrics.md) and the report: every method (each trained
# model and the subtraction baseline) at every minimum blob size, on every test pair
# with a ground truth. Helpers: rules/helpers/evaluation.smk, rules/common.smk.


rule subtraction_baseline:
    input:
        **PREPROCESSED_PAIR,
    output:
        zmap="results/baseline/sub-{subject}/sub-{subject}_space-followup_desc-subtraction_zmap.nii.gz",
        record="results/baseline/sub-{subject}/sub-{subject}_desc-subtraction.json",
    log:
        "results/logs/subtraction_baseline/sub-{subject}.log",
    conda:
        "../envs/evaluation.yaml"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=10,
    params:
        sigma_mm=EVALUATION["baseline"]["sigma_mm"],
        erode_mm=EVALUATION["baseline"]["erode_mm"],
        harmonise=EVALUATION["baseline"]["harmonise"],
    script:
        "../scripts/subtraction_baseline.py"


rule evaluate_pair:
    input:
        **PREPROCESSED_PAIR,
        score=change_score,
        native_followup=lambda wildcards: COHORT_ROWS[wildcards.subject]["followup"],
        label=lambda wildcards: COHORT_ROWS[wildcards.subject]["label"] or [],
    output:
        **evaluation_outputs(),
    log:
        "results/logs/evaluate_pair/model-{method}_minblob-{minblob}_sub-{subject}.log",
    conda:
        "../envs/evaluation.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=15,
    params:
        threshold=lambda wildcards: method_threshold(wildcards.method),
        sweep=lambda wildcards: method_sweep(wildcards.method),
        metrics=EVALUATION["metrics"],
        max_slices=EVALUATION["overlay_max_slices"],
    script:
        "../scripts/evaluate_pair.py"


rule evaluation_tables:
    input:
        metrics=evaluation_files("metrics"),
        sweeps=evaluation_files("sweep"),
    output:
        **{
            f"{name}_{ext}": f"{REPORT_DIR}/tables/{name}.{ext}"
            for name in REPORT_TABLES
            for ext in ("tsv", "md")
        },
        **{
            name: report(
                f"{REPORT_DIR}/figures/{name}.png",
                category="Evaluation",
                caption=f"../report/{name}.rst",
            )
            for name in REPORT_FIGURES
        },
    log:
        "results/logs/evaluation_tables/evaluation_tables.log",
    localrule: True
    conda:
        "../envs/evaluation.yaml"
    params:
        methods=METHODS,
        headline_blob=BLOB_SIZES[0],
        descriptions=method_descriptions(),
        table_dir=lambda wildcards, output: str(Path(output.summary_tsv).parent),
    script:
        "../scripts/evaluation_tables.py"


rule evaluation_report:
    input:
        **report_extras(),
        tables=expand(f"{REPORT_DIR}/tables/{{name}}.tsv", name=REPORT_TABLES),
        boxplots=f"{REPORT_DIR}/figures/metric_boxplots.png",
        threshold_curves=f"{REPORT_DIR}/figures/threshold_curves.png",
        overlays=[figure for _, _, figure in headline_overlays()],
        training_curves=training_curves(),
        qc_table="results/qc/preprocessing_qc.tsv",
        # The pairs' pages are linked where the dataset holds them.
        derivatives=derivatives_targets(),
        pair_summaries=[pages["summary_json"] for pages in report_pair_pages()],
    output:
        html=report(
            f"{REPORT_DIR}/index.html",
            category="Evaluation",
            caption="../report/evaluation_report.rst",
        ),
        cohort_status=f"{REPORT_DIR}/tables/cohort_status.tsv",
    log:
        "results/logs/evaluation_report/evaluation_report.log",
    localrule: True
    conda:
        "../envs/evaluation.yaml"
    params:
        overlays=headline_overlays(),
        models=list(MODELS),
        methods=METHODS,
        baseline=BASELINE_NAME if EVALUATION["baseline"]["enabled"] else None,
        headline_blob=BLOB_SIZES[0],
        metrics=EVALUATION["metrics"],
        # Every pair's stage (rules/status.smk); all are done when the report is built,
        # unless a pair is outside the evaluation (e.g. a test pair without a label).
        status=lambda wildcards: status_request(),
        pair_pages=report_pair_pages(),
    script:
        "../scripts/evaluation_report.py"
