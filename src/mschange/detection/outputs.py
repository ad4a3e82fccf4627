"""File names of one pair's prediction, shared by the workflow and ``mschange predict``.

Kept free of heavy imports: the workflow reads it while building the job graph.
"""

from __future__ import annotations

# Output key -> file name after ``sub-<id>``; "figure" (a QC picture) is optional.
PREDICTION_SUFFIXES = {
    "probability": "_space-followup_desc-change_probseg.nii.gz",
    "mask": "_space-followup_desc-change_mask.nii.gz",
    "native_probability": "_space-native_desc-change_probseg.nii.gz",
    "native_mask": "_space-native_desc-change_mask.nii.gz",
    "lesions": "_desc-changes_lesions.tsv",
    "record": "_desc-changes_prediction.json",
    "figure": "_desc-changes_overlay.png",
}


def suffixed_paths(folder: str, subject: str, suffixes: dict[str, str]) -> dict[str, str]:
    """Output key -> ``<folder>/sub-<subject><suffix>`` for every suffix."""
    return {key: f"{folder}/sub-{subject}{suffix}" for key, suffix in suffixes.items()}


def prediction_paths(folder: str, subject: str) -> dict[str, str]:
    """Every output of one pair's prediction, in ``folder``."""
    return suffixed_paths(folder, subject, PREDICTION_SUFFIXES)
