"""The demo cohort's subjects, files and sheet rows (the images: :mod:`mschange.demo_phantom`).

Light to import (the standard library only): the workflow builds the demo cohort's
rows with it while Snakemake builds the DAG, before any image exists. The same rows
make the sheet that :func:`write_demo_sheet` writes.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

SHEET_COLUMNS = ["subject", "baseline", "followup", "split", "change", "label"]
PATH_COLUMNS = ("baseline", "followup", "label")


@dataclass(frozen=True)
class DemoSubjectPaths:
    """The files :func:`mschange.demo_phantom.make_demo_subject` writes for one subject."""

    subject_dir: Path
    baseline: Path
    followup: Path
    change_mask: Path
    change_type: Path
    baseline_brain_mask: Path
    followup_brain_mask: Path
    params_json: Path


def demo_subject_paths(out_dir: Path, subject: str) -> DemoSubjectPaths:
    folder = Path(out_dir) / f"sub-{subject}"
    stem = f"sub-{subject}"
    return DemoSubjectPaths(
        subject_dir=folder,
        baseline=folder / f"{stem}_tp-baseline_FLAIR.nii.gz",
        followup=folder / f"{stem}_tp-followup_FLAIR.nii.gz",
        change_mask=folder / f"{stem}_tp-followup_desc-change_mask.nii.gz",
        change_type=folder / f"{stem}_tp-followup_desc-changetype_dseg.nii.gz",
        baseline_brain_mask=folder / f"{stem}_tp-baseline_desc-brain_mask.nii.gz",
        followup_brain_mask=folder / f"{stem}_tp-followup_desc-brain_mask.nii.gz",
        params_json=folder / f"{stem}_desc-synthesis_params.json",
    )


def demo_subject_ids(n_train: int, n_test: int) -> list[tuple[str, bool]]:
    """``[(id, has_change), ...]``: ``n_train`` no-change subjects, then ``n_test`` changes."""
    if n_train < 0 or n_test < 0:
        raise ValueError(f"subject counts must be >= 0, got n_train={n_train}, n_test={n_test}")
    return [(f"demo{i:02d}", i > n_train) for i in range(1, n_train + n_test + 1)]


def demo_single_ids(n_train: int, n_test: int, n_single: int) -> list[str]:
    """Ids of the single-scan demo subjects, numbered after the pairs."""
    if n_single < 0:
        raise ValueError(f"n_single must be >= 0, got {n_single}")
    first = n_train + n_test + 1
    return [f"demo{i:02d}" for i in range(first, first + n_single)]


def demo_rows(
    out_dir: Path, subjects: list[tuple[str, bool]], single: list[str] | None = None
) -> list[dict[str, str]]:
    """The cohort sheet's rows (:data:`SHEET_COLUMNS`) of the demo subjects under ``out_dir``.

    Pairs first (``subjects`` as from :func:`demo_subject_ids`); then the ``single``
    subjects, with an empty baseline: only their follow-up is used, and the workflow
    simulates a rescan of it. Image paths are ``out_dir``'s, as strings.
    """
    rows = []
    for subject, has_change in subjects:
        paths = demo_subject_paths(out_dir, subject)
        rows.append(
            {
                "subject": subject,
                "baseline": str(paths.baseline),
                "followup": str(paths.followup),
                "split": "test" if has_change else "train",
                "change": "yes" if has_change else "no",
                "label": str(paths.change_mask) if has_change else "",
            }
        )
    for subject in single or []:
        paths = demo_subject_paths(out_dir, subject)
        rows.append(
            {
                "subject": subject,
                "baseline": "",
                "followup": str(paths.followup),
                "split": "train",
                "change": "no",
                "label": "",
            }
        )
    return rows


def demo_cohort_rows(
    out_dir: Path, n_train: int, n_test: int, n_single: int
) -> list[dict[str, str]]:
    """The rows of the demo cohort the config's ``demo`` counts describe."""
    return demo_rows(
        out_dir, demo_subject_ids(n_train, n_test), demo_single_ids(n_train, n_test, n_single)
    )


def write_demo_sheet(
    out_dir: Path,
    subjects: list[tuple[str, bool]],
    sheet_path: Path,
    single: list[str] | None = None,
) -> Path:
    """Write the cohort TSV of :func:`demo_rows`.

    Image paths are relative to the sheet's folder, the convention of
    :func:`mschange.cohort.read_cohort_sheet`, so the sheet works from any directory.
    """
    from mschange.io import atomic_path  # nibabel: not needed to build the DAG

    folder = Path(sheet_path).parent
    with atomic_path(sheet_path) as tmp, tmp.open("w", newline="") as stream:
        writer = csv.writer(stream, delimiter="\t", lineterminator="\n")
        writer.writerow(SHEET_COLUMNS)
        for row in demo_rows(out_dir, subjects, single):
            writer.writerow(
                [
                    os.path.relpath(row[key], folder)
                    if key in PATH_COLUMNS and row[key]
                    else row[key]
                    for key in SHEET_COLUMNS
                ]
            )
    return Path(sheet_path)
