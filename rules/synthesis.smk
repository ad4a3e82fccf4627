# Synthetic lesion changes (To et al., section 3.2): a VAE trained on the no-change scans,
# then SuperMix samples per no-change pair. Single scans first get a simulated rescan,
# which then goes through preprocessing like any baseline.

SYNTHESIS = config["synthesis"]
MAIN_ENCODER = SYNTHESIS["vae"]["encoder"]
OTHER_ENCODER = {"maxpool": "strided", "strided": "maxpool"}[MAIN_ENCODER]
VAE_ENCODERS = [MAIN_ENCODER] + (
    [OTHER_ENCODER] if SYNTHESIS["vae"]["compare_encoders"] else []
)
SAMPLES = [f"{k:03d}" for k in range(SYNTHESIS["supermix"]["samples_per_subject"])]
PREPROC = "results/preproc/sub-{subject}/sub-{subject}"
SUPERMIX = "results/supermix/sub-{subject}/sub-{subject}_sample-{sample}"


wildcard_constraints:
    encoder="maxpool|strided",


def nochange_scans():
    """Preprocessed scans (both time points, follow-up grid) of the no-change pairs."""
    if not NOCHANGE_SUBJECTS:
        raise WorkflowError(
            "the VAE and SuperMix need no-change training pairs (change: no, split: train), "
            "and the cohort has none"
        )
    return expand(
        PREPROC + "_tp-{tp}_space-followup_desc-preproc_FLAIR.nii.gz",
        subject=NOCHANGE_SUBJECTS,
        tp=TIMEPOINTS,
    )


def nochange_masks():
    """Brain masks matching :func:`nochange_scans`, in the same order."""
    masks = []
    for subject in NOCHANGE_SUBJECTS:
        masks += [
            f"{PREPROC}_tp-baseline_space-followup_desc-brain_mask.nii.gz".format(
                subject=subject
            ),
            f"{PREPROC}_tp-followup_desc-brain_mask.nii.gz".format(subject=subject),
        ]
    return masks


def supermix_outputs():
    """Every SuperMix sample of every no-change pair (a target of `rule all`)."""
    return expand(
        SUPERMIX + "_desc-supermix.json", subject=NOCHANGE_SUBJECTS, sample=SAMPLES
    )


def synthesis_targets():
    """The VAE(s), every SuperMix sample and the figures; none without no-change pairs."""
    if not NOCHANGE_SUBJECTS:
        return []
    return [
        *expand("results/vae/encoder-{encoder}/vae.pt", encoder=VAE_ENCODERS),
        *supermix_outputs(),
        "results/synthesis/figures/supermix_examples.png",
    ]


rule simulate_rescan:
    input:
        lambda wildcards: COHORT.loc[wildcards.subject, "followup"],
    output:
        image="results/rescan/sub-{subject}/sub-{subject}_tp-baseline_desc-rescan_FLAIR.nii.gz",
        record="results/rescan/sub-{subject}/sub-{subject}_tp-baseline_desc-rescan_FLAIR.json",
    log:
        "results/logs/simulate_rescan/sub-{subject}.log",
    benchmark:
        "results/benchmarks/simulate_rescan/sub-{subject}.tsv"
    group:
        "preprocess_{subject}"
    conda:
        "../envs/synthesis.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        seed=config["seed"],
        settings={k: v for k, v in SYNTHESIS["rescan"].items() if k != "enabled"},
    script:
        "../scripts/simulate_rescan.py"


rule train_vae:
    input:
        images=lambda wildcards: nochange_scans(),
        masks=lambda wildcards: nochange_masks(),
    output:
        model="results/vae/encoder-{encoder}/vae.pt",
        loss=report(
            "results/vae/encoder-{encoder}/loss.tsv",
            category="Synthesis",
            caption="../report/vae_loss.rst",
        ),
        curve=report(
            "results/vae/encoder-{encoder}/loss.png",
            category="Synthesis",
            caption="../report/vae_loss.rst",
        ),
    log:
        "results/logs/train_vae/encoder-{encoder}.log",
    benchmark:
        "results/benchmarks/train_vae/encoder-{encoder}.tsv"
    conda:
        "../envs/synthesis.yaml"
    threads: 8
    resources:
        mem_mb=lambda wildcards, input: 8000 + 100 * len(input.images),
        runtime=1440,
        gpu=gpu_count(),
    params:
        # Not an output: it must survive the job being killed, so a rerun resumes from it.
        checkpoint_dir="results/vae/encoder-{encoder}/checkpoints",
        settings={
            k: v
            for k, v in SYNTHESIS["vae"].items()
            if k not in ("encoder", "compare_encoders")
        },
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/train_vae.py"


rule supermix_subject:
    input:
        baseline=PREPROC + "_tp-baseline_space-followup_desc-preproc_FLAIR.nii.gz",
        followup=PREPROC + "_tp-followup_space-followup_desc-preproc_FLAIR.nii.gz",
        baseline_mask=PREPROC + "_tp-baseline_space-followup_desc-brain_mask.nii.gz",
        followup_mask=PREPROC + "_tp-followup_desc-brain_mask.nii.gz",
        model=f"results/vae/encoder-{MAIN_ENCODER}/vae.pt",
    output:
        synthesised=expand(
            SUPERMIX + "_desc-synthesised_FLAIR.nii.gz",
            sample=SAMPLES,
            allow_missing=True,
        ),
        reference=expand(
            SUPERMIX + "_desc-reference_FLAIR.nii.gz",
            sample=SAMPLES,
            allow_missing=True,
        ),
        label=expand(
            SUPERMIX + "_desc-change_mask.nii.gz", sample=SAMPLES, allow_missing=True
        ),
        record=expand(
            SUPERMIX + "_desc-supermix.json", sample=SAMPLES, allow_missing=True
        ),
    log:
        "results/logs/supermix_subject/sub-{subject}.log",
    benchmark:
        "results/benchmarks/supermix_subject/sub-{subject}.tsv"
    conda:
        "../envs/synthesis.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=lambda wildcards: 10 + 2 * len(SAMPLES),
        gpu=gpu_count(),
    params:
        seed=config["seed"],
        supermix=SYNTHESIS["supermix"],
        crop_size=SYNTHESIS["vae"]["crop_size"],
        device=config["device"],
    script:
        "../scripts/supermix_subject.py"


rule synthesis_figures:
    input:
        scan=lambda wildcards: nochange_scans()[1],
        masks=lambda wildcards: nochange_masks()[:2],
        models=expand("results/vae/encoder-{encoder}/vae.pt", encoder=VAE_ENCODERS),
    output:
        supermix=report(
            "results/synthesis/figures/supermix_examples.png",
            category="Synthesis",
            caption="../report/supermix_examples.rst",
        ),
        encoders=report(
            "results/synthesis/figures/vae_encoders.png",
            category="Synthesis",
            caption="../report/vae_encoders.rst",
        ),
        record="results/synthesis/figures/figures.json",
    log:
        "results/logs/synthesis_figures/synthesis_figures.log",
    benchmark:
        "results/benchmarks/synthesis_figures/synthesis_figures.tsv"
    conda:
        "../envs/synthesis.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=30,
        gpu=gpu_count(),
    params:
        encoders=VAE_ENCODERS,
        main_encoder=MAIN_ENCODER,
        seed=config["seed"],
        supermix=SYNTHESIS["supermix"],
        figures=SYNTHESIS["figures"],
        crop_size=SYNTHESIS["vae"]["crop_size"],
        device=config["device"],
    script:
        "../scripts/synthesis_figures.py"
