# Preprocessing (To et al., section 3.1), one rule per step, every output cached.
# Each rule's parameters sit in its own `params:`, so changing one reruns that step
# and what depends on it, nothing upstream.


rule resample_isotropic:
    input:
        raw_scan,
    output:
        PREPROC + "_tp-{tp}_desc-resampled_FLAIR.nii.gz",
    params:
        resolution_mm=config["preprocessing"]["resolution_mm"],
        order=config["preprocessing"]["interpolation_order"],
    log:
        "results/logs/resample_isotropic/sub-{subject}_tp-{tp}.log",
    benchmark:
        "results/benchmarks/resample_isotropic/sub-{subject}_tp-{tp}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    group:
        "preprocess_{subject}"
    conda:
        "../envs/mschange.yaml"
    script:
        "../scripts/resample_isotropic.py"


rule skullstrip_hdbet:
    input:
        PREPROC + "_tp-{tp}_desc-resampled_FLAIR.nii.gz",
    output:
        brain=PREPROC + "_tp-{tp}_desc-brain_FLAIR.nii.gz",
        mask=PREPROC + "_tp-{tp}_desc-brain_mask.nii.gz",
    params:
        mode=config["preprocessing"]["skullstrip"]["mode"],
        tta=config["preprocessing"]["skullstrip"]["tta"],
        device=config["device"],
    log:
        "results/logs/skullstrip_hdbet/sub-{subject}_tp-{tp}.log",
    benchmark:
        "results/benchmarks/skullstrip_hdbet/sub-{subject}_tp-{tp}.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=30,
        gpu=gpu_count(),
    group:
        "preprocess_{subject}"
    conda:
        "../envs/mschange.yaml"
    script:
        "../scripts/skullstrip_hdbet.py"


rule register_baseline_to_followup:
    input:
        followup_brain=PREPROC + "_tp-followup_desc-brain_FLAIR.nii.gz",
        baseline_brain=PREPROC + "_tp-baseline_desc-brain_FLAIR.nii.gz",
        baseline_mask=PREPROC + "_tp-baseline_desc-brain_mask.nii.gz",
    output:
        transform=PREPROC + "_from-baseline_to-followup_mode-image_xfm.mat",
        brain=PREPROC + "_tp-baseline_space-followup_desc-brain_FLAIR.nii.gz",
        mask=PREPROC + "_tp-baseline_space-followup_desc-brain_mask.nii.gz",
    params:
        transform=config["preprocessing"]["registration"]["transform"],
        seed=config["seed"],
    log:
        "results/logs/register_baseline_to_followup/sub-{subject}.log",
    benchmark:
        "results/benchmarks/register_baseline_to_followup/sub-{subject}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=20,
    group:
        "preprocess_{subject}"
    conda:
        "../envs/mschange.yaml"
    script:
        "../scripts/register_baseline_to_followup.py"


def brain_on_followup_grid(wildcards):
    """Skull-stripped image and mask of a time point, on the follow-up's 1 mm grid."""
    if wildcards.tp == "followup":
        return {
            "brain": PREPROC + "_tp-followup_desc-brain_FLAIR.nii.gz",
            "mask": PREPROC + "_tp-followup_desc-brain_mask.nii.gz",
        }
    return {
        "brain": PREPROC + "_tp-baseline_space-followup_desc-brain_FLAIR.nii.gz",
        "mask": PREPROC + "_tp-baseline_space-followup_desc-brain_mask.nii.gz",
    }


rule correct_bias_n4:
    input:
        unpack(brain_on_followup_grid),
    output:
        PREPROC + "_tp-{tp}_space-followup_desc-n4_FLAIR.nii.gz",
    params:
        shrink_factor=config["preprocessing"]["n4"]["shrink_factor"],
        iterations=config["preprocessing"]["n4"]["iterations"],
        convergence=config["preprocessing"]["n4"]["convergence"],
    log:
        "results/logs/correct_bias_n4/sub-{subject}_tp-{tp}.log",
    benchmark:
        "results/benchmarks/correct_bias_n4/sub-{subject}_tp-{tp}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=20,
    group:
        "preprocess_{subject}"
    conda:
        "../envs/mschange.yaml"
    script:
        "../scripts/correct_bias_n4.py"


rule normalize_intensity:
    input:
        image=PREPROC + "_tp-{tp}_space-followup_desc-n4_FLAIR.nii.gz",
        mask=lambda wildcards: brain_on_followup_grid(wildcards)["mask"],
    output:
        PREPROC + "_tp-{tp}_space-followup_desc-preproc_FLAIR.nii.gz",
    params:
        low_percentile=config["preprocessing"]["normalize"]["low_percentile"],
        high_percentile=config["preprocessing"]["normalize"]["high_percentile"],
    log:
        "results/logs/normalize_intensity/sub-{subject}_tp-{tp}.log",
    benchmark:
        "results/benchmarks/normalize_intensity/sub-{subject}_tp-{tp}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    group:
        "preprocess_{subject}"
    conda:
        "../envs/mschange.yaml"
    script:
        "../scripts/normalize_intensity.py"
