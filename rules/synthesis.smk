# Synthetic lesion changes (To et al., section 3.2): a VAE trained on the no-change scans,
# then SuperMix samples per no-change pair. Single scans first get a simulated rescan,
# which then goes through preprocessing like any baseline. Helpers: rules/common.smk.


wildcard_constraints:
    encoder="maxpool|strided",


rule simulate_rescan:
    input:
        **CHECKED_INPUTS,
        scan=lambda wildcards: COHORT_ROWS[wildcards.subject]["followup"],
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


rule list_training_scans:
    input:
        images=lambda wildcards: nochange_scans(),
        masks=lambda wildcards: nochange_masks(),
    output:
        "results/vae/training_scans.tsv",
    log:
        "results/logs/list_training_scans/list_training_scans.log",
    localrule: True
    conda:
        "../envs/synthesis.yaml"
    script:
        "../scripts/write_file_table.py"


rule train_vae:
    input:
        # One table of the no-change scans: thousands of inputs listed here would make
        # the job graph of a large cohort slow to build (docs/benchmarks.md, "Scale").
        scans="results/vae/training_scans.tsv",
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
        # Every training scan is held in memory (about 75 MB per 1 mm scan with its mask).
        mem_mb=4000 + 160 * len(NOCHANGE_SUBJECTS),
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


# No SuperMix samples asked for (lesion-based synthesis only): no rule to plan.
if SAMPLES:

    rule supermix_subject:
        input:
            **PREPROCESSED_PAIR,
            model=f"results/vae/encoder-{MAIN_ENCODER}/vae.pt",
        output:
            synthesised=expand(
                "results/supermix/sub-{subject}/sub-{subject}_sample-{sample}_desc-synthesised_FLAIR.nii.gz",
                sample=SAMPLES,
                allow_missing=True,
            ),
            reference=expand(
                "results/supermix/sub-{subject}/sub-{subject}_sample-{sample}_desc-reference_FLAIR.nii.gz",
                sample=SAMPLES,
                allow_missing=True,
            ),
            label=expand(
                "results/supermix/sub-{subject}/sub-{subject}_sample-{sample}_desc-change_mask.nii.gz",
                sample=SAMPLES,
                allow_missing=True,
            ),
            record=expand(
                "results/supermix/sub-{subject}/sub-{subject}_sample-{sample}_desc-supermix.json",
                sample=SAMPLES,
                allow_missing=True,
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
            runtime=10 + 2 * len(SAMPLES),
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


rule rescan_realism:
    input:
        realism_inputs(),
    output:
        figure=report(
            "results/synthesis/figures/rescan_realism.png",
            category="Synthesis",
            caption="../report/rescan_realism.rst",
        ),
        table="results/synthesis/figures/rescan_realism.tsv",
    log:
        "results/logs/rescan_realism/rescan_realism.log",
    conda:
        "../envs/synthesis.yaml"
    threads: 1
    resources:
        mem_mb=6000,
        runtime=10,
    params:
        pairs=realism_pairs(),
        # The simulated pairs are also shown as the detector sees them, augmented.
        augmentation=MAIN_AUGMENTATION,
        seed=config["seed"],
    script:
        "../scripts/rescan_realism.py"


rule augmentation_figure:
    input:
        **(preprocessed_images_of(NOCHANGE_SUBJECTS[0]) if NOCHANGE_SUBJECTS else {}),
    output:
        figure=report(
            "results/synthesis/figures/augmentations.png",
            category="Synthesis",
            caption="../report/augmentations.rst",
        ),
    log:
        "results/logs/augmentation_figure/augmentation_figure.log",
    conda:
        "../envs/detection.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        settings=MAIN_AUGMENTATION,
        seed=config["seed"],
    script:
        "../scripts/augmentation_figure.py"
