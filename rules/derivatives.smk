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


rule pair_pages:
    input:
        unpack(main_prediction),
        **PREPROCESSED_PAIR,
        qc=rules.qc_pair.output.json,
        qc_figure=rules.qc_pair.output.png,
        label=lambda wildcards: COHORT_ROWS[wildcards.subject]["label"] or [],
    output:
        **page_paths(PAGES_DIR, "{subject}"),
    log:
        "results/logs/pair_pages/sub-{subject}.log",
    benchmark:
        "results/benchmarks/pair_pages/sub-{subject}.tsv"
    conda:
        "../envs/evaluation.yaml"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=15,
    params:
        qc=config["qc"],
        entities=lambda wildcards: entities_of(wildcards.subject),
        # The summary links the viewer where both end up: in the dataset.
        viewer_link=lambda wildcards: viewer_link(dataset_pages_of(wildcards.subject)),
    script:
        "../scripts/pair_pages.py"
