"""QC numbers, flags and the cohort QC table."""

from __future__ import annotations

import json
import logging

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import scipy.ndimage as ndi

from mschange.config import schema_default
from mschange.qc import (
    brain_volume_ml,
    checkerboard,
    contrast_difference,
    qc_table,
    registration_correlation,
    registration_similarity,
)
from mschange.qc_report import write_cohort_qc_table

# The shipped thresholds (config schema), measured on real pairs (docs/qc.md).
MIN_SIMILARITY = schema_default("qc", "min_registration_similarity")
MAX_CONTRAST = schema_default("qc", "max_contrast_difference")
THRESHOLDS = {
    "min_similarity": MIN_SIMILARITY,
    "max_contrast": MAX_CONTRAST,
    "min_brain_ml": 800,
    "max_brain_ml": 2100,
}


@pytest.fixture(scope="module")
def phantom_pair():
    """Two "scans" of one textured brain, normalised to [0, 1] inside a ball, each with
    its own noise: a well registered pair with the same contrast."""
    shape = (40, 40, 40)
    mask = ((np.indices(shape) - 19.5) ** 2).sum(axis=0) < 17**2
    texture = ndi.gaussian_filter(np.random.default_rng(0).normal(size=shape), 2.0)
    low, high = np.percentile(texture[mask], [0, 99])

    def scan(seed):
        noise = 0.03 * np.random.default_rng(seed).normal(size=shape)
        return np.clip((texture - low) / (high - low) + noise, 0.0, 1.0)

    return scan(1), scan(2), mask


def qc_row(followup, baseline, mask, subject):
    return {
        "subject": subject,
        "brain_volume_ml_baseline": 1200.0,
        "brain_volume_ml_followup": 1200.0,
        "registration_correlation": registration_correlation(followup, baseline, mask),
        "registration_similarity": registration_similarity(followup, baseline, mask),
        "contrast_difference": contrast_difference(followup, baseline, mask, mask),
    }


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


def test_similarity_ignores_contrast_changes_but_not_misalignment(phantom_pair):
    followup, baseline, mask = phantom_pair
    aligned = registration_similarity(followup, baseline, mask)
    assert aligned >= MIN_SIMILARITY
    # Any increasing intensity change leaves the rank correlation exactly as it was.
    for gamma in (0.25, 0.5, 2.0, 4.0):
        assert registration_similarity(followup, baseline**gamma, mask) == pytest.approx(
            aligned, abs=1e-9
        ), gamma
    # Pearson's correlation, the measure this replaced, falls with a strong contrast change.
    logistic = 1.0 / (1.0 + np.exp(-40.0 * (baseline - 0.5)))
    assert (
        registration_correlation(followup, logistic, mask)
        < registration_correlation(followup, baseline, mask) - 0.05
    )
    assert registration_similarity(followup, logistic, mask) == pytest.approx(aligned)
    # CSF no longer suppressed (not an increasing change) lowers it only a little.
    fold = np.percentile(baseline[mask], 10)
    unsuppressed = np.where(baseline < fold, 2.0 * fold - baseline, baseline)
    assert registration_similarity(followup, unsuppressed, mask) >= aligned - 0.05
    for shift in (3, 4, 6):
        moved = np.roll(baseline, shift, axis=0)
        assert registration_similarity(followup, moved, mask) < MIN_SIMILARITY, shift
        assert registration_similarity(followup, moved**2.0, mask) < MIN_SIMILARITY, shift
    assert np.isnan(registration_similarity(followup, baseline, np.zeros_like(mask)))


def test_contrast_difference_ignores_alignment(phantom_pair):
    followup, baseline, mask = phantom_pair
    same = contrast_difference(followup, baseline, mask, mask)
    assert same < 0.01
    assert contrast_difference(followup, np.roll(baseline, 4, axis=0), mask, mask) < 0.01
    for gamma in (0.5, 0.67, 1.5, 2.0):
        assert contrast_difference(followup, baseline**gamma, mask, mask) > MAX_CONTRAST


def test_qc_table_reports_contrast_as_contrast_and_misalignment_as_registration(phantom_pair):
    followup, baseline, mask = phantom_pair
    rows = [
        qc_row(followup, baseline, mask, "good"),
        qc_row(followup, followup**2.0, mask, "gamma copy"),
        qc_row(followup, baseline**0.5, mask, "gamma baseline"),
        qc_row(followup, np.roll(baseline, 4, axis=0), mask, "shifted"),
        qc_row(followup, np.roll(baseline**0.5, 4, axis=1), mask, "both"),
    ]
    table = qc_table(rows, **THRESHOLDS).set_index("subject")
    assert list(table["flag_registration"]) == [False, False, False, True, True]
    assert list(table["flag_contrast"]) == [False, True, True, False, True]
    assert list(table["flagged"]) == [False, True, True, True, True]
    assert not table["flag_brain_volume"].any()
    for subject in ("gamma copy", "gamma baseline"):
        reason = table.loc[subject, "flag_reason"]
        assert reason.startswith("contrast: ") and "registration:" not in reason
    assert table.loc["shifted", "flag_reason"].startswith("registration: similarity")
    assert "contrast:" not in table.loc["shifted", "flag_reason"]
    assert table.loc["good", "flag_reason"] == ""


def test_qc_table_flags_each_threshold():
    rows = [
        {
            "subject": "ok",
            "brain_volume_ml_baseline": 1200,
            "brain_volume_ml_followup": 1210,
            "registration_similarity": 0.9,
            "contrast_difference": 0.02,
        },
        {
            "subject": "misregistered",
            "brain_volume_ml_baseline": 1200,
            "brain_volume_ml_followup": 1190,
            "registration_similarity": 0.45,
            "contrast_difference": 0.02,
        },
        {
            "subject": "skull",
            "brain_volume_ml_baseline": 2600,
            "brain_volume_ml_followup": 1200,
            "registration_similarity": 0.9,
            "contrast_difference": 0.02,
        },
        {
            "subject": "contrast",
            "brain_volume_ml_baseline": 1200,
            "brain_volume_ml_followup": 1200,
            "registration_similarity": 0.9,
            "contrast_difference": 0.08,
        },
        {
            "subject": "failed",
            "brain_volume_ml_baseline": 1200,
            "brain_volume_ml_followup": 1200,
            "registration_similarity": float("nan"),
            "contrast_difference": float("nan"),
        },
    ]
    table = qc_table(
        rows, min_similarity=0.6, max_contrast=0.05, min_brain_ml=800, max_brain_ml=2100
    )
    assert list(table["flagged"]) == [False, True, True, True, True]
    assert list(table["flag_registration"]) == [False, True, False, False, True]
    assert list(table["flag_contrast"]) == [False, False, False, True, True]
    assert list(table["flag_brain_volume"]) == [False, False, True, False, False]
    assert "similarity of the registered time points 0.450 < 0.6" in table.loc[1, "flag_reason"]
    assert "baseline brain volume 2600 ml" in table.loc[2, "flag_reason"]
    assert "differ by 0.080 > 0.05" in table.loc[3, "flag_reason"]
    assert list(table.columns[:5]) == [
        "subject",
        "brain_volume_ml_baseline",
        "brain_volume_ml_followup",
        "registration_similarity",
        "contrast_difference",
    ]


def test_qc_pair_step_writes_both_measures_and_names_the_failed_check(
    phantom_pair, tmp_path, caplog
):
    from mschange.preprocessing.steps import qc_pair_step

    followup, baseline, mask = phantom_pair
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    paths = {}
    for name, data in (
        ("fu", followup),
        ("bl", baseline**2.0),
        ("fu_mask", mask),
        ("bl_mask", mask),
    ):
        paths[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine), paths[name])
    with caplog.at_level(logging.WARNING):
        qc_pair_step(
            paths["fu"],
            paths["bl"],
            paths["fu_mask"],
            paths["bl_mask"],
            tmp_path / "qc.png",
            tmp_path / "qc.json",
            subject="p1",
            min_similarity=MIN_SIMILARITY,
            max_contrast=MAX_CONTRAST,
        )
    row = json.loads((tmp_path / "qc.json").read_text())
    assert row["registration_similarity"] >= MIN_SIMILARITY
    assert row["contrast_difference"] > MAX_CONTRAST
    assert row["registration_correlation"] == pytest.approx(
        registration_correlation(followup, baseline**2.0, mask)
    )
    assert (tmp_path / "qc.png").stat().st_size > 1000
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "p1: contrast:" in warnings[0]


def test_cohort_table_adds_timings_from_benchmarks(tmp_path):
    (tmp_path / "qc.json").write_text(
        json.dumps(
            {
                "subject": "p1",
                "brain_volume_ml_baseline": 1000.0,
                "brain_volume_ml_followup": 1000.0,
                "registration_correlation": 0.9,
                "registration_similarity": 0.9,
                "contrast_difference": 0.02,
            }
        )
    )
    bench = tmp_path / "bench"
    for name, seconds in (
        ("skullstrip_hdbet/sub-p1_tp-baseline.tsv", 20.0),
        ("skullstrip_hdbet/sub-p1_tp-followup.tsv", 22.5),
        ("register_baseline_to_followup/sub-p1.tsv", 30.0),
    ):
        (bench / name).parent.mkdir(parents=True, exist_ok=True)
        (bench / name).write_text(f"s\th:m:s\n{seconds}\t0:00:20\n")
    output = tmp_path / "qc.tsv"
    write_cohort_qc_table(
        [tmp_path / "qc.json"],
        output,
        cohort=[{"subject": "p1", "split": "test", "change": "yes"}],
        steps=["skullstrip_hdbet", "register_baseline_to_followup"],
        benchmark_dir=bench,
        **THRESHOLDS,
    )
    table = pd.read_csv(output, sep="\t")
    assert table.loc[0, "seconds_skullstrip_hdbet"] == pytest.approx(42.5)
    assert table.loc[0, "seconds_total"] == pytest.approx(72.5)
    assert table.loc[0, "split"] == "test"
    assert not table.loc[0, "flagged"]
