"""File names of one pair's evaluation and of the report.

Kept free of heavy imports: the workflow reads it while building the job graph.
"""

from __future__ import annotations

from mschange.detection.outputs import suffixed_paths

# Evaluation output key -> file name after ``sub-<id>``.
EVALUATION_SUFFIXES = {
    "metrics": "_desc-evaluation_metrics.tsv",
    "sweep": "_desc-evaluation_sweep.tsv",
    "mask": "_space-native_desc-evaluated_mask.nii.gz",
    "figure": "_desc-evaluation_overlay.png",
}

# Report tables (results/report/tables/<name>.tsv and .md).
REPORT_TABLES = ["summary", "table1", "directions", "per_pair", "wilcoxon", "threshold_sweep"]
# Report figures (results/report/figures/<name>.png).
REPORT_FIGURES = ["metric_boxplots", "threshold_curves"]


def evaluation_paths(folder: str, subject: str) -> dict[str, str]:
    """Every output of one pair's evaluation, in ``folder``."""
    return suffixed_paths(folder, subject, EVALUATION_SUFFIXES)
