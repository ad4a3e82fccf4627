"""Every bad input, through every entry point that takes it: one table.

Each entry of :data:`IMAGE_CASES` writes one class of bad file (or pair) into a folder
and names the words its message must hold. Each is run through ``mschange check-cohort``
(with and, where a header shows the problem, without reading voxels), the workflow's
per-subject input check (:func:`mschange.cohort.check_pair_images_step`), ``mschange
predict`` (scans only) and, for a few, a Snakemake dry run. Every run must stop with
the subject (where it has one), the file and the problem named, write nothing, and leave
every input as it was. A new entry point or input path belongs here, so that it cannot
skip a check.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from mschange import cli
from mschange.cohort import CohortError, check_pair_images_step
from mschange.io import MIN_SCAN_FOV_MM, MIN_SCAN_VOXELS

from .workflow_runs import snakemake, write_config

# Scans of a brain-sized field of view (20 voxels of 5 mm: 100 mm per axis), noise
# (not blank) and different at each time point: they pass every check.
SHAPE = (20, 20, 20)
AFFINE = np.diag([5.0, 5.0, 5.0, 1.0])
SUBJECT = "p1"


def save(path: Path, data: np.ndarray, affine: np.ndarray | None = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine), path)
    return path


def noise(seed: int, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).uniform(10.0, 100.0, shape)


def good_files(folder: Path) -> dict[str, Path]:
    return {
        "baseline": save(folder / "baseline.nii.gz", noise(1)),
        "followup": save(folder / "followup.nii.gz", noise(2)),
        "label": save(folder / "label.nii.gz", np.zeros(SHAPE)),
    }


# ------------------------------------------------------------------- bad-file writers
# Each takes the folder and the good files; returns the file(s) that replace good ones.

Writer = Callable[[Path, dict[str, Path]], dict[str, Path]]


def scan(role: str, write: Callable[[Path], None], name: str = "bad.nii.gz") -> Writer:
    def writer(folder: Path, good: dict[str, Path]) -> dict[str, Path]:
        path = folder / name
        write(path)
        return {role: path}

    return writer


def missing(path: Path) -> None:
    pass


def folder_instead_of_file(path: Path) -> None:
    path.mkdir()


def empty(path: Path) -> None:
    path.write_bytes(b"")


def not_nifti(path: Path) -> None:
    path.write_bytes(b"this is a text file, not an image\n" * 20)


def truncated_gzip(path: Path) -> None:
    save(path, noise(3))
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])


def two_dimensional(path: Path) -> None:
    save(path, noise(3, SHAPE[:2]))


def four_dimensional(path: Path) -> None:
    save(path, noise(3, (*SHAPE, 3)))


def nan_voxels(path: Path) -> None:
    data = noise(3)
    data[3, 4, 5] = np.nan
    save(path, data)


def all_zero(path: Path) -> None:
    save(path, np.zeros(SHAPE))


def five_cubed(path: Path) -> None:
    save(path, noise(3, (5, 5, 5)), np.eye(4))


def small_noise(path: Path) -> None:
    save(path, noise(3, (40, 40, 20)), np.eye(4))


def with_header(path: Path, patch: Callable[[bytearray], None]) -> None:
    """Save a good scan, then change its stored header bytes (nibabel would fix them)."""
    image = nib.Nifti1Image(noise(3).astype(np.float32), AFFINE)
    raw = bytearray(image.to_bytes())
    patch(raw)
    path.write_bytes(gzip.compress(bytes(raw)) if path.name.endswith(".gz") else raw)


def zero_pixdim(path: Path) -> None:
    # pixdim[2] (the second axis' voxel size) at byte 84; the qform alone gives the affine.
    def patch(raw: bytearray) -> None:
        raw[84:88] = struct.pack("<f", 0.0)
        raw[254:256] = struct.pack("<h", 0)  # sform_code: unknown

    with_header(path, patch)


def singular_affine(path: Path) -> None:
    affine = AFFINE.copy()
    affine[:3, 2] = 0.0
    image = nib.Nifti1Image(noise(3).astype(np.float32), None)
    image.header.set_sform(affine, code=1)
    nib.save(image, path)


def header_promises_more(path: Path) -> None:
    """A 10000^3 header in front of a few bytes of voxels (the file is a whole .gz)."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape((10000, 10000, 10000))
    header.set_sform(AFFINE, code=1)
    stream = io.BytesIO()
    header.write_to(stream)
    raw = stream.getvalue() + noise(3).astype(np.float32).tobytes()  # header: 352 bytes
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)


def label_with(value: float) -> Writer:
    def writer(folder: Path, good: dict[str, Path]) -> dict[str, Path]:
        data = np.zeros(SHAPE)
        data[5:8, 5:8, 5:8] = value
        return {"label": save(folder / "bad_label.nii.gz", data)}

    return writer


def shifted_label(folder: Path, good: dict[str, Path]) -> dict[str, Path]:
    affine = AFFINE.copy()
    affine[0, 3] = 2.0
    return {"label": save(folder / "bad_label.nii.gz", np.zeros(SHAPE), affine)}


def same_file(folder: Path, good: dict[str, Path]) -> dict[str, Path]:
    return {"baseline": good["followup"]}


@dataclass(frozen=True)
class Case:
    name: str
    role: str  # the file it replaces: baseline, followup, label, or pair (both scans)
    write: Writer
    words: tuple[str, ...]
    headers: bool  # whether a header-only check (check-cohort --headers-only) finds it


IMAGE_CASES = [
    Case("missing file", "baseline", scan("baseline", missing), ("does not exist",), True),
    Case(
        "folder instead of file",
        "followup",
        scan("followup", folder_instead_of_file),
        ("is a folder",),
        True,
    ),
    Case("empty file", "baseline", scan("baseline", empty), ("the file is empty",), True),
    Case(
        "not NIfTI",
        "followup",
        scan("followup", not_nifti, "bad.nii"),
        ("not a readable NIfTI",),
        True,
    ),
    Case(
        "truncated gzip",
        "baseline",
        scan("baseline", truncated_gzip),
        ("gzip stream is truncated or corrupt",),
        False,
    ),
    Case(
        "2D image",
        "followup",
        scan("followup", two_dimensional),
        ("expected a 3D image, found a 2D image",),
        True,
    ),
    Case(
        "4D image",
        "baseline",
        scan("baseline", four_dimensional),
        ("expected a 3D image, found a 4D image",),
        True,
    ),
    Case(
        "NaN voxels",
        "followup",
        scan("followup", nan_voxels),
        ("1 voxels are NaN or infinite",),
        False,
    ),
    Case(
        "all-zero scan",
        "baseline",
        scan("baseline", all_zero),
        ("every voxel of the scan is 0", "blank"),
        False,
    ),
    Case(
        "5x5x5 scan",
        "followup",
        scan("followup", five_cubed),
        ("only 5 voxels along axis 0", f"at least {MIN_SCAN_VOXELS}"),
        True,
    ),
    Case(
        "40x40x20 noise scan",
        "baseline",
        scan("baseline", small_noise),
        ("covers only 40 x 40 x 20 mm", f"at least {MIN_SCAN_FOV_MM:g} mm"),
        True,
    ),
    Case(
        "zero pixdim",
        "followup",
        scan("followup", zero_pixdim),
        ("voxel size (pixdim) is 5 x 0 x 5 mm", "zero voxel size"),
        True,
    ),
    Case(
        "non-invertible affine",
        "baseline",
        scan("baseline", singular_affine),
        ("affine", "not invertible"),
        True,
    ),
    Case(
        "header promising more data than the .gz holds",
        "baseline",
        scan("baseline", header_promises_more),
        ("header promises 4,000,000,000,000 bytes", "the file holds 32,000"),
        False,
    ),
    Case(
        "header promising more data than the .nii holds",
        "followup",
        scan("followup", header_promises_more, "bad.nii"),
        ("header promises 4,000,000,000,000 bytes", "the file holds 32,000"),
        True,
    ),
    Case(
        "label value 2",
        "label",
        label_with(2.0),
        ("holds only 0 (no change) and 1 (change)", "2 (27 voxels)"),
        False,
    ),
    Case(
        "label value 0.5",
        "label",
        label_with(0.5),
        ("holds only 0 (no change) and 1 (change)", "0.5 (27 voxels)"),
        False,
    ),
    Case(
        "label value -1",
        "label",
        label_with(-1.0),
        ("holds only 0 (no change) and 1 (change)", "-1 (27 voxels)"),
        False,
    ),
    Case(
        "label on a shifted affine",
        "label",
        shifted_label,
        ("label's grid differs", "origin (2, 0, 0) mm against (0, 0, 0) mm"),
        True,
    ),
    Case(
        "same file as baseline and follow-up",
        "pair",
        same_file,
        ("baseline and follow-up are the same file",),
        True,
    ),
]
SCAN_CASES = [case for case in IMAGE_CASES if case.role != "label"]


def case_id(case: Case) -> str:
    return case.name


def bad_pair(folder: Path, case: Case) -> tuple[dict[str, Path], Path]:
    """The good files with the case's bad one(s) in place, and the file to name."""
    files = good_files(folder)
    replaced = case.write(folder, files)
    files.update(replaced)
    return files, next(iter(replaced.values()))


def write_sheet(folder: Path, files: dict[str, Path], subject: str = SUBJECT) -> Path:
    sheet = folder / "cohort.tsv"
    pd.DataFrame(
        [
            {
                "subject": subject,
                "baseline": str(files["baseline"]),
                "followup": str(files["followup"]),
                "split": "test",
                "change": "yes",
                "label": str(files["label"]),
            }
        ]
    ).to_csv(sheet, sep="\t", index=False)
    return sheet


def fingerprints(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder``: its content hash and modification time."""
    return {
        str(path): (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def assert_named(message: str, case: Case, bad: Path, subject: str | None = SUBJECT) -> None:
    for words in case.words:
        assert words in message, message
    assert bad.name in message, message
    if subject is not None:
        assert f"'{subject}'" in message, message


# ------------------------------------------------------------------ the entry points


@pytest.mark.parametrize("headers_only", [False, True], ids=["voxels", "headers-only"])
@pytest.mark.parametrize("case", IMAGE_CASES, ids=case_id)
def test_check_cohort(tmp_path, capsys, case, headers_only):
    files, bad = bad_pair(tmp_path / "data", case)
    sheet = write_sheet(tmp_path, files)
    before = fingerprints(tmp_path)
    code = cli.main(["check-cohort", str(sheet), *(["--headers-only"] if headers_only else [])])
    captured = capsys.readouterr()
    assert fingerprints(tmp_path) == before
    if headers_only and not case.headers:
        # A problem only the voxels show: a header-only check does not see it.
        assert code == 0, captured.err
        assert "headers readable (voxels not read)" in captured.out
        return
    assert code == 2
    assert_named(captured.err, case, bad)


@pytest.mark.parametrize("case", IMAGE_CASES, ids=case_id)
def test_per_subject_input_check(tmp_path, case):
    files, bad = bad_pair(tmp_path / "data", case)
    before = fingerprints(tmp_path)
    record = tmp_path / "checked.json"
    with pytest.raises(CohortError) as caught:
        check_pair_images_step(SUBJECT, {k: str(v) for k, v in files.items()}, record)
    assert_named(str(caught.value), case, bad)
    assert "\n" not in str(caught.value)  # one line, for the job log and the status table
    assert not record.exists()
    assert fingerprints(tmp_path) == before


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    from mschange.detection.modelfile import save_detector
    from mschange.detection.network import ChangeDetector, DetectorArchitecture

    return save_detector(
        ChangeDetector(DetectorArchitecture(channels=(8, 16, 32))),
        tmp_path / "model" / "m.pt",
        training={},
        metadata={"preprocessing": {}},
    )


@pytest.mark.parametrize("case", SCAN_CASES, ids=case_id)
def test_predict(tmp_path, capsys, tiny_model, case):
    files, bad = bad_pair(tmp_path / "data", case)
    out = tmp_path / "out"
    before = fingerprints(tmp_path)
    code = cli.main(
        [
            "predict",
            "--baseline",
            str(files["baseline"]),
            "--followup",
            str(files["followup"]),
            "--model",
            str(tiny_model),
            "--out",
            str(out),
        ]
    )
    assert code == 2
    # The subject is named after the follow-up's file, so only the file is asserted.
    assert_named(capsys.readouterr().err, case, bad, subject=None)
    assert not out.exists()
    assert fingerprints(tmp_path) == before


# ------------------------------------------------------------------- sheet problems


def extra_fields(folder: Path, files: dict[str, Path]) -> Path:
    sheet = write_sheet(folder, files)
    lines = sheet.read_text().splitlines()
    lines.append("\t".join(["p2", "b.nii.gz", "f.nii.gz", "test", "yes", "", "x"]))
    sheet.write_text("\n".join(lines) + "\n")
    return sheet


def sheet_is_a_folder(folder: Path, files: dict[str, Path]) -> Path:
    sheet = folder / "cohort.tsv"
    sheet.mkdir()
    return sheet


def subjects_differing_in_case(folder: Path, files: dict[str, Path]) -> Path:
    other = {
        "baseline": save(folder / "data" / "b2.nii.gz", noise(5)),
        "followup": save(folder / "data" / "f2.nii.gz", noise(6)),
        "label": files["label"],
    }
    sheet = folder / "cohort.tsv"
    rows = [
        {
            "subject": subject,
            "baseline": str(pair["baseline"]),
            "followup": str(pair["followup"]),
            "split": "test",
            "change": "yes",
            "label": str(pair["label"]),
        }
        for subject, pair in (("P01", files), ("p01", other))
    ]
    pd.DataFrame(rows).to_csv(sheet, sep="\t", index=False)
    return sheet


SHEET_CASES = {
    "row with extra fields": (extra_fields, ("line 3 has 7 fields, the header 6",)),
    "sheet is a folder": (sheet_is_a_folder, ("is a folder, not a file",)),
    "subjects P01 and p01": (
        subjects_differing_in_case,
        ("'p01': differs from subject 'P01' only in case", "lines 2 and 3"),
    ),
}


@pytest.mark.parametrize("name", SHEET_CASES)
def test_check_cohort_sheet_problems(tmp_path, capsys, name):
    write, words = SHEET_CASES[name]
    sheet = write(tmp_path, good_files(tmp_path / "data"))
    before = fingerprints(tmp_path)
    assert cli.main(["check-cohort", str(sheet)]) == 2
    error = capsys.readouterr().err
    assert "cohort.tsv" in error
    for phrase in words:
        assert phrase in error, error
    assert fingerprints(tmp_path) == before


def test_a_shorter_row_is_named_with_its_problem(tmp_path, capsys):
    files = good_files(tmp_path / "data")
    sheet = write_sheet(tmp_path, files)
    # The split left out: "yes" lands under split.
    sheet.write_text(sheet.read_text() + f"p2\t{files['baseline']}\t{files['followup']}\tyes\n")
    assert cli.main(["check-cohort", str(sheet)]) == 2
    error = capsys.readouterr().err
    assert "subject 'p2'" in error and "line 3" in error
    assert "line 3 has 4 fields, the header 6" in error


# ------------------------------------------------------------------ what only warns


def identical_copies(folder: Path) -> dict[str, Path]:
    files = good_files(folder)
    files["baseline"].write_bytes(files["followup"].read_bytes())
    return files


def test_identical_voxels_warn_but_pass(tmp_path, capsys):
    files = identical_copies(tmp_path / "data")
    sheet = write_sheet(tmp_path, files)
    assert cli.main(["check-cohort", str(sheet)]) == 0
    captured = capsys.readouterr()
    assert "mschange: warning: subject 'p1'" in captured.err
    assert "hold identical voxels" in captured.err and "baseline.nii.gz" in captured.err
    assert "1 warning(s)" in captured.out
    record = check_pair_images_step(
        SUBJECT, {k: str(v) for k, v in files.items()}, tmp_path / "checked.json"
    )
    assert len(record["warnings"]) == 1 and "identical voxels" in record["warnings"][0]
    # Without reading voxels nothing can be compared: no warning.
    assert cli.main(["check-cohort", "--headers-only", str(sheet)]) == 0
    assert "warning" not in capsys.readouterr().err


# ------------------------------------------------------------------ headers only


def test_headers_only_decompresses_no_voxels(tmp_path, capsys, monkeypatch):
    """A .nii.gz whose data part is cut off passes a header-only check (which therefore
    cannot have read the data) and fails a full one; no voxel is ever read."""
    files = good_files(tmp_path / "data")
    whole = save(tmp_path / "whole.nii", noise(7, (64, 64, 40))).read_bytes()
    cut = gzip.compress(whole)[: len(gzip.compress(whole)) // 2]
    files["followup"].write_bytes(cut)
    files["label"] = save(files["label"], np.zeros((64, 64, 40)))
    sheet = write_sheet(tmp_path, files)
    from nibabel.arrayproxy import ArrayProxy

    def no_voxels(*args, **kwargs):
        raise AssertionError("voxel data read with --headers-only")

    with monkeypatch.context() as patch:
        patch.setattr(ArrayProxy, "_get_scaled", no_voxels)
        patch.setattr("mschange.io._check_gzip_complete", no_voxels)
        assert cli.main(["check-cohort", "--headers-only", str(sheet)]) == 0, (
            capsys.readouterr().err
        )
    assert cli.main(["check-cohort", str(sheet)]) == 2
    assert "followup.nii.gz': the gzip stream is truncated" in capsys.readouterr().err


# ------------------------------------------------------------------ Snakemake dry runs

DRY_RUN_CASES = [
    case
    for case in IMAGE_CASES
    if case.name in ("all-zero scan", "zero pixdim", "label value -1", "label on a shifted affine")
]


def dry_run(folder: Path, rows: list[dict[str, str]], **cohort: str):
    sheet = folder / "cohort.tsv"
    pd.DataFrame(rows).to_csv(sheet, sep="\t", index=False)
    config = write_config(
        folder / "config.yaml", cohort={"source": "sheet", "sheet": str(sheet), **cohort}
    )
    return snakemake(folder, "-n", configfile=config)


def row(subject: str, files: dict[str, Path]) -> dict[str, str]:
    return {
        "subject": subject,
        "baseline": str(files["baseline"]),
        "followup": str(files["followup"]),
        "split": "test",
        "change": "yes",
        "label": str(files["label"]),
    }


@pytest.mark.slow
def test_dry_run_names_every_bad_subject_before_any_job(tmp_path):
    """Several bad subjects in one sheet: the dry run stops at parse, each named on its
    own line with its file and problem (cohort.check_inputs: before_run)."""
    rows, bad_files = [], {}
    for number, case in enumerate(DRY_RUN_CASES, start=1):
        files, bad = bad_pair(tmp_path / f"s{number}", case)
        bad_files[f"s{number}"] = (case, bad)
        rows.append(row(f"s{number}", files))
    before = fingerprints(tmp_path)
    result = dry_run(tmp_path, rows)
    output = result.stdout + result.stderr  # a dry run's error goes to stdout
    assert result.returncode != 0, output
    for subject, (case, bad) in bad_files.items():
        line = next((line for line in output.splitlines() if f"subject '{subject}'" in line), "")
        assert bad.name in line, output
        for words in case.words:
            assert words in line, output
    assert not (tmp_path / "results" / "preproc").exists()
    assert {k: v for k, v in fingerprints(tmp_path).items() if k in before} == before


@pytest.mark.slow
def test_dry_run_refuses_a_pair_of_one_file_even_when_subjects_are_checked_by_jobs(tmp_path):
    case = next(case for case in IMAGE_CASES if case.role == "pair")
    files, _ = bad_pair(tmp_path / "data", case)
    result = dry_run(tmp_path, [row("s1", files)], check_inputs="per_subject")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "subject 's1'" in output
    assert "baseline and follow-up are the same file" in output


@pytest.mark.slow
def test_dry_run_warns_of_identical_scans_and_of_no_training_pairs(tmp_path):
    files = identical_copies(tmp_path / "data")
    sheet = write_sheet(tmp_path, files)
    config = write_config(tmp_path / "config.yaml", cohort={"source": "sheet", "sheet": str(sheet)})
    result = snakemake(tmp_path, "-n", configfile=config)
    assert result.returncode == 0, result.stderr
    assert "mschange: warning: subject 'p1'" in result.stderr
    assert "hold identical voxels" in result.stderr
    assert "no no-change training pairs" in result.stderr
    assert "detector.pretrained" in result.stderr
    assert "train_detector" not in result.stdout
