# Which pairs finished: the per-subject input check (cohort.check_inputs: per_subject)
# and the cohort status table, written after every run that did something, whether it
# succeeded or not (results/status/cohort_status.tsv). Helpers: rules/helpers/status.smk, rules/common.smk.


rule check_inputs:
    input:
        unpack(cohort_images),
    output:
        "results/inputs/sub-{subject}/sub-{subject}_desc-checked_inputs.json",
    log:
        "results/logs/check_inputs/sub-{subject}.log",
    conda:
        "../envs/preprocessing.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        check_voxels=config["cohort"]["check_voxels"],
    script:
        "../scripts/check_inputs.py"


onsuccess:
    write_cohort_status_table()


onerror:
    write_cohort_status_table()
