# mschange: lesion-change detection between two FLAIR scans (To et al.), as a Snakemake workflow.
# The logic lives in the `mschange` package; rules only wire files together.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/demo.smk"
include: "rules/preprocess.smk"
include: "rules/qc.smk"
include: "rules/synthesis.smk"
include: "rules/detection.smk"
include: "rules/evaluation.smk"


rule all:
    default_target: True
    input:
        demo_sheet(),
        preprocessed_pairs(),
        "results/qc/preprocessing_qc.tsv",
        synthesis_targets(),
        detector_targets(),
        evaluation_targets(),
