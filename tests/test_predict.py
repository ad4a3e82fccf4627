"""`mschange predict` as safe as the workflow: everything checked before anything is
written, and an output folder that only ever holds one run's complete results."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from mschange import cli
from mschange.detection.modelfile import ModelFileError, load_detector, save_detector
from mschange.detection.network import ChangeDetector, DetectorArchitecture
from mschange.detection.pair import (
    PARTIAL_TAG,
    STAGES,
    check_subject_id,
    predict_pair,
    publish,
    remove_stale_partial_folders,
    subject_from_path,
)
from mschange.io import InputError
from mschange.subject_id import SUBJECT_ID_PATTERN

from .conftest import default_preprocessing, ellipsoid_phantom

TINY = DetectorArchitecture(channels=(8, 16, 32))


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    """Two brain-sized phantom scans that differ (2 mm voxels, 176 x 200 x 160 mm)."""
    spacing = (2.0, 2.0, 2.0)
    image, _ = ellipsoid_phantom((88, 100, 80), spacing, radii_mm=(60, 75, 55))
    affine = np.diag([*spacing, 1.0])
    noise = np.random.default_rng(0).normal(0, 2, image.shape).astype(np.float32)
    paths = (tmp_path / "bl.nii.gz", tmp_path / "fu.nii.gz")
    nib.save(nib.Nifti1Image(image, affine), paths[0])
    nib.save(nib.Nifti1Image(image + noise, affine), paths[1])
    return paths


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return save_detector(
        ChangeDetector(TINY),
        tmp_path / "model.pt",
        training={},
        metadata={"preprocessing": default_preprocessing(), "seed": 1},
    )


def run_predict(pair, model, out, *extra):
    return cli.main(
        [
            "predict",
            "--baseline",
            str(pair[0]),
            "--followup",
            str(pair[1]),
            "--model",
            str(model),
            "--out",
            str(out),
            *map(str, extra),
        ]
    )


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# ------------------------------------------------------------------ model files


def _payload(model: Path) -> dict:
    return torch.load(model, weights_only=True)


def _without(key):
    def write(model: Path, bad: Path) -> None:
        payload = _payload(model)
        del payload[key]
        torch.save(payload, bad)

    return write


def _edited(edit):
    def write(model: Path, bad: Path) -> None:
        payload = _payload(model)
        edit(payload)
        torch.save(payload, bad)

    return write


class Executable:
    """Loading a pickle of this would call os.system: must never happen."""

    def __reduce__(self):
        return (os.system, ("touch /tmp/mschange-pwned",))


BAD_MODEL_FILES = {
    "no architecture": (_without("architecture"), "'architecture' is missing"),
    "no preprocessing": (_without("preprocessing"), "'preprocessing' is missing"),
    "no weights": (_without("state_dict"), "'state_dict' is missing"),
    "no resolution": (
        _edited(lambda p: p["preprocessing"].pop("resolution_mm")),
        "'resolution_mm' is a required property",
    ),
    "no n4": (_edited(lambda p: p["preprocessing"].pop("n4")), "'n4' is a required property"),
    "unknown architecture key": (
        _edited(lambda p: p["architecture"].update(heads=3)),
        "unknown key(s) ['heads']",
    ),
    "bad architecture value": (
        _edited(lambda p: p["architecture"].update(fusion="sum")),
        "fusion must be one of",
    ),
    "weights of another network": (
        _edited(lambda p: p["architecture"].update(channels=[8, 16, 32, 64])),
        "the weights do not fit the architecture",
    ),
    "stored kappa out of range": (
        _edited(lambda p: p.update(inference={"kappa": 5.0})),
        "inference.kappa: 5.0 is greater than the maximum of 1",
    ),
    "another kind": (_edited(lambda p: p.update(kind="something")), "not an mschange"),
    "empty": (lambda model, bad: bad.write_bytes(b""), "the file is empty"),
    "text": (lambda model, bad: bad.write_text("weights: none\n"), "not a PyTorch model file"),
    "random bytes": (
        lambda model, bad: bad.write_bytes(np.random.default_rng(1).bytes(5000)),
        "not a PyTorch model file",
    ),
    "cut short": (
        lambda model, bad: bad.write_bytes(model.read_bytes()[:20000]),
        "not a PyTorch model file",
    ),
    "damaged": (
        lambda model, bad: bad.write_bytes(
            model.read_bytes()[:100] + bytes(200) + model.read_bytes()[300:]
        ),
        "file is damaged",
    ),
    "a folder": (lambda model, bad: bad.mkdir(), "a folder, not a model file"),
    "code in the pickle": (
        lambda model, bad: torch.save({"kind": Executable()}, bad),
        "refuses to load it",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_MODEL_FILES))
def test_a_bad_model_file_is_named_before_anything_is_written(tmp_path, capsys, pair, model, case):
    write, expected = BAD_MODEL_FILES[case]
    bad = tmp_path / "bad.pt"
    write(model, bad)
    before = files_under(tmp_path)
    out = tmp_path / "out"
    assert run_predict(pair, bad, out) == 2
    error = capsys.readouterr().err
    assert expected in error and str(bad) in error
    assert "weights_only" not in error and "Traceback" not in error
    assert files_under(tmp_path) == before  # nothing written, not even a partial folder
    assert not Path("/tmp/mschange-pwned").exists()


def test_every_problem_of_a_model_file_is_listed_at_once(tmp_path, model):
    payload = _payload(model)
    del payload["preprocessing"]["resolution_mm"]
    payload["architecture"]["heads"] = 3
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(ModelFileError) as caught:
        load_detector(tmp_path / "bad.pt")
    assert len(caught.value.problems) == 2


def test_a_model_file_may_lack_only_speed_settings(tmp_path, model):
    """Models shipped before `sampling_points` existed still load; nothing else may go."""
    payload = _payload(model)
    del payload["preprocessing"]["registration"]["sampling_points"]
    del payload["preprocessing"]["registration"]["threads"]
    torch.save(payload, tmp_path / "older.pt")
    _, metadata = load_detector(tmp_path / "older.pt")
    assert metadata["preprocessing"]["registration"] == {"transform": "Rigid"}
    del payload["preprocessing"]["registration"]["transform"]
    torch.save(payload, tmp_path / "broken.pt")
    with pytest.raises(ModelFileError, match="'transform' is a required property"):
        load_detector(tmp_path / "broken.pt")


# ------------------------------------------------------------------ options


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--kappa", "-5", "less than the minimum of 0"),
        ("--kappa", "5", "greater than the maximum of 1"),
        ("--kappa", "nan", "not a finite number"),
        ("--kappa", "inf", "not a finite number"),
        ("--kappa", "half", "not a number"),
        ("--min-blob-voxels", "-3", "less than the minimum of 1"),
        ("--min-blob-voxels", "2.5", "not a whole number"),
        ("--threads", "0", "at least 1"),
        ("--threads", "-2", "at least 1"),
    ],
)
def test_options_follow_the_config_schemas_rules(
    tmp_path, capsys, pair, model, option, value, expected
):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as caught:
        run_predict(pair, model, out, option, value)
    assert caught.value.code == 2
    error = capsys.readouterr().err
    assert f"argument {option}" in error and expected in error
    assert not out.exists()


def test_the_api_checks_settings_too_before_writing(tmp_path, pair, model):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="'kappa': 5 is greater than the maximum"):
        predict_pair(*pair, model, out, overrides={"kappa": 5})
    with pytest.raises(ValueError, match="threads must be at least 1"):
        predict_pair(*pair, model, out, threads=0)
    assert not out.exists()


def test_help_takes_its_defaults_from_the_schema(capsys):
    from mschange.config import schema_default

    with pytest.raises(SystemExit):
        cli.main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"else {schema_default('detector', 'inference', 'kappa')})" in text
    assert f"else {schema_default('detector', 'inference', 'min_blob_voxels')})" in text


# ------------------------------------------------------------------ subject ids


@pytest.mark.parametrize(
    "subject", ["zz/../../../escaped2", "../x", "..", "a b", "p01_", "é1", "-p01", "p01--a", ""]
)
def test_a_subject_id_that_is_not_a_plain_name_is_refused(tmp_path, capsys, pair, model, subject):
    out = tmp_path / "work" / "out"
    before = files_under(tmp_path)
    assert run_predict(pair, model, out, f"--subject={subject}") == 2
    assert "is not a valid subject id" in capsys.readouterr().err
    assert files_under(tmp_path) == before


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("/x/sub-p01_ses-2_FLAIR.nii.gz", "p01"),
        ("p7 follow_up.nii", "p7-follow-up"),
        ("b l é 患者.nii.gz", "b-l"),
        ("患者.nii.gz", "pair"),
        ("..nii.gz", "pair"),
        ("--a__b--.nii", "a-b"),
    ],
)
def test_ids_from_file_names_follow_the_cohort_sheets_rule(name, expected):
    subject = subject_from_path(name)
    assert subject == expected
    assert re.fullmatch(SUBJECT_ID_PATTERN, subject)
    assert check_subject_id(subject) == subject


def test_the_subject_rule_is_the_cohort_sheets(tmp_path):
    """One rule: a sheet refuses exactly the ids that predict refuses."""
    import pandas as pd

    from mschange.cohort import CohortError, check_cohort_table

    for subject, valid in (("p01", True), ("p-01", True), ("p_01", False), ("../x", False)):
        row = {
            "subject": subject,
            "baseline": "a.nii.gz",
            "followup": "b.nii.gz",
            "split": "test",
            "change": "yes",
        }
        try:
            check_cohort_table(pd.DataFrame([row]), base_dir=tmp_path, source="sheet")
            sheet_accepts = True
        except CohortError:
            sheet_accepts = False
        try:
            check_subject_id(subject)
            predict_accepts = True
        except InputError:
            predict_accepts = False
        assert sheet_accepts == predict_accepts == valid, subject


# ------------------------------------------------------------------ the output folder


def test_out_must_be_a_folder_predict_can_replace(tmp_path, capsys, pair, model):
    file = tmp_path / "out.txt"
    file.write_text("mine")
    assert run_predict(pair, model, file) == 2
    assert "--out is a file" in capsys.readouterr().err
    foreign = tmp_path / "data"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    (foreign / "sub-01_desc-changes_lesions.tsv").write_text("old")
    assert run_predict(pair, model, foreign) == 2
    error = capsys.readouterr().err
    assert "did not write (notes.txt)" in error and "new or empty folder" in error
    assert files_under(foreign) == {"notes.txt", "sub-01_desc-changes_lesions.tsv"}
    assert file.read_text() == "mine"


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_only_folders_of_killed_runs_on_this_machine_are_removed(tmp_path):
    out = tmp_path / "out"
    host = socket.gethostname()
    killed = tmp_path / f".out.{PARTIAL_TAG}-{host}-{_dead_pid()}"
    running = tmp_path / f".out.{PARTIAL_TAG}-{host}-{os.getpid()}"
    elsewhere = tmp_path / f".out.{PARTIAL_TAG}-another-node-{_dead_pid()}"
    other_out = tmp_path / f".out2.{PARTIAL_TAG}-{host}-{_dead_pid()}"
    for folder in (killed, running, elsewhere, other_out):
        (folder / "preproc").mkdir(parents=True)
    assert remove_stale_partial_folders(out) == [killed]
    assert not killed.exists()
    assert running.exists() and elsewhere.exists() and other_out.exists()


def test_publishing_replaces_the_whole_folder(tmp_path):
    out = tmp_path / "out"
    (out / "preproc").mkdir(parents=True)
    (out / "sub-a_desc-changes_lesions.tsv").write_text("old run")
    (out / "preproc" / "sub-a_tp-baseline_desc-brain_mask.nii.gz").write_text("old run")
    partial = tmp_path / ".out.partial"
    (partial / "preproc").mkdir(parents=True)
    (partial / "sub-b_desc-changes_lesions.tsv").write_text("new run")
    publish(partial, out)
    assert files_under(out) == {"preproc", "sub-b_desc-changes_lesions.tsv"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ------------------------------------------------------------------ interrupted runs


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file's content (voxels for NIfTI, bytes otherwise; the JSON record holds
    timings, so only its counts)."""
    import json

    content = {}
    for path in sorted(folder.rglob("*")):
        if path.is_dir():
            continue
        name = str(path.relative_to(folder))
        if name.endswith(".nii.gz"):
            data = np.asarray(nib.load(path).dataobj)
            content[name] = hashlib.sha256(data.tobytes()).hexdigest()
        elif name.endswith("_prediction.json"):
            record = json.loads(path.read_text())
            content[name] = str(
                [record["changes"], record["changed_volume_mm3"], record["raw_inputs"]]
            )
        elif name.endswith(".png"):
            content[name] = "figure"
        else:
            content[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return content


def _predict_command(paths, model, out) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mschange.cli",
        "predict",
        "--baseline",
        str(paths.baseline),
        "--followup",
        str(paths.followup),
        "--model",
        str(model),
        "--out",
        str(out),
        "--threads",
        "1",
        "--min-blob-voxels",
        "3",
    ]


def _interrupt_at(command: list[str], stage: int, signum: int) -> tuple[int, str]:
    """Run ``command``, send ``signum`` as soon as stage ``stage`` starts; the exit code
    and stderr."""
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    lines = []
    for line in process.stderr:
        lines.append(line)
        if line.startswith(f"[{stage}/{STAGES}]") and line.rstrip().endswith("..."):
            process.send_signal(signum)
            break
    lines += process.stderr.readlines()
    return process.wait(timeout=300), "".join(lines)


@pytest.mark.slow
def test_a_run_killed_at_any_stage_leaves_the_folder_as_it_was(tmp_path):
    """The fault test: a folder holding pair A's results; predicting pair B into it is
    killed (SIGKILL) or stopped (SIGTERM) at each of its stages, each time leaving
    A's results exactly; then an unbroken run of B gives exactly what B gives in a fresh
    folder, and nothing of A or of the killed runs is left."""
    from mschange.demo import make_demo_subject

    first = make_demo_subject(
        "demo01", tmp_path / "demo", has_change=False, seed=3, voxel_size_mm=2.0
    )
    second = make_demo_subject(
        "demo02", tmp_path / "demo", has_change=True, seed=4, voxel_size_mm=2.0
    )
    model = save_detector(
        ChangeDetector(TINY),
        tmp_path / "m.pt",
        training={},
        metadata={"preprocessing": default_preprocessing(2.0), "seed": 1},
    )
    reference, out = tmp_path / "reference", tmp_path / "results"
    subprocess.run(_predict_command(second, model, reference), check=True, capture_output=True)
    subprocess.run(_predict_command(first, model, out), check=True, capture_output=True)
    before = _snapshot(out)
    assert any(Path(name).name.startswith("sub-demo01_") for name in before)

    for stage in range(1, STAGES + 1):
        # Alternating, the last stage killed outright: the final run finds its leftovers.
        signum = signal.SIGKILL if (STAGES - stage) % 2 == 0 else signal.SIGTERM
        code, stderr = _interrupt_at(_predict_command(second, model, out), stage, signum)
        assert _snapshot(out) == before, f"stage {stage}"
        leftovers = [p.name for p in tmp_path.iterdir() if PARTIAL_TAG in p.name]
        if signum == signal.SIGTERM:
            assert code == 128 + signal.SIGTERM, stderr
            assert f"stopped by SIGTERM during [{stage}/{STAGES}]" in stderr
            assert f"{out} was not changed" in stderr
            assert "Traceback" not in stderr
            assert not leftovers
        else:
            assert code == -signal.SIGKILL
            assert len(leftovers) == 1, "the next run removes what a killed run left"

    finished = subprocess.run(
        _predict_command(second, model, out), capture_output=True, text=True, check=True
    )
    assert "left by a run that was killed" in finished.stderr
    assert _snapshot(out) == _snapshot(reference)
    assert not any(PARTIAL_TAG in p.name or "replaced" in p.name for p in tmp_path.iterdir())


def test_the_record_names_the_final_folder_not_the_partial_one():
    from mschange.detection.pair import _moved_paths

    record = {
        "inputs": {"baseline": "/w/.out.x/preproc/a.nii.gz", "followup": "/w/.out.xy"},
        "list": ["/w/.out.x"],
    }
    moved = _moved_paths(record, "/w/.out.x", "/w/out")
    assert moved == {
        "inputs": {"baseline": "/w/out/preproc/a.nii.gz", "followup": "/w/.out.xy"},
        "list": ["/w/out"],
    }


def test_a_pair_of_identical_scans_is_warned_of(tmp_path, capsys, pair):
    copy = tmp_path / "copy.nii.gz"
    copy.write_bytes(pair[0].read_bytes())
    (tmp_path / "empty.pt").write_bytes(b"")
    # The model is checked after the inputs: the run stops there, having warned.
    assert run_predict((pair[0], copy), tmp_path / "empty.pt", tmp_path / "out") == 2
    error = capsys.readouterr().err
    assert "mschange: warning: subject 'copy'" in error and "identical voxels" in error
    assert "the file is empty" in error
