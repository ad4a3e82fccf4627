# mschange: lesion-change detection between two FLAIR scans (To et al.), as a Snakemake workflow.
# The logic lives in the `mschange` package; rules only wire files together.
import sys
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")

# mschange comes from this checkout's src/, also in conda envs (envs/*.yaml leave it out):
# Snakemake appends this process's sys.path to every script job's, and re-parses this file
# in each cluster job. (PYTHONPATH would not reach conda jobs: Snakemake strips it there.)
MSCHANGE_SRC = str(Path(workflow.basedir) / "src")
if MSCHANGE_SRC not in sys.path:
    sys.path.insert(0, MSCHANGE_SRC)


configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/helpers/evaluation.smk"
include: "rules/helpers/validation.smk"
include: "rules/helpers/status.smk"
include: "rules/helpers/derivatives.smk"
include: "rules/demo.smk"
include: "rules/preprocess.smk"
include: "rules/qc.smk"
include: "rules/synthesis.smk"
include: "rules/lesions.smk"
include: "rules/detection.smk"
include: "rules/derivatives.smk"
include: "rules/evaluation.smk"
include: "rules/validation.smk"
include: "rules/status.smk"


rule all:
    default_target: True
    input:
        demo_sheet(),
        preprocessed_pairs(),
        "results/qc/preprocessing_qc.tsv",
        synthesis_targets(),
        detector_targets(),
        derivatives_targets(),
        evaluation_targets(),
        validation_targets(),
