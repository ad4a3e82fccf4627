# The demo cohort: FLAIR-like heads made from the MNI152 templates that nilearn ships.


rule make_demo_subject:
    output:
        baseline="results/demo/sub-{subject}/sub-{subject}_tp-baseline_FLAIR.nii.gz",
        followup="results/demo/sub-{subject}/sub-{subject}_tp-followup_FLAIR.nii.gz",
        change_mask="results/demo/sub-{subject}/sub-{subject}_tp-followup_desc-change_mask.nii.gz",
        change_type="results/demo/sub-{subject}/sub-{subject}_tp-followup_desc-changetype_dseg.nii.gz",
        baseline_brain_mask="results/demo/sub-{subject}/sub-{subject}_tp-baseline_desc-brain_mask.nii.gz",
        followup_brain_mask="results/demo/sub-{subject}/sub-{subject}_tp-followup_desc-brain_mask.nii.gz",
        params_json="results/demo/sub-{subject}/sub-{subject}_desc-synthesis_params.json",
    log:
        "results/logs/make_demo_subject/sub-{subject}.log",
    benchmark:
        "results/benchmarks/make_demo_subject/sub-{subject}.tsv"
    conda:
        "../envs/demo.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        has_change=lambda wildcards: COHORT_ROWS[wildcards.subject]["change"] == "yes",
        seed=config["seed"],
        voxel_size_mm=config["demo"]["voxel_size_mm"],
    script:
        "../scripts/make_demo_subject.py"


rule write_demo_sheet:
    input:
        expand(
            "results/demo/sub-{subject}/sub-{subject}_tp-followup_FLAIR.nii.gz",
            subject=DEMO_SUBJECTS,
        ),
    output:
        "results/demo/cohort.tsv",
    log:
        "results/logs/write_demo_sheet/write_demo_sheet.log",
    localrule: True
    conda:
        "../envs/demo.yaml"
    params:
        n_train=config["demo"]["n_train"],
        n_test=config["demo"]["n_test"],
        n_single=config["demo"]["n_single"],
    script:
        "../scripts/write_demo_sheet.py"
