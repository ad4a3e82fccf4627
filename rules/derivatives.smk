# The results as a BIDS derivatives dataset: the main model's prediction of every test
# pair, with dataset_description.json and a JSON sidecar per image (mschange.bids;
# docs/bids.md). Subject and session carry over from a BIDS cohort. Helpers:
# rules/helpers/derivatives.smk.


rule bids_derivatives:
    input:
        lambda wildcards: derivative_inputs(),
    output:
        directory(BIDS_DERIVATIVES_DIR),
    log:
        "results/logs/bids_derivatives/bids_derivatives.log",
    localrule: True
    conda:
        "../envs/detection.yaml"
    params:
        pairs=lambda wildcards: derivative_predictions(),
    script:
        "../scripts/bids_derivatives.py"
