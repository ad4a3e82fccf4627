"""The cohort status table (mschange.status) and the per-subject input check."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from mschange.cohort import CohortError, check_cohort_files_exist, check_pair_images_step
from mschange.evaluation.report import cohort_status_section
from mschange.logs import logging_to
from mschange.status import (
    STATUS_COLUMNS,
    RulePlan,
    StagePlan,
    cohort_status,
    last_step_event,
    status_from_request,
    status_summary,
    write_cohort_status,
)

PLAN = [
    StagePlan(
        "preprocessed",
        (
            RulePlan("rescan", ("rescan/{subject}.nii",), "logs/rescan/{subject}.log", "single"),
            RulePlan("resample", ("pre/{subject}_{tp}.nii",), "logs/resample/{subject}_{tp}.log"),
        ),
    ),
    StagePlan(
        "predicted",
        (
            RulePlan(
                "predict",
                ("pred/{model}/{subject}.nii", "pred/{model}/{subject}.tsv"),
                "logs/predict/{model}_{subject}.log",
                "test",
            ),
        ),
    ),
]
WILDCARDS = {"tp": ["baseline", "followup"], "model": ["a", "b"]}


def touch(root: Path, *paths: str) -> None:
    for path in paths:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text("x")


def run_step(
    root: Path, log: str, step: str, error: Exception | None = None, finish: bool = True
) -> None:
    """Write a log exactly as a workflow step does (mschange.logs.logging_to)."""
    if error is not None:
        with pytest.raises(type(error)), logging_to(root / log, step):
            raise error
    elif finish:
        with logging_to(root / log, step):
            pass
    else:  # killed after starting: the log has only the start
        path = root / log
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("2026-01-01 10:00:00,000 INFO mschange: predict: started\n")


def cohort(*rows: tuple[str, str, str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["subject", "split", "change"])


def test_each_state_with_its_stage_rule_and_log(tmp_path):
    # done: both time points preprocessed, both models predicted.
    touch(
        tmp_path,
        "pre/done_baseline.nii",
        "pre/done_followup.nii",
        *(f"pred/{m}/done.{ext}" for m in "ab" for ext in ("nii", "tsv")),
    )
    # broke: model b's prediction failed after model a's finished.
    touch(
        tmp_path,
        "pre/broke_baseline.nii",
        "pre/broke_followup.nii",
        "pred/a/broke.nii",
        "pred/a/broke.tsv",
    )
    run_step(tmp_path, "logs/predict/b_broke.log", "predict", RuntimeError("CUDA out of memory"))
    # killed: the follow-up's resampling started and never ended (a walltime kill).
    touch(tmp_path, "pre/killed_baseline.nii")
    run_step(tmp_path, "logs/resample/killed_followup.log", "resample", finish=False)
    # waiting: preprocessed, its prediction not run yet (no log); one output of two.
    touch(tmp_path, "pre/waiting_baseline.nii", "pre/waiting_followup.nii", "pred/a/waiting.nii")
    # single: needs its rescan, which is missing although resampling is done.
    touch(tmp_path, "pre/single_baseline.nii", "pre/single_followup.nii")
    pairs = cohort(
        ("done", "test", "yes"),
        ("broke", "test", "yes"),
        ("killed", "test", "yes"),
        ("waiting", "test", "yes"),
        ("single", "train", "no"),
    )
    roles = {
        "done": ["test"],
        "broke": ["test"],
        "killed": ["test"],
        "waiting": ["test"],
        "single": ["single"],
    }
    table = cohort_status(pairs, roles, PLAN, WILDCARDS, tmp_path).set_index("subject")
    assert list(table.columns) == STATUS_COLUMNS[1:]
    assert table.loc["done", ["state", "stage_reached", "next_stage"]].tolist() == [
        "complete",
        "predicted",
        "",
    ]
    broke = table.loc["broke"]
    assert [broke.state, broke.stage_reached, broke.next_stage, broke.failed_rule] == [
        "failed",
        "preprocessed",
        "predicted",
        "predict",
    ]
    assert broke.log == "logs/predict/b_broke.log"
    assert broke.error == "CUDA out of memory"
    killed = table.loc["killed"]
    assert [
        killed.state,
        killed.stage_reached,
        killed.next_stage,
        killed.failed_rule,
        killed.log,
    ] == ["interrupted", "", "preprocessed", "resample", "logs/resample/killed_followup.log"]
    waiting = table.loc["waiting"]
    assert [waiting.state, waiting.stage_reached, waiting.next_stage, waiting.log] == [
        "pending",
        "preprocessed",
        "predicted",
        "",
    ]
    # The rescan rule applies to single scans only, and the predictions to test pairs only.
    single = table.loc["single"]
    assert [single.state, single.next_stage] == ["pending", "preprocessed"]
    touch(tmp_path, "rescan/single.nii")
    table = cohort_status(pairs, roles, PLAN, WILDCARDS, tmp_path).set_index("subject")
    assert table.loc["single", ["state", "stage_reached"]].tolist() == ["complete", "preprocessed"]


def test_a_rerun_that_succeeds_clears_the_failure(tmp_path):
    touch(tmp_path, "pre/p_baseline.nii")
    run_step(tmp_path, "logs/resample/p_followup.log", "resample", ValueError("bad header"))
    pairs = cohort(("p", "train", "no"))
    first = cohort_status(pairs, {"p": []}, PLAN, WILDCARDS, tmp_path)
    assert first.loc[0, "state"] == "failed" and first.loc[0, "error"] == "bad header"
    # The log is appended to: the last event decides.
    run_step(tmp_path, "logs/resample/p_followup.log", "resample")
    assert last_step_event(tmp_path / "logs/resample/p_followup.log") == ("finished", "")
    touch(tmp_path, "pre/p_followup.nii")
    again = cohort_status(pairs, {"p": []}, PLAN, WILDCARDS, tmp_path)
    assert again.loc[0, "state"] == "complete"


def test_the_workflow_request_form_and_the_written_table(tmp_path):
    touch(tmp_path, "pre/p1_baseline.nii", "pre/p1_followup.nii")
    run_step(tmp_path, "logs/resample/p2_baseline.log", "resample", OSError("disk full"))
    request = {
        "plan": [
            {
                "stage": s.stage,
                "rules": [
                    {"rule": r.rule, "outputs": list(r.outputs), "log": r.log, "role": r.role}
                    for r in s.rules
                ],
            }
            for s in PLAN
        ],
        "pairs": [
            {"subject": "p1", "split": "train", "change": "no", "roles": []},
            {"subject": "p2", "split": "train", "change": "no", "roles": []},
        ],
        "wildcards": WILDCARDS,
    }
    table = status_from_request(request, tmp_path)
    assert table["state"].tolist() == ["complete", "failed"]
    path = write_cohort_status(table, tmp_path / "status" / "cohort_status.tsv")
    back = pd.read_csv(path, sep="\t", keep_default_na=False)
    assert back.loc[1, "log"] == "logs/resample/p2_baseline.log"
    assert back.loc[1, "error"] == "disk full"
    summary = status_summary(table, path)
    assert summary.splitlines()[0].startswith("Cohort status (2 pairs): 1 complete, 1 failed")
    assert (
        "p2: failed in resample (preprocessed); log: logs/resample/p2_baseline.log; "
        "error: disk full" in summary
    )
    section = cohort_status_section(table)
    assert "2 pairs: 1 complete, 1 failed" in section.text
    assert section.tables[0].frame["subject"].tolist() == ["p1", "p2"]
    # A large cohort lists only the pairs that are not complete.
    section = cohort_status_section(table, max_rows=1)
    assert section.tables[0].frame["subject"].tolist() == ["p2"]


def image(path: Path, data: np.ndarray) -> str:
    # 5 mm voxels: a brain-sized field of view (the input checks refuse less than 80 mm).
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.diag([5.0, 5.0, 5.0, 1.0])), path)
    return str(path)


def test_per_subject_input_check_records_or_names_the_problem(tmp_path):
    rng = np.random.default_rng(0)
    good_bl = image(tmp_path / "good_bl.nii.gz", rng.random((16, 17, 18)))
    good = image(tmp_path / "good.nii.gz", rng.random((16, 17, 18)))
    nan = rng.random((16, 17, 18))
    nan[2, 3, 4] = np.nan
    bad = image(tmp_path / "nan.nii.gz", nan)
    record = check_pair_images_step(
        "p1", {"baseline": good_bl, "followup": good}, tmp_path / "p1.json"
    )
    assert record["files"]["followup"]["shape"] == [16, 17, 18]
    assert record["warnings"] == []
    assert json.loads((tmp_path / "p1.json").read_text())["files"]["baseline"]["path"] == good_bl
    with pytest.raises(CohortError) as error:
        check_pair_images_step("p2", {"baseline": bad, "followup": good}, tmp_path / "p2.json")
    assert str(error.value) == (
        f"subject 'p2', file '{bad}': 1 voxels are NaN or infinite (baseline scan)"
    )
    assert not (tmp_path / "p2.json").exists()
    # Without reading voxels, the same file passes.
    check_pair_images_step(
        "p2", {"baseline": bad, "followup": good}, tmp_path / "p2.json", check_voxels=False
    )


def test_existence_check_lists_every_missing_file(tmp_path):
    good = image(tmp_path / "good.nii.gz", np.ones((4, 4, 4)))
    rows = pd.DataFrame(
        [
            {"subject": "p1", "baseline": good, "followup": good, "label": ""},
            {
                "subject": "p2",
                "baseline": str(tmp_path / "gone.nii.gz"),
                "followup": good,
                "label": str(tmp_path / "nolabel.nii.gz"),
            },
        ]
    )
    with pytest.raises(CohortError) as error:
        check_cohort_files_exist(rows)
    assert error.value.problems == [
        f"subject 'p2', file '{tmp_path / 'gone.nii.gz'}': the file does not exist (baseline scan)",
        f"subject 'p2', file '{tmp_path / 'nolabel.nii.gz'}': the file does not exist (label scan)",
    ]
    check_cohort_files_exist(rows.iloc[:1])
