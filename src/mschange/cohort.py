"""The cohort: which scan pairs the workflow processes, from a TSV sheet or a BIDS dataset.

Everything here runs when the workflow is parsed, before any job starts, so that a
bad input stops the run with a message naming the subject, the file and the problem.
"""

from __future__ import annotations

import csv
import json
import logging
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
from mschange.imagespace import grid_differences
from mschange.io import (
    InputError,
    atomic_path,
    check_label_values,
    check_scan,
    load_checked_image,
    voxel_digest,
)

log = logging.getLogger(__name__)

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
            super().__init__(
                "the cohort cannot be used:\n" + "\n".join(f"  - {p}" for p in problems)
            )


def read_cohort_sheet(sheet: str | os.PathLike[str]) -> pd.DataFrame:
    """Read and check a cohort TSV; relative image paths are taken from the sheet's folder.

    Returns one row per pair with the columns of :data:`COLUMNS` (``label`` empty
    where absent) and absolute, normalised paths. Every line must have at most as many
    tab-separated fields as the header (an extra tab shifts every later column); a line
    with fewer has its last fields empty.
    """
    path = Path(sheet)
    if path.is_dir():
        raise CohortError([f"cohort sheet {str(path)!r} is a folder, not a file"])
    if not path.is_file():
        raise CohortError([f"cohort sheet {str(path)!r} does not exist"])
    try:
        with open(path, newline="", encoding="utf-8-sig") as stream:
            reader = csv.reader(stream, delimiter="\t")
            lines = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise CohortError(
            [f"cohort sheet {str(path)!r} is not a readable TSV ({error})"]
        ) from error
    lines = [(number, row) for number, row in lines if row]  # pandas skips blank lines
    if not lines:
        raise CohortError([f"cohort sheet {str(path)!r} is empty"])
    header_fields = len(lines[0][1])
    extra = [
        f"{path}: line {number} has {len(row)} fields, the header {header_fields} "
        "(tab-separated; an extra tab shifts every later column)"
        for number, row in lines[1:]
        if len(row) > header_fields
    ]
    if extra:
        raise CohortError(extra)
    notes = {
        number: f"line {number} has {len(row)} fields, the header {header_fields}"
        for number, row in lines[1:]
        if len(row) < header_fields
    }
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, comment=None)
    except Exception as error:
        raise CohortError(
            [f"cohort sheet {str(path)!r} is not a readable TSV ({error})"]
        ) from error
    numbers = [number for number, _ in lines[1:]]
    return check_cohort_table(
        table,
        base_dir=path.parent,
        source=str(path),
        line_numbers=numbers if len(numbers) == len(table) else None,
        line_notes=notes,
    )


def check_cohort_table(
    table: pd.DataFrame,
    *,
    base_dir: Path,
    source: str,
    line_numbers: list[int] | None = None,
    line_notes: dict[int, str] | None = None,
) -> pd.DataFrame:
    """Check every row against the cohort schema; collect all problems before failing.

    ``line_numbers``: each row's line in the sheet (default: 2, 3, ...; 0 for a row not
    from a sheet, named without a line); ``line_notes``:
    a remark added to any problem of that line (e.g. that it has fewer fields).
    """
    problems: list[str] = []
    table = table.rename(columns=lambda c: str(c).strip())
    schema = load_schema("cohort")
    allowed = set(schema["properties"])
    unknown = [c for c in table.columns if c not in allowed]
    if unknown:
        problems.append(
            f"{source}: unknown column(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(COLUMNS)}"
        )
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        problems.append(f"{source}: missing column(s) {', '.join(map(repr, missing))}")
    if problems:
        raise CohortError(problems)
    if table.empty:
        raise CohortError([f"{source}: the sheet has no rows"])
    numbers = line_numbers or list(range(2, len(table) + 2))
    notes = line_notes or {}

    validator = jsonschema.Draft202012Validator(schema)
    rows = []
    for line, record in zip(numbers, table.to_dict("records"), strict=True):
        row = {k: str(v).strip() for k, v in record.items() if str(v).strip() != ""}
        subject = row.get("subject", f"(row {line})")
        row_problems = []
        for error in validator.iter_errors(row):
            field = ".".join(str(p) for p in error.absolute_path) or "row"
            row_problems.append(f"{field}: {error.message}")
        if "baseline" not in row and (row.get("change"), row.get("split")) not in (
            ("no", "train"),
            ("no", "validation"),
        ):
            row_problems.append(
                "baseline is empty, which makes it a single scan; single "
                "scans can only be no-change training or validation pairs "
                "(change: no, split: train or validation)"
            )
        if row.get("split") == "validation" and row.get("change") != "no":
            row_problems.append(
                "validation scans must be without change (change: no): the "
                "workflow paints the validation set's changes into them"
            )
        for column in IMAGE_COLUMNS:
            if column in row:
                row[column] = str(_resolve(row[column], base_dir))
        same = _same_file_problem(row.get("baseline", ""), row.get("followup", ""))
        if same:
            row_problems.append(same)
        note = f" [{notes[line]}]" if line in notes else ""
        where = f"{source}, line {line}" if line else source
        problems += [f"subject {subject!r} ({where}): {problem}{note}" for problem in row_problems]
        rows.append({c: row.get(c, "") for c in COLUMNS})

    seen: dict[str, tuple[str, int]] = {}
    for line, row in zip(numbers, rows, strict=True):
        # Case-insensitive: sub-P01/ and sub-p01/ are one folder on macOS and Windows.
        key = row["subject"].casefold()
        if key in seen:
            first, first_line = seen[key]
            if first == row["subject"]:
                problems.append(
                    f"subject {row['subject']!r}: duplicate subject in {source} "
                    f"(lines {first_line} and {line})"
                )
            else:
                problems.append(
                    f"subject {row['subject']!r}: differs from subject {first!r} "
                    f"only in case ({source}, lines {first_line} and {line}); "
                    "their output folders would be one on a case-insensitive file "
                    "system (macOS, Windows): rename one"
                )
        seen.setdefault(key, (row["subject"], line))
    if problems:
        raise CohortError(problems)
    return pd.DataFrame(rows, columns=COLUMNS)


def _same_file_problem(baseline: str, followup: str) -> str | None:
    """Why a pair whose baseline and follow-up are one file cannot be used (None if not)."""
    if not baseline or not followup:
        return None
    try:
        same = os.path.samefile(baseline, followup)
    except OSError:  # a missing file: reported on its own
        same = os.path.realpath(baseline) == os.path.realpath(followup)
    if not same:
        return None
    return (
        f"baseline and follow-up are the same file ({followup!r}): a pair needs two "
        "scans (for a single scan, leave baseline empty)"
    )


def _resolve(path: str, base_dir: Path) -> Path:
    candidate = Path(os.path.expanduser(path))
    if not candidate.is_absolute():
        candidate = base_dir / candidate
    return Path(os.path.normpath(candidate.absolute()))


def _natural_key(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def cohort_from_bids(
    bids_dir: str | os.PathLike[str], *, split: str = "test", change: str = "unknown"
) -> pd.DataFrame:
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
        label = subject_dir.name[len("sub-") :]
        sessions: list[tuple[str, Path]] = []
        for session_dir in sorted(subject_dir.glob("ses-*"), key=lambda p: _natural_key(p.name)):
            flairs = sorted((session_dir / "anat").glob("*_FLAIR.nii*"))
            if len(flairs) > 1:
                problems.append(
                    f"subject {label!r}: {session_dir} has {len(flairs)} FLAIR "
                    f"images ({', '.join(f.name for f in flairs)}); "
                    "write a cohort sheet to choose one"
                )
            elif flairs:
                sessions.append((session_dir.name[len("ses-") :], flairs[0]))
        for (ses_a, scan_a), (ses_b, scan_b) in pairwise(sessions):
            rows.append(
                {
                    "subject": f"{label}-{ses_a}to{ses_b}",
                    "baseline": str(scan_a),
                    "followup": str(scan_b),
                    "split": split,
                    "change": change,
                }
            )
    if problems:
        raise CohortError(problems)
    if not rows:
        raise CohortError(
            [
                f"BIDS folder {str(root)!r}: no subject has two sessions with a "
                "FLAIR (sub-*/ses-*/anat/*_FLAIR.nii.gz)"
            ]
        )
    return check_cohort_table(pd.DataFrame(rows), base_dir=root, source=str(root))


# Bump when the image checks change: cached passes of older checks are not trusted.
CHECKS_VERSION = 2


def _cache_key(path: Path, role: str) -> str:
    stat = path.stat()
    return f"v{CHECKS_VERSION}|{role}|{path}|{stat.st_size}|{stat.st_mtime_ns}"


def _check_image(
    path: Path, column: str, subject: str, check_voxels: bool
) -> tuple[Any, str | None]:
    """One image's checks for its column: (the image, its voxel digest or None)."""
    image = load_checked_image(path, subject, read_voxels=check_voxels)
    if column == "label":
        if check_voxels:
            check_label_values(image, path, subject)
        return image, None
    check_scan(image, path, subject, voxels=check_voxels)
    return image, voxel_digest(image) if check_voxels else None


def check_cohort_images(
    cohort: pd.DataFrame,
    *,
    check_voxels: bool = True,
    cache_file: str | os.PathLike[str] | None = None,
) -> list[str]:
    """Open every image of the cohort and check it; raise :class:`CohortError` listing all problems.

    Each file: exists and is a file, readable, a complete .gz, a NIfTI, 3D, no zero
    voxel size, an invertible affine, as many bytes as its header promises, finite
    voxels. Each scan (baseline, follow-up): at least ``io.MIN_SCAN_VOXELS`` voxels and
    ``io.MIN_SCAN_FOV_MM`` mm along every axis, not one value everywhere. Each label:
    only 0 and 1, on its follow-up's grid. Each pair: baseline and follow-up are two
    files. ``check_voxels=False`` checks headers only: no data are decompressed or read
    (no truncation, NaN/Inf, blank-scan, label-value or identical-voxel check).

    Returns warnings (one line each, naming subject and files) for what may be meant
    but is suspicious: a pair whose scans hold identical voxels. Files that passed
    before, unchanged (same size and modification time), are not read again when
    ``cache_file`` is given.
    """
    cache: dict[str, Any] = {}
    cache_path = Path(cache_file) if cache_file else None
    if cache_path is not None and cache_path.is_file():
        try:
            cache = json.loads(cache_path.read_text())
        except (OSError, ValueError):
            cache = {}
    problems: list[str] = []
    warnings: list[str] = []
    passed: dict[str, Any] = {}
    for row in cohort.itertuples(index=False):
        headers: dict[str, Any] = {}
        digests: dict[str, str | None] = {}
        # Only a label's grid is compared with another image's (its follow-up's): a file
        # that passed before is opened again only then.
        grid_check = bool(row.label) and bool(row.followup)
        same = _same_file_problem(row.baseline, row.followup)
        if same:
            problems.append(f"subject {row.subject!r}: {same}")
        for column in IMAGE_COLUMNS:
            value = getattr(row, column)
            if not value:
                continue
            path = Path(value)
            role = "label" if column == "label" else "scan"
            try:
                key = _cache_key(path, role) if path.is_file() else None
                entry = cache.get(key) if key is not None else None
                if isinstance(entry, dict) and (entry.get("voxels") or not check_voxels):
                    if grid_check and column in ("label", "followup"):
                        headers[column] = nib.load(path)
                    digests[column] = entry.get("digest")
                    passed[key] = entry  # type: ignore[index]
                    continue
                headers[column], digests[column] = _check_image(
                    path, column, row.subject, check_voxels
                )
                if key is not None:
                    passed[key] = {"voxels": check_voxels, "digest": digests[column]}
            except InputError as error:
                problems.append(f"{error} ({column} scan)")
        if "label" in headers and "followup" in headers:
            differences = grid_differences(headers["label"], headers["followup"])
            if differences:
                problems.append(
                    f"subject {row.subject!r}, file {row.label!r}: the label's grid differs "
                    f"from the follow-up's grid ({row.followup}): "
                    + "; ".join(differences)
                    + " (the label's against the follow-up's); labels must be drawn on the "
                    "follow-up scan's own grid"
                )
        if (
            not same
            and digests.get("baseline")
            and digests.get("baseline") == digests.get("followup")
        ):
            warnings.append(
                f"subject {row.subject!r}: baseline {row.baseline!r} and "
                f"follow-up {row.followup!r} hold identical voxels, so the pair "
                "cannot show any change (one scan copied twice?)"
            )
    if cache_path is not None and passed:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache_path) as tmp:
            tmp.write_text(json.dumps({**cache, **passed}, indent=0))
    if problems:
        raise CohortError(problems)
    return warnings


def subjects(
    cohort: pd.DataFrame, split: str | None = None, change: Iterable[str] | None = None
) -> list[str]:
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
                what = (
                    "is a folder, not an image file"
                    if Path(value).is_dir()
                    else "the file does not exist"
                )
                problems.append(f"subject {row.subject!r}, file {value!r}: {what} ({column} scan)")
    if problems:
        raise CohortError(problems)


def check_pair_images_step(
    subject: str,
    files: dict[str, str],
    output: str | os.PathLike[str],
    *,
    check_voxels: bool = True,
) -> dict[str, Any]:
    """Check one pair's images (as :func:`check_cohort_images` does) and record them.

    ``files`` maps baseline/followup/label to paths (empty: absent). Raises
    :class:`CohortError` naming the subject, file and problem; on success writes a
    JSON record of each file's shape, voxel size and size in bytes, and the check's
    warnings (also logged), to ``output``.
    """
    row = {"subject": subject, **{column: files.get(column, "") for column in IMAGE_COLUMNS}}
    try:
        warnings = check_cohort_images(pd.DataFrame([row]), check_voxels=check_voxels)
    except CohortError as error:
        # One line: the job's log and the cohort status table show it whole.
        raise CohortError(error.problems, one_line=True) from None
    for warning in warnings:
        log.warning("%s", warning)
    record: dict[str, Any] = {
        "subject": subject,
        "check_voxels": check_voxels,
        "files": {},
        "warnings": warnings,
    }
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
        scans[subject] = {
            column: str(getattr(row, column))
            for column in ("baseline", "followup")
            if getattr(row, column)
        }
        for path in scans[subject].values():
            test_pair = test_images.get(os.path.realpath(path))
            if test_pair is not None:
                shared[subject] = test_pair
    return {
        "training_pairs": scans,
        "test_pair_images_used": shared,
        "labels_used": "none: training pairs have no change labels (synthetic changes only)",
    }
