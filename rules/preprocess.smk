# Preprocessing (To et al., section 3.1), one rule per step, every output cached.
# Each rule's parameters sit in its own `params:`, so changing one reruns that step
# and what depends on it, nothing upstream.


rule resample_isotropic:
    input:
        **CHECKED_INPUTS,
        scan=raw_scan,
    output:
        PREPROC_FILES["resampled"],
    log:
        "results/logs/resample_isotropic/sub-{subject}_tp-{tp}.log",
    benchmark:
        "results/benchmarks/resample_isotropic/sub-{subject}_tp-{tp}.tsv"
    group:
        "preprocess_{subject}"
    conda:
        "../envs/preprocessing.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        resolution_mm=config["preprocessing"]["resolution_mm"],
        order=config["preprocessing"]["interpolation_order"],
    script:
        "../scripts/resample_isotropic.py"


rule skullstrip_hdbet:
    input:
        rules.resample_isotropic.output[0],
    output:
        brain=PREPROC_FILES["brain"],
        mask=PREPROC_FILES["brain_mask"],
    log:
        "results/logs/skullstrip_hdbet/sub-{subject}_tp-{tp}.log",
    benchmark:
        "results/benchmarks/skullstrip_hdbet/sub-{subject}_tp-{tp}.tsv"
    group:
        "preprocess_{subject}"
    conda:
        "../envs/preprocessing.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=30,
        gpu=gpu_count(),
    params:
        mode=config["preprocessing"]["skullstrip"]["mode"],
        tta=config["preprocessing"]["skullstrip"]["tta"],
        device=config["device"],
        source=raw_scan,
    script:
        "../scripts/skullstrip_hdbet.py"


rule register_baseline_to_followup:
    input:
        followup_brain=layout.timepoint_files(tp="followup")["brain"],
        baseline_brain=layout.timepoint_files(tp="baseline")["brain"],
        baseline_mask=layout.timepoint_files(tp="baseline")["brain_mask"],
    output:
        **layout.registration_files(),
    log:
        "results/logs/register_baseline_to_followup/sub-{subject}.log",
    benchmark:
        "results/benchmarks/register_baseline_to_followup/sub-{subject}.tsv"
    group:
        "preprocess_{subject}"
    conda:
        "../envs/preprocessing.yaml"
    # One thread by default: ANTs is reproducible only single-threaded.
    threads: config["preprocessing"]["registration"]["threads"]
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        transform=config["preprocessing"]["registration"]["transform"],
        sampling_points=config["preprocessing"]["registration"]["sampling_points"],
        seed=config["seed"],
    script:
        "../scripts/register_baseline_to_followup.py"


rule correct_bias_n4:
    input:
        unpack(brain_on_followup_grid),
    output:
        PREPROC_FILES["n4"],
    log:
        "results/logs/correct_bias_n4/sub-{subject}_tp-{tp}.log",
    benchmark:
        "results/benchmarks/correct_bias_n4/sub-{subject}_tp-{tp}.tsv"
    group:
        "preprocess_{subject}"
    conda:
        "../envs/preprocessing.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        shrink_factor=config["preprocessing"]["n4"]["shrink_factor"],
        iterations=config["preprocessing"]["n4"]["iterations"],
        convergence=config["preprocessing"]["n4"]["convergence"],
    script:
        "../scripts/correct_bias_n4.py"


rule normalize_intensity:
    input:
        image=rules.correct_bias_n4.output[0],
        mask=lambda wildcards: brain_on_followup_grid(wildcards)["mask"],
    output:
        PREPROC_FILES["preproc"],
    log:
        "results/logs/normalize_intensity/sub-{subject}_tp-{tp}.log",
    benchmark:
        "results/benchmarks/normalize_intensity/sub-{subject}_tp-{tp}.tsv"
    group:
        "preprocess_{subject}"
    conda:
        "../envs/preprocessing.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        low_percentile=config["preprocessing"]["normalize"]["low_percentile"],
        high_percentile=config["preprocessing"]["normalize"]["high_percentile"],
    script:
        "../scripts/normalize_intensity.py"
