# The demo cohort: FLAIR-like heads made from the MNI152 templates that nilearn ships.


rule make_demo_subject:
    output:
        baseline=DEMO_DIR + "/sub-{subject}/sub-{subject}_tp-baseline_FLAIR.nii.gz",
        followup=DEMO_DIR + "/sub-{subject}/sub-{subject}_tp-followup_FLAIR.nii.gz",
        change_mask=DEMO_DIR
        + "/sub-{subject}/sub-{subject}_tp-followup_desc-change_mask.nii.gz",
        params_json=DEMO_DIR + "/sub-{subject}/sub-{subject}_desc-synthesis_params.json",
    params:
        has_change=lambda wildcards: COHORT.loc[wildcards.subject, "change"] == "yes",
        seed=config["seed"],
        voxel_size_mm=config["demo"]["voxel_size_mm"],
        out_dir=DEMO_DIR,
    log:
        "results/logs/make_demo_subject/sub-{subject}.log",
    benchmark:
        "results/benchmarks/make_demo_subject/sub-{subject}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    conda:
        "../envs/mschange.yaml"
    script:
        "../scripts/make_demo_subject.py"


rule write_demo_sheet:
    input:
        expand(
            DEMO_DIR + "/sub-{subject}/sub-{subject}_tp-followup_FLAIR.nii.gz",
            subject=SUBJECTS,
        ),
    output:
        DEMO_DIR + "/cohort.tsv",
    params:
        n_train=config["demo"]["n_train"],
        n_test=config["demo"]["n_test"],
        out_dir=DEMO_DIR,
    log:
        "results/logs/write_demo_sheet/write_demo_sheet.log",
    localrule: True
    conda:
        "../envs/mschange.yaml"
    script:
        "../scripts/write_demo_sheet.py"
