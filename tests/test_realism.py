"""Real versus simulated no-change differences: the measure behind the rescan's realism."""

from __future__ import annotations

import numpy as np
import pytest

from mschange.synthesis.realism import absolute_differences, difference_table

SHAPE = (30, 30, 30)


def _ball(radius: float, centre: tuple[int, int, int] = (15, 15, 15)) -> np.ndarray:
    grid = np.indices(SHAPE)
    return sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2


def test_differences_split_rim_and_interior_and_leave_out_changes():
    brain = _ball(12)
    baseline = np.where(brain, 0.5, 0.0)
    followup = baseline.copy()
    followup[brain & ~_ball(9)] += 0.3  # the outer 3 voxels differ (skull strip)
    lesion = _ball(2, (15, 15, 15))
    followup[lesion] += 0.5  # a true change: left out
    regions = absolute_differences(
        baseline, followup, brain, exclude=lesion, rim_mm=4.0, exclude_margin_mm=1.0
    )
    # Every voxel of the outer shell is within 4 mm of the edge; the rim holds a little more.
    assert regions["rim"].max() == pytest.approx(0.3)
    assert (regions["rim"] > 0).sum() == (brain & ~_ball(9)).sum()
    assert regions["interior"].max() == 0.0  # the change and its margin are gone
    assert regions["brain"].size == regions["rim"].size + regions["interior"].size
    assert regions["brain"].size < brain.sum() - lesion.sum()

    table = difference_table({"real": regions}).set_index("region")
    shell = (brain & ~_ball(9)).sum()
    assert table.loc["rim", "mean"] == pytest.approx(0.3 * shell / regions["rim"].size)
    assert table.loc["rim", "share_above_0.2"] == pytest.approx(shell / regions["rim"].size)
    assert table.loc["interior", "q99"] == 0.0
    assert table.loc["brain", "share_above_0.1"] == pytest.approx(shell / regions["brain"].size)


def test_realism_step_compares_a_real_pair_with_a_simulated_one(tmp_path):
    import nibabel as nib
    import pandas as pd

    from mschange.synthesis.realism import realism_step

    def save(data, name):
        nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4)), tmp_path / name)
        return str(tmp_path / name)

    brain = _ball(12)
    rng = np.random.default_rng(1)
    tissue = np.where(brain, 0.5, 0.0).astype(np.float32)
    real = np.where(brain, tissue + 0.05 * rng.standard_normal(SHAPE), 0.0)
    real[_ball(3)] += 0.6  # a true change: left out through its label
    simulated = np.where(brain, tissue + 0.01 * rng.standard_normal(SHAPE), 0.0)
    mask = save(brain.astype(np.uint8), "mask.nii.gz")
    pairs = [
        {
            "name": "real p1",
            "baseline": save(tissue, "bl.nii.gz"),
            "followup": save(real.astype(np.float32), "fu.nii.gz"),
            "masks": [mask, mask],
            "label": save(_ball(3).astype(np.uint8), "label.nii.gz"),
        },
        {
            "name": "simulated s1",
            "baseline": save(tissue, "bl.nii.gz"),
            "followup": save(simulated.astype(np.float32), "sim.nii.gz"),
            "masks": [mask, mask],
            "label": "",
        },
    ]
    only_noise = {
        "enabled": True,
        "misalignment_probability": 0.0,
        "flip_probability": 0.0,
        "rotation_probability": 0.0,
        "noise_probability": 1.0,
        "noise_std": [0.2, 0.2],
        **{
            f"{name}_probability": 0.0
            for name in (
                "bias_field",
                "gamma",
                "slice_thickness",
                "anisotropy",
                "blur",
                "edge",
                "motion",
                "ghosting",
                "spike",
            )
        },
    }
    table = realism_step(
        pairs,
        png=tmp_path / "realism.png",
        tsv=tmp_path / "realism.tsv",
        augmentation=only_noise,
        seed=4,
    )
    written = pd.read_csv(tmp_path / "realism.tsv", sep="\t").set_index(["pair", "region"])
    assert list(table["pair"].unique()) == [
        "real p1",
        "simulated s1",
        "simulated s1 + augmentation",
    ]
    # Noise of sd 0.2 on both time points widens the simulated differences.
    assert (
        written.loc[("simulated s1 + augmentation", "brain"), "mean"]
        > 5 * written.loc[("simulated s1", "brain"), "mean"]
    )
    # The real pair's noise (sd 0.05) differs more than the simulation's (0.01), and the
    # change itself (+0.6) is left out.
    assert written.loc[("real p1", "brain"), "q99"] < 0.3
    assert (
        written.loc[("real p1", "brain"), "mean"]
        > 3 * written.loc[("simulated s1", "brain"), "mean"]
    )
    assert (tmp_path / "realism.png").stat().st_size > 10_000
