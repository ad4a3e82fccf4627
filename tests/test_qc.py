"""QC numbers, flags and the cohort QC table."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mschange.qc import brain_volume_ml, checkerboard, qc_table, registration_correlation
from mschange.qc_report import write_cohort_qc_table


def test_brain_volume_uses_voxel_size():
    mask = np.zeros((10, 10, 10), bool)
    mask[:5, :4, :2] = True  # 40 voxels
    assert brain_volume_ml(mask, np.diag([2.0, 2.0, 2.5, 1.0])) == pytest.approx(0.4)


def test_correlation_drops_with_misalignment():
    rng = np.random.default_rng(0)
    image = rng.random((20, 20, 20))
    mask = np.ones(image.shape, bool)
    assert registration_correlation(image, 2.0 * image + 1.0, mask) == pytest.approx(1.0)
    assert registration_correlation(image, np.roll(image, 3, axis=0), mask) < 0.2


def test_checkerboard_alternates_tiles():
    board = checkerboard(np.zeros((8, 8)), np.ones((8, 8)), tile=4)
    assert board[0, 0] == 0 and board[0, 4] == 1 and board[4, 0] == 1 and board[4, 4] == 0


def test_qc_table_flags_each_threshold():
    rows = [
        {"subject": "ok", "brain_volume_ml_baseline": 1200, "brain_volume_ml_followup": 1210,
         "registration_correlation": 0.95},
        {"subject": "misregistered", "brain_volume_ml_baseline": 1200,
         "brain_volume_ml_followup": 1190, "registration_correlation": 0.55},
        {"subject": "skull", "brain_volume_ml_baseline": 2600,
         "brain_volume_ml_followup": 1200, "registration_correlation": 0.9},
    ]
    table = qc_table(rows, min_correlation=0.8, min_brain_ml=800, max_brain_ml=2100)
    assert list(table["flagged"]) == [False, True, True]
    assert "registration correlation 0.550 < 0.8" in table.loc[1, "flag_reason"]
    assert "baseline brain volume 2600 ml" in table.loc[2, "flag_reason"]


def test_cohort_table_adds_timings_from_benchmarks(tmp_path):
    (tmp_path / "qc.json").write_text(json.dumps(
        {"subject": "p1", "brain_volume_ml_baseline": 1000.0,
         "brain_volume_ml_followup": 1000.0, "registration_correlation": 0.9}))
    bench = tmp_path / "bench"
    for name, seconds in (("skullstrip_hdbet/sub-p1_tp-baseline.tsv", 20.0),
                          ("skullstrip_hdbet/sub-p1_tp-followup.tsv", 22.5),
                          ("register_baseline_to_followup/sub-p1.tsv", 30.0)):
        (bench / name).parent.mkdir(parents=True, exist_ok=True)
        (bench / name).write_text(f"s\th:m:s\n{seconds}\t0:00:20\n")
    output = tmp_path / "qc.tsv"
    write_cohort_qc_table([tmp_path / "qc.json"], output,
                          cohort=[{"subject": "p1", "split": "test", "change": "yes"}],
                          steps=["skullstrip_hdbet", "register_baseline_to_followup"],
                          benchmark_dir=bench, min_correlation=0.8, min_brain_ml=800,
                          max_brain_ml=2100)
    table = pd.read_csv(output, sep="\t")
    assert table.loc[0, "seconds_skullstrip_hdbet"] == pytest.approx(42.5)
    assert table.loc[0, "seconds_total"] == pytest.approx(72.5)
    assert table.loc[0, "split"] == "test"
    assert not table.loc[0, "flagged"]
