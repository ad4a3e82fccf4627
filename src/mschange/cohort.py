"""The cohort: which scan pairs the workflow processes, from a TSV sheet or a BIDS dataset.

Everything here runs when the workflow is parsed, before any job starts, so that a
bad input stops the run with a message naming the subject, the file and the problem.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from itertools import pairwise
from pathlib import Path
from typing import Any

import jsonschema
import nibabel as nib
import pandas as pd

from mschange.config import load_schema
from mschange.imagespace import same_grid
from mschange.io import InputError, atomic_path, load_checked_image

COLUMNS = ["subject", "baseline", "followup", "split", "change", "label"]
IMAGE_COLUMNS = ["baseline", "followup", "label"]
REQUIRED_COLUMNS = ["subject", "baseline", "followup", "split", "change"]


class CohortError(ValueError):
    """One or more problems with the cohort; the message lists each on its own line."""

    def __init__(self, problems: list[str], *, one_line: bool = False) -> None:
        self.problems = problems
        if one_line:
            super().__init__("; ".join(problems))
        else:
            super().__init__("the cohort cannot be used:\n"
                             + "\n".join(f"  - {p}" for p in problems))


def read_cohort_sheet(sheet: str | os.PathLike[str]) -> pd.DataFrame:
    """Read and check a cohort TSV; relative image paths are taken from the sheet's folder.

    Returns one row per pair with the columns of :data:`COLUMNS` (``label`` empty
    where absent) and absolute, normalised paths.
    """
    path = Path(sheet)
    if not path.is_file():
        raise CohortError([f"cohort sheet {str(path)!r} does not exist"])
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False,
                            comment=None)
    except Exception as error:
        raise CohortError([f"cohort sheet {str(path)!r} is not a readable TSV ({error})"]
                          ) from error
    return check_cohort_table(table, base_dir=path.parent, source=str(path))


def check_cohort_table(table: pd.DataFrame, *, base_dir: Path, source: str) -> pd.DataFrame:
    """Check every row against the cohort schema; collect all problems before failing."""
    problems: list[str] = []
    table = table.rename(columns=lambda c: str(c).strip())
    schema = load_schema("cohort")
    allowed = set(schema["properties"])
    unknown = [c for c in table.columns if c not in allowed]
    if unknown:
        problems.append(f"{source}: unknown column(s) {', '.join(map(repr, unknown))}; "
                        f"allowed: {', '.join(COLUMNS)}")
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        problems.append(f"{source}: missing column(s) {', '.join(map(repr, missing))}")
    if problems:
        raise CohortError(problems)
    if table.empty:
        raise CohortError([f"{source}: the sheet has no rows"])

    validator = jsonschema.Draft202012Validator(schema)
    rows = []
    for line, record in enumerate(table.to_dict("records"), start=2):
        row = {k: str(v).strip() for k, v in record.items() if str(v).strip() != ""}
        subject = row.get("subject", f"(row {line})")
        for error in validator.iter_errors(row):
            field = ".".join(str(p) for p in error.absolute_path) or "row"
            problems.append(f"subject {subject!r} ({source}, line {line}): {field}: "
                            f"{error.message}")
        if "baseline" not in row and (row.get("change"), row.get("split")) not in (
                ("no", "train"), ("no", "validation")):
            problems.append(f"subject {subject!r} ({source}, line {line}): baseline is empty, "
                            "which makes it a single scan; single scans can only be no-change "
                            "training or validation pairs (change: no, split: train or "
                            "validation)")
        if row.get("split") == "validation" and row.get("change") != "no":
            problems.append(f"subject {subject!r} ({source}, line {line}): validation scans "
                            "must be without change (change: no): the workflow paints the "
                            "validation set's changes into them")
        for column in IMAGE_COLUMNS:
            if column in row:
                row[column] = str(_resolve(row[column], base_dir))
        rows.append({c: row.get(c, "") for c in COLUMNS})

    seen: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        if row["subject"] in seen:
            problems.append(f"subject {row['subject']!r}: duplicate subject in {source} "
                            f"(lines {seen[row['subject']]} and {line})")
        seen.setdefault(row["subject"], line)
    if problems:
        raise CohortError(problems)
    return pd.DataFrame(rows, columns=COLUMNS)


def _resolve(path: str, base_dir: Path) -> Path:
    candidate = Path(os.path.expanduser(path))
    if not candidate.is_absolute():
        candidate = base_dir / candidate
    return Path(os.path.normpath(candidate.absolute()))


def _natural_key(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def cohort_from_bids(bids_dir: str | os.PathLike[str], *, split: str = "test",
                     change: str = "unknown") -> pd.DataFrame:
    """Pairs of consecutive sessions from ``sub-*/ses-*/anat/*_FLAIR.nii[.gz]``.

    A subject with sessions 01, 02, 03 gives the pairs ``<sub>-01to02`` and
    ``<sub>-02to03``. Subjects with one session are skipped; a session with more
    than one FLAIR is an error (say which run to use by making a cohort sheet).
    """
    root = Path(bids_dir)
    if not root.is_dir():
        raise CohortError([f"BIDS folder {str(root)!r} does not exist"])
    problems: list[str] = []
    rows = []
    for subject_dir in sorted(root.glob("sub-*"), key=lambda p: _natural_key(p.name)):
        if not subject_dir.is_dir():
            continue
        label = subject_dir.name[len("sub-"):]
        sessions: list[tuple[str, Path]] = []
        for session_dir in sorted(subject_dir.glob("ses-*"), key=lambda p: _natural_key(p.name)):
            flairs = sorted((session_dir / "anat").glob("*_FLAIR.nii*"))
            if len(flairs) > 1:
                problems.append(f"subject {label!r}: {session_dir} has {len(flairs)} FLAIR "
                                f"images ({', '.join(f.name for f in flairs)}); "
                                "write a cohort sheet to choose one")
            elif flairs:
                sessions.append((session_dir.name[len("ses-"):], flairs[0]))
        for (ses_a, scan_a), (ses_b, scan_b) in pairwise(sessions):
            rows.append({"subject": f"{label}-{ses_a}to{ses_b}", "baseline": str(scan_a),
                         "followup": str(scan_b), "split": split, "change": change})
    if problems:
        raise CohortError(problems)
    if not rows:
        raise CohortError([f"BIDS folder {str(root)!r}: no subject has two sessions with a "
                           "FLAIR (sub-*/ses-*/anat/*_FLAIR.nii.gz)"])
    return check_cohort_table(pd.DataFrame(rows), base_dir=root, source=str(root))


def _cache_key(path: Path) -> str:
    stat = path.stat()
    return f"{path}|{stat.st_size}|{stat.st_mtime_ns}"


def check_cohort_images(cohort: pd.DataFrame, *, check_voxels: bool = True,
                        cache_file: str | os.PathLike[str] | None = None) -> None:
    """Open every image of the cohort and check it; raise :class:`CohortError` listing all problems.

    Checks each file (exists, readable, complete .gz, 3D, finite voxels) and that a
    label lies on its follow-up's grid. Files that passed before, unchanged (same
    size and modification time), are not read again when ``cache_file`` is given.
    """
    cache: dict[str, bool] = {}
    cache_path = Path(cache_file) if cache_file else None
    if cache_path is not None and cache_path.is_file():
        try:
            cache = json.loads(cache_path.read_text())
        except (OSError, ValueError):
            cache = {}
    problems: list[str] = []
    passed: dict[str, bool] = {}
    for row in cohort.itertuples(index=False):
        headers: dict[str, nib.Nifti1Image] = {}
        # Only a label's grid is compared with another image's (its follow-up's): a file
        # that passed before is opened again only then.
        grid_check = bool(row.label) and bool(row.followup)
        for column in IMAGE_COLUMNS:
            value = getattr(row, column)
            if not value:
                continue
            path = Path(value)
            try:
                key = _cache_key(path) if path.exists() else None
                if key is not None and cache.get(key):
                    if grid_check and column in ("label", "followup"):
                        headers[column] = nib.load(path)  # type: ignore[assignment]
                    passed[key] = True
                    continue
                headers[column] = load_checked_image(path, row.subject,
                                                     check_values=check_voxels)
                if key is not None:
                    passed[key] = True
            except InputError as error:
                problems.append(f"{error} ({column} scan)")
        if "label" in headers and "followup" in headers and \
                not same_grid(headers["label"], headers["followup"]):
            problems.append(
                f"subject {row.subject!r}, file {row.label!r}: the label's grid (shape "
                f"{tuple(headers['label'].shape[:3])}) differs from the follow-up's grid "
                f"(shape {tuple(headers['followup'].shape[:3])}, {row.followup}); labels "
                "must be drawn on the follow-up scan")
    if cache_path is not None and passed:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache_path) as tmp:
            tmp.write_text(json.dumps({**cache, **passed}, indent=0))
    if problems:
        raise CohortError(problems)


def subjects(cohort: pd.DataFrame, split: str | None = None,
             change: Iterable[str] | None = None) -> list[str]:
    """Subject ids, optionally filtered by split and change status."""
    selected = cohort
    if split is not None:
        selected = selected[selected["split"] == split]
    if change is not None:
        selected = selected[selected["change"].isin(list(change))]
    return list(selected["subject"])


def check_cohort_files_exist(cohort: pd.DataFrame) -> None:
    """Check only that every image of the cohort is a file (cheap: no file is opened).

    With ``cohort.check_inputs: per_subject`` this is all that runs before the job
    graph is built (Snakemake cannot plan jobs whose input is missing); each subject's
    images are then opened and checked by its own job (:func:`check_pair_images_step`).
    """
    problems = []
    for row in cohort.itertuples(index=False):
        for column in IMAGE_COLUMNS:
            value = getattr(row, column)
            if value and not Path(value).is_file():
                problems.append(f"subject {row.subject!r}, file {value!r}: the file does not "
                                f"exist ({column} scan)")
    if problems:
        raise CohortError(problems)


def check_pair_images_step(subject: str, files: dict[str, str], output: str | os.PathLike[str],
                           *, check_voxels: bool = True) -> dict[str, Any]:
    """Check one pair's images (as :func:`check_cohort_images` does) and record them.

    ``files`` maps baseline/followup/label to paths (empty: absent). Raises
    :class:`CohortError` naming the subject, file and problem; on success writes a
    JSON record of each file's shape, voxel size and size in bytes to ``output``.
    """
    row = {"subject": subject, **{column: files.get(column, "") for column in IMAGE_COLUMNS}}
    try:
        check_cohort_images(pd.DataFrame([row]), check_voxels=check_voxels)
    except CohortError as error:
        # One line: the job's log and the cohort status table show it whole.
        raise CohortError(error.problems, one_line=True) from None
    record: dict[str, Any] = {"subject": subject, "check_voxels": check_voxels, "files": {}}
    for column in IMAGE_COLUMNS:
        if row[column]:
            image: Any = nib.load(row[column])
            record["files"][column] = {
                "path": row[column],
                "shape": [int(n) for n in image.shape[:3]],
                "voxel_size_mm": [round(float(z), 4) for z in image.header.get_zooms()[:3]],
                "bytes": Path(row[column]).stat().st_size,
            }
    with atomic_path(output) as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    return record


def training_data_record(cohort: pd.DataFrame, subjects: Iterable[str]) -> dict[str, Any]:
    """What a model trained on ``subjects`` saw, for its model file: each training pair's
    scans, and which of them are images of the cohort's test pairs (allowed as unlabelled
    single scans, but a reader of its scores on those pairs must know)."""
    rows = {row.subject: row for row in cohort.itertuples(index=False)}
    test_images = {}
    for row in cohort.loc[cohort["split"] == "test"].itertuples(index=False):
        for column in ("baseline", "followup"):
            if getattr(row, column):
                test_images[os.path.realpath(getattr(row, column))] = row.subject
    scans: dict[str, dict[str, str]] = {}
    shared: dict[str, str] = {}
    for subject in subjects:
        row = rows[subject]
        scans[subject] = {column: str(getattr(row, column))
                          for column in ("baseline", "followup") if getattr(row, column)}
        for path in scans[subject].values():
            test_pair = test_images.get(os.path.realpath(path))
            if test_pair is not None:
                shared[subject] = test_pair
    return {"training_pairs": scans, "test_pair_images_used": shared,
            "labels_used": "none: training pairs have no change labels (synthetic changes "
                           "only)"}
