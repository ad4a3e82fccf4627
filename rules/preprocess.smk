# Preprocessing (To et al., section 3.1), one rule per step, every output cached.
# Each rule's parameters sit in its own `params:`, so changing one reruns that step
# and what depends on it, nothing upstream.


rule resample_isotropic:
    input:
        **CHECKED_INPUTS,
        scan=raw_scan,
    output:
        "results/preproc/sub-{subject}/sub-{subject}_tp-{tp}_desc-resampled_FLAIR.nii.gz",
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
        "results/preproc/sub-{subject}/sub-{subject}_tp-{tp}_desc-resampled_FLAIR.nii.gz",
    output:
        brain="results/preproc/sub-{subject}/sub-{subject}_tp-{tp}_desc-brain_FLAIR.nii.gz",
        mask="results/preproc/sub-{subject}/sub-{subject}_tp-{tp}_desc-brain_mask.nii.gz",
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
        followup_brain="results/preproc/sub-{subject}/sub-{subject}_tp-followup_desc-brain_FLAIR.nii.gz",
        baseline_brain="results/preproc/sub-{subject}/sub-{subject}_tp-baseline_desc-brain_FLAIR.nii.gz",
        baseline_mask="results/preproc/sub-{subject}/sub-{subject}_tp-baseline_desc-brain_mask.nii.gz",
    output:
        transform="results/preproc/sub-{subject}/sub-{subject}_from-baseline_to-followup_mode-image_xfm.mat",
        brain="results/preproc/sub-{subject}/sub-{subject}_tp-baseline_space-followup_desc-brain_FLAIR.nii.gz",
        mask="results/preproc/sub-{subject}/sub-{subject}_tp-baseline_space-followup_desc-brain_mask.nii.gz",
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
        "results/preproc/sub-{subject}/sub-{subject}_tp-{tp}_space-followup_desc-n4_FLAIR.nii.gz",
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
        image="results/preproc/sub-{subject}/sub-{subject}_tp-{tp}_space-followup_desc-n4_FLAIR.nii.gz",
        mask=lambda wildcards: brain_on_followup_grid(wildcards)["mask"],
    output:
        "results/preproc/sub-{subject}/sub-{subject}_tp-{tp}_space-followup_desc-preproc_FLAIR.nii.gz",
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
