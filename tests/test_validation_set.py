"""The validation set's scoring: painted and no-change pairs, each method, the summary."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from mschange.evaluation.metrics import MetricSettings
from mschange.evaluation.validation import (
    NO_CHANGE,
    PAINTED,
    lesion_f1,
    validation_markdown,
    validation_pairs,
    validation_step,
    validation_summary,
)
from mschange.io import read_file_table, write_file_table

SHAPE = (32, 32, 32)


def _ball(centre: tuple[int, int, int], radius: float) -> np.ndarray:
    grid = np.indices(SHAPE)
    return sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2


def _save(data: np.ndarray, path: Path) -> str:
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4)), path)
    return str(path)


@pytest.fixture
def pair_table(tmp_path: Path) -> Path:
    """One no-change pair (noise only) and one painted pair with a new and a resolving
    lesion, as the workflow's pair table lists them."""
    rng = np.random.default_rng(3)
    brain = _ball((16, 16, 16), 14)
    mask = _save(brain.astype(np.uint8), tmp_path / "mask.nii.gz")
    tissue = np.where(brain, 0.5 + 0.01 * rng.standard_normal(SHAPE), 0.0).astype(np.float32)
    rescan = np.where(brain, tissue + 0.01 * rng.standard_normal(SHAPE), 0.0)
    new, resolving = _ball((10, 16, 16), 2.5), _ball((22, 16, 16), 2.5)
    followup, baseline = rescan.copy(), tissue.copy()
    followup[new] += 0.5
    baseline[resolving] += 0.5
    label = (new | resolving).astype(np.uint8)
    table = tmp_path / "pairs.tsv"
    write_file_table(
        {
            "pair": ["s1-nochange", "s1-sample000"],
            "subject": ["s1", "s1"],
            "baseline": [
                _save(tissue, tmp_path / "bl.nii.gz"),
                _save(baseline, tmp_path / "painted_bl.nii.gz"),
            ],
            "followup": [
                _save(rescan, tmp_path / "fu.nii.gz"),
                _save(followup, tmp_path / "painted_fu.nii.gz"),
            ],
            "baseline_mask": [mask, mask],
            "followup_mask": [mask, mask],
            "label": ["", _save(label, tmp_path / "label.nii.gz")],
        },
        table,
    )
    return table


def test_validation_pairs_read_from_the_table(pair_table: Path):
    pairs = validation_pairs(read_file_table(pair_table))
    assert [p.kind for p in pairs] == [NO_CHANGE, PAINTED]
    assert pairs[0].label is None and pairs[1].label.endswith("label.nii.gz")


def test_subtraction_on_the_validation_set_finds_both_directions(pair_table: Path, tmp_path: Path):
    scores = validation_step(
        validation_pairs(read_file_table(pair_table)),
        tmp_path / "scores.tsv",
        method="subtraction",
        threshold=3.0,
        blob_sizes=[20, 1000],
        settings=MetricSettings(),
        baseline_settings={"sigma_mm": 1.0, "erode_mm": 0.0},
    )
    assert len(scores) == 2 * 2 * 3  # pairs x blob sizes x directions
    written = pd.read_csv(tmp_path / "scores.tsv", sep="\t")
    assert list(written["pair"].unique()) == ["s1-nochange", "s1-sample000"]
    painted = written.loc[
        (written["kind"] == PAINTED) & (written["min_blob_voxels"] == 20)
    ].set_index("direction")
    assert painted.loc["all", "truth_lesions"] == 2
    assert painted.loc["brighter", "truth_lesions"] == 1
    assert painted.loc["darker", "truth_lesions"] == 1
    assert painted.loc["all", "to_ltpr"] == 1.0
    assert painted.loc["brighter", "to_ltpr"] == 1.0 and painted.loc["darker", "to_ltpr"] == 1.0
    # The balls hold 81 voxels (a few more after smoothing): blob size 1000 drops both.
    large = written.loc[
        (written["kind"] == PAINTED)
        & (written["min_blob_voxels"] == 1000)
        & (written["direction"] == "all")
    ].iloc[0]
    assert large["predicted_lesions"] == 0 and large["to_ltpr"] == 0.0
    nochange = written.loc[(written["kind"] == NO_CHANGE) & (written["direction"] == "all")]
    assert (nochange["truth_lesions"] == 0).all()


def test_validation_summary_means_painted_pairs_and_counts_false_positives():
    rows = []
    for pair, kind, ltpr, ppv, predicted in [
        ("a", PAINTED, 1.0, 0.5, 4),
        ("b", PAINTED, 0.5, 1.0, 2),
        ("c", NO_CHANGE, math.nan, 0.0, 3),
        ("d", NO_CHANGE, math.nan, math.nan, 0),
    ]:
        rows.append(
            {
                "pair": pair,
                "subject": pair,
                "kind": kind,
                "method": "m",
                "min_blob_voxels": 20,
                "threshold": 0.1,
                "direction": "all",
                "to_ltpr": ltpr,
                "to_ppv": ppv,
                "msseg_f1": 0.4,
                "msseg_dice": 0.3,
                "msseg_sensitivity": 0.6,
                "msseg_ppv": 0.3,
                "krueger_sensitivity": 0.7,
                "krueger_fp_count": predicted - 1,
                "predicted_lesions": predicted,
            }
        )
    summary = validation_summary(pd.DataFrame(rows), ["m"]).iloc[0]
    assert summary["to_ltpr"] == pytest.approx(0.75)
    assert summary["to_ppv"] == pytest.approx(0.75)
    assert summary["to_f1"] == pytest.approx((2 / 3 + 2 / 3) / 2)  # F1 per pair, then mean
    assert summary["predicted_lesions"] == pytest.approx(3.0)
    assert summary["krueger_fp_count"] == pytest.approx(2.0)  # painted pairs only
    assert summary["fp_per_nochange_pair"] == pytest.approx(1.5)
    assert summary["painted_pairs"] == 2 and summary["nochange_pairs"] == 2
    text = validation_markdown(validation_summary(pd.DataFrame(rows), ["m"]))
    assert text.splitlines()[2].startswith("| m | 20 | all | 0.750 | 0.750 |")


def test_lesion_f1_edge_cases():
    assert lesion_f1(0.0, 0.0) == 0.0
    assert lesion_f1(0.0, math.nan) == 0.0  # changes missed, nothing predicted
    assert math.isnan(lesion_f1(math.nan, 0.5))  # no true change: undefined
    assert lesion_f1(1.0, 0.5) == pytest.approx(2 / 3)
