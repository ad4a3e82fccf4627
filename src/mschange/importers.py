"""Cohort sheets from public datasets laid out as their authors publish them.

Each importer returns a checked cohort table (absolute paths) that a command writes
as a sheet. Where a dataset's ground truth is not on the follow-up scan's own grid
(open_ms_data), the importer maps it there, because the workflow scores every
prediction on the follow-up grid and the cohort check insists that a label lies on it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pandas as pd
import SimpleITK as sitk

from mschange.cohort import CohortError, check_cohort_table
from mschange.imagespace import from_sitk, itk_geometry, to_sitk
from mschange.io import InputError, load_checked_image, save_nifti

OPEN_MS_LABEL_SUFFIX = "_space-followup_desc-change_mask.nii.gz"
MSSEG2_BASELINE = "flair_time01_on_middle_space.nii.gz"
MSSEG2_FOLLOWUP = "flair_time02_on_middle_space.nii.gz"
MSSEG2_GROUND_TRUTHS = ("consensus", "expert1", "expert2", "expert3", "expert4")


def _subject_id(name: str) -> str:
    """'long_patient09_study2_FLAIR.nii.gz' -> 'long-patient09-study2'."""
    stem = name.removesuffix(".gz").removesuffix(".nii")
    stem = re.sub(r"_FLAIR(_MNI)?$", "", stem)
    return "-".join(part for part in re.split(r"[^A-Za-z0-9]+", stem) if part)


def _natural_key(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def common_space_mask_to_followup(
    mask: str | os.PathLike[str],
    followup: str | os.PathLike[str],
    transform: str | os.PathLike[str],
    *,
    subject: str | None = None,
) -> nib.Nifti1Image:
    """A mask drawn on open_ms_data's common space, on the raw follow-up scan's grid.

    ``transform`` is the data's ``study2_FLAIR_to_common_space.txt``: an ITK transform
    that maps common-space points to raw study-2 points. ``sitk.Resample`` pulls each
    output (reference) voxel from the point its transform gives in the moving image, so
    resampling the common-space mask onto the follow-up grid needs that transform's
    inverse (follow-up point -> common-space point). Nearest neighbour keeps the mask
    binary; the result is uint8 0/1 with the follow-up's exact affine and shape, so
    the cohort's same-grid check accepts it as the follow-up's label.
    """
    try:
        to_followup = sitk.ReadTransform(str(transform))
        from_followup = to_followup.GetInverse()
    except RuntimeError as error:
        raise InputError(
            f"not a readable, invertible ITK transform ({error})", transform, subject
        ) from error
    moving = load_checked_image(mask, subject)
    try:
        reference_image = nib.load(followup)
    except Exception as error:  # nibabel raises many types for unreadable files
        raise InputError(f"not a readable NIfTI image ({error})", followup, subject) from error
    if not isinstance(reference_image, nib.Nifti1Image | nib.Nifti2Image):
        raise InputError("expected a NIfTI image", followup, subject)
    shape = tuple(int(n) for n in reference_image.shape[:3])
    affine = np.asarray(reference_image.affine, dtype=np.float64)
    # Only the follow-up's geometry is needed: an empty image on its grid.
    reference = sitk.Image(list(shape), sitk.sitkUInt8)
    origin, spacing, direction = itk_geometry(affine)
    reference.SetOrigin(origin)
    reference.SetSpacing(spacing)
    reference.SetDirection(direction)
    binary = (np.asarray(moving.dataobj) > 0).astype(np.uint8)
    mapped = sitk.Resample(
        to_sitk(binary, moving.affine),
        reference,
        from_followup,
        sitk.sitkNearestNeighbor,
        0,
        sitk.sitkUInt8,
    )
    data: npt.NDArray[Any] = from_sitk(mapped)[0]
    return nib.Nifti1Image(np.ascontiguousarray(data, dtype=np.uint8), affine)


def open_ms_data_cohort(
    data_dir: str | os.PathLike[str],
    label_dir: str | os.PathLike[str] | None = None,
    *,
    extra_single: bool = False,
    longitudinal_as_single: bool = False,
    isbi_dir: str | os.PathLike[str] | None = None,
    validation: Sequence[str] = (),
) -> pd.DataFrame:
    """The open_ms_data subset (Lesjak et al.): its pairs and its single scans.

    ``longitudinal/patientNN/study{1,2}_FLAIR.nii.gz`` become test pairs with change.
    Their ground truth (``gt.nii.gz``) lies on a separate common-space grid, so without
    ``label_dir`` no ``label`` is set. With ``label_dir``, each pair's ground truth is
    mapped onto its raw follow-up grid (:func:`common_space_mask_to_followup`) and
    written as ``<label_dir>/<patient>_space-followup_desc-change_mask.nii.gz``, its path
    in the ``label`` column. ``single/*FLAIR*.nii.gz`` become single scans (no-change
    training pairs by a simulated rescan).

    Every real scan as a single scan, for training data with real anatomy:
    ``extra_single`` adds ``extra_single/*FLAIR*.nii.gz``; ``longitudinal_as_single``
    adds both studies of every longitudinal pair as single scans (``long-patientNN-studyY``;
    their images only, never their labels: the pairs themselves stay test pairs);
    ``isbi_dir`` adds the ISBI 2015 FLAIRs of that folder (``isbi2015-<name>``). Subjects
    named in ``validation`` become ``split: validation`` single scans: held out of every
    training run and used for the synthetic validation set.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise CohortError([f"open_ms_data folder {str(root)!r} does not exist"])
    pairs = []
    for patient in sorted(
        (root / "longitudinal").glob("patient*"), key=lambda p: _natural_key(p.name)
    ):
        baseline = patient / "study1_FLAIR.nii.gz"
        followup = patient / "study2_FLAIR.nii.gz"
        if baseline.is_file() and followup.is_file():
            pairs.append((patient, baseline, followup))
    singles = [
        (_subject_id(scan.name), scan) for scan in sorted((root / "single").glob("*FLAIR*.nii.gz"))
    ]
    if not pairs and not singles:
        raise CohortError(
            [
                f"{root}: no longitudinal/patient*/study*_FLAIR.nii.gz or "
                "single/*FLAIR*.nii.gz found (is this the open_ms_data folder?)"
            ]
        )
    if extra_single:
        singles += [
            (_subject_id(scan.name), scan)
            for scan in sorted((root / "extra_single").glob("*FLAIR*.nii.gz"))
        ]
    if longitudinal_as_single:
        singles += [
            (f"long-{patient.name}-{scan.name.split('_')[0]}", scan)
            for patient, baseline, followup in pairs
            for scan in (baseline, followup)
        ]
    if isbi_dir is not None:
        isbi_scans = sorted(Path(isbi_dir).glob("*FLAIR*.nii.gz"))
        if not isbi_scans:
            raise CohortError([f"{isbi_dir}: no *FLAIR*.nii.gz found (the ISBI 2015 folder?)"])
        singles += [(f"isbi2015-{_subject_id(scan.name)}", scan) for scan in isbi_scans]
    unknown = sorted(set(validation) - {subject for subject, _ in singles})
    if unknown:
        raise CohortError(
            [
                f"validation subject {name!r} is not one of the single scans "
                f"({', '.join(subject for subject, _ in singles)})"
                for name in unknown
            ]
        )

    labels: dict[str, str] = {}
    if label_dir is not None:
        labels = _write_open_ms_labels(pairs, Path(label_dir).absolute())
    rows = [
        {
            "subject": patient.name,
            "baseline": str(baseline.absolute()),
            "followup": str(followup.absolute()),
            "split": "test",
            "change": "yes",
            "label": labels.get(patient.name, ""),
        }
        for patient, baseline, followup in pairs
    ]
    rows += [
        {
            "subject": subject,
            "baseline": "",
            "followup": str(scan.absolute()),
            "split": "validation" if subject in validation else "train",
            "change": "no",
            "label": "",
        }
        for subject, scan in singles
    ]
    return check_cohort_table(pd.DataFrame(rows), base_dir=root, source=str(root))


def _write_open_ms_labels(pairs: list[tuple[Path, Path, Path]], label_dir: Path) -> dict[str, str]:
    """Map and write every pair's ground truth; check all pairs' files before writing any."""
    needed = ("gt.nii.gz", "study2_FLAIR_to_common_space.txt")
    problems = [
        f"subject {patient.name!r}, file {str(patient / name)!r}: missing (needed "
        "to map the ground truth onto the follow-up grid)"
        for patient, _, _ in pairs
        for name in needed
        if not (patient / name).is_file()
    ]
    if problems:
        raise CohortError(problems)
    labels = {}
    for patient, _, followup in pairs:
        image = common_space_mask_to_followup(
            patient / "gt.nii.gz",
            followup,
            patient / "study2_FLAIR_to_common_space.txt",
            subject=patient.name,
        )
        path = label_dir / f"{patient.name}{OPEN_MS_LABEL_SUFFIX}"
        save_nifti(np.asarray(image.dataobj), image.affine, path, dtype=np.uint8)
        labels[patient.name] = str(path)
    return labels


def msseg2_ground_truth_file(ground_truth: str) -> str:
    """The MSSEG-2 file name of a ground truth: 'consensus' or 'expert1' ... 'expert4'."""
    if ground_truth == "consensus":
        return "ground_truth.nii.gz"
    if ground_truth in MSSEG2_GROUND_TRUTHS:
        return f"ground_truth_{ground_truth}.nii.gz"
    raise ValueError(
        f"unknown MSSEG-2 ground truth {ground_truth!r}; choose one of "
        f"{', '.join(MSSEG2_GROUND_TRUTHS)}"
    )


def msseg2_cohort(
    data_dir: str | os.PathLike[str], *, ground_truth: str = "consensus"
) -> pd.DataFrame:
    """The MSSEG-2 training data: one folder per case, each a test pair.

    Each case folder (named by its case id, e.g. ``013``) holds both FLAIRs already
    resampled to a common "middle" space on one grid, and the ground truths on that
    grid: ``ground_truth.nii.gz`` (the consensus) and ``ground_truth_expert{1..4}``.
    ``ground_truth`` picks which becomes the ``label``. Every case is a test pair,
    ``change: yes`` when its label marks any voxel and ``no`` otherwise (MSSEG-2
    includes patients without new lesions, which are the false-positive test).
    Subjects are ``msseg2-<case>``. Missing files of all cases are reported at once.
    """
    label_name = msseg2_ground_truth_file(ground_truth)
    root = Path(data_dir)
    if not root.is_dir():
        raise CohortError([f"MSSEG-2 folder {str(root)!r} does not exist"])
    cases = sorted(
        (p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))),
        key=lambda p: _natural_key(p.name),
    )
    if not cases:
        raise CohortError(
            [
                f"{root}: no case folders found (expected one folder per case, "
                f"e.g. 013/{MSSEG2_FOLLOWUP})"
            ]
        )
    problems: list[str] = []
    rows = []
    for case in cases:
        subject = "msseg2-" + "-".join(p for p in re.split(r"[^A-Za-z0-9]+", case.name) if p)
        baseline, followup, label = (
            case / MSSEG2_BASELINE,
            case / MSSEG2_FOLLOWUP,
            case / label_name,
        )
        missing = [path for path in (baseline, followup, label) if not path.is_file()]
        for path in missing:
            what = f"the {ground_truth} ground truth" if path == label else "a FLAIR"
            problems.append(f"case {case.name!r}, file {str(path.absolute())!r}: missing ({what})")
        if missing:
            continue
        try:
            image = load_checked_image(label, subject)
        except InputError as error:
            problems.append(f"case {case.name!r}: {error}")
            continue
        change = "yes" if bool(np.any(np.asarray(image.dataobj) > 0)) else "no"
        rows.append(
            {
                "subject": subject,
                "baseline": str(baseline.absolute()),
                "followup": str(followup.absolute()),
                "split": "test",
                "change": change,
                "label": str(label.absolute()),
            }
        )
    if problems:
        raise CohortError(problems)
    return check_cohort_table(pd.DataFrame(rows), base_dir=root, source=str(root))
