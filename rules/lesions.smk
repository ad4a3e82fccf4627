# Lesion-based change synthesis (Kamraoui et al., section 2.3): real lesion shapes painted
# into one time point of the no-change pairs (training samples) and of the held-out
# validation scans (the validation set). Helpers: rules/common.smk.


if LESION_SAMPLES or (VALIDATION_SUBJECTS and VALIDATION_SAMPLES):

    rule build_lesion_bank:
        input:
            masks=lambda wildcards: lesion_bank_masks(),
        output:
            bank=LESION_BANK,
            summary="results/lesions/lesion_bank.json",
        log:
            "results/logs/build_lesion_bank/build_lesion_bank.log",
        benchmark:
            "results/benchmarks/build_lesion_bank/build_lesion_bank.tsv"
        conda:
            "../envs/synthesis.yaml"
        threads: 1
        resources:
            mem_mb=4000,
            runtime=30,
        params:
            min_volume_mm3=SYNTHESIS["lesions"]["bank_min_volume_mm3"],
            max_volume_mm3=SYNTHESIS["lesions"]["bank_max_volume_mm3"],
        script:
            "../scripts/build_lesion_bank.py"


if LESION_SAMPLES and NOCHANGE_SUBJECTS:

    rule paint_lesions_subject:
        input:
            unpack(preprocessed_pair),
            bank=LESION_BANK,
        output:
            **lesion_sample_outputs(LESION_SAMPLE, LESION_SAMPLES),
        log:
            "results/logs/paint_lesions_subject/sub-{subject}.log",
        benchmark:
            "results/benchmarks/paint_lesions_subject/sub-{subject}.tsv"
        conda:
            "../envs/synthesis.yaml"
        threads: 1
        resources:
            mem_mb=6000,
            runtime=10 + len(LESION_SAMPLES),
        params:
            seed=config["seed"],
            settings=LESION_PAINT_SETTINGS,
        script:
            "../scripts/paint_lesions.py"

    rule lesion_figures:
        input:
            **preprocessed_images_of(NOCHANGE_SUBJECTS[0]),
            **{
                f"painted_{role}": files
                for role, files in lesion_sample_outputs(
                    LESION_SAMPLE, LESION_SAMPLES, subject=NOCHANGE_SUBJECTS[:1]
                ).items()
                if role != "record"
            },
        output:
            figure=report(
                "results/synthesis/figures/lesion_examples.png",
                category="Synthesis",
                caption="../report/lesion_examples.rst",
            ),
            record="results/synthesis/figures/lesion_examples.json",
        log:
            "results/logs/lesion_figures/lesion_figures.log",
        conda:
            "../envs/synthesis.yaml"
        threads: 1
        resources:
            mem_mb=4000,
            runtime=10,
        script:
            "../scripts/lesion_figures.py"
