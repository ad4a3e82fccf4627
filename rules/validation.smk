# The validation set: lesion-based changes painted with fixed seeds into the held-out
# scans (split: validation), plus their no-change pairs; every method scored on it with
# the evaluation code. Helpers: rules/helpers/validation.smk, rules/common.smk, rules/lesions.smk.


if VALIDATION_SUBJECTS and VALIDATION_SAMPLES:

    rule paint_validation_subject:
        input:
            unpack(preprocessed_pair),
            bank=LESION_BANK,
        output:
            **lesion_sample_outputs(VALIDATION_SAMPLE, VALIDATION_SAMPLES),
        log:
            "results/logs/paint_validation_subject/sub-{subject}.log",
        benchmark:
            "results/benchmarks/paint_validation_subject/sub-{subject}.tsv"
        conda:
            "../envs/synthesis.yaml"
        threads: 1
        resources:
            mem_mb=6000,
            runtime=10 + len(VALIDATION_SAMPLES),
        params:
            # Apart from the training seed, so the validation set stays fixed.
            seed=config["validation"]["seed"],
            settings=LESION_PAINT_SETTINGS,
        script:
            "../scripts/paint_lesions.py"


if VALIDATION_SUBJECTS:

    rule list_validation_pairs:
        input:
            validation_pair_files(),
        output:
            "results/validation/pairs.tsv",
        log:
            "results/logs/list_validation_pairs/list_validation_pairs.log",
        localrule: True
        conda:
            "../envs/evaluation.yaml"
        params:
            table=validation_pair_table(),
        script:
            "../scripts/write_validation_table.py"

    rule validate_method:
        input:
            pairs="results/validation/pairs.tsv",
            model=validation_model,
        output:
            scores="results/validation/method-{method}/scores.tsv",
        log:
            "results/logs/validate_method/method-{method}.log",
        benchmark:
            "results/benchmarks/validate_method/method-{method}.tsv"
        conda:
            "../envs/evaluation.yaml"
        threads: 2
        resources:
            mem_mb=8000,
            runtime=60,
            gpu=lambda wildcards: (
                0 if wildcards.method == BASELINE_NAME else gpu_count()
            ),
        params:
            threshold=lambda wildcards: method_threshold(wildcards.method),
            blob_sizes=BLOB_SIZES,
            metrics=EVALUATION["metrics"],
            inference=lambda wildcards: (
                None
                if wildcards.method == BASELINE_NAME
                else MODELS[wildcards.method]["inference"]
            ),
            baseline=EVALUATION["baseline"],
            device=config["device"],
        script:
            "../scripts/validate_method.py"

    rule validation_tables:
        input:
            scores=expand(
                "results/validation/method-{method}/scores.tsv", method=METHODS
            ),
        output:
            summary=f"{REPORT_DIR}/tables/validation.tsv",
            markdown=f"{REPORT_DIR}/tables/validation.md",
        log:
            "results/logs/validation_tables/validation_tables.log",
        conda:
            "../envs/evaluation.yaml"
        threads: 1
        resources:
            mem_mb=2000,
            runtime=10,
        params:
            methods=METHODS,
        script:
            "../scripts/validation_tables.py"
