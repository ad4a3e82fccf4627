"""Cohort sheets from public datasets laid out as their authors publish them."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from mschange.cohort import CohortError, check_cohort_table


def _subject_id(name: str) -> str:
    """'long_patient09_study2_FLAIR.nii.gz' -> 'long-patient09-study2'."""
    stem = name.removesuffix(".gz").removesuffix(".nii")
    stem = re.sub(r"_FLAIR(_MNI)?$", "", stem)
    return "-".join(part for part in re.split(r"[^A-Za-z0-9]+", stem) if part)


def open_ms_data_cohort(data_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """The open_ms_data subset (Lesjak et al.): its pairs and its single scans.

    ``longitudinal/patientNN/study{1,2}_FLAIR.nii.gz`` become test pairs with change;
    their ground truth lies on a separate common-space grid, so no ``label`` is set
    here. ``single/*FLAIR*.nii.gz`` become single scans (no-change training pairs by
    a simulated rescan).
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise CohortError([f"open_ms_data folder {str(root)!r} does not exist"])
    rows = []
    for patient in sorted((root / "longitudinal").glob("patient*")):
        baseline = patient / "study1_FLAIR.nii.gz"
        followup = patient / "study2_FLAIR.nii.gz"
        if baseline.is_file() and followup.is_file():
            rows.append({"subject": patient.name, "baseline": str(baseline.absolute()),
                         "followup": str(followup.absolute()), "split": "test",
                         "change": "yes", "label": ""})
    for scan in sorted((root / "single").glob("*FLAIR*.nii.gz")):
        rows.append({"subject": _subject_id(scan.name), "baseline": "",
                     "followup": str(scan.absolute()), "split": "train", "change": "no",
                     "label": ""})
    if not rows:
        raise CohortError([f"{root}: no longitudinal/patient*/study*_FLAIR.nii.gz or "
                           "single/*FLAIR*.nii.gz found (is this the open_ms_data folder?)"])
    return check_cohort_table(pd.DataFrame(rows), base_dir=root, source=str(root))
