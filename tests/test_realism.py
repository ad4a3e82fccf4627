"""Real versus simulated no-change differences: the measure behind the rescan's realism."""

from __future__ import annotations

import numpy as np
import pytest

from mschange.synthesis.realism import absolute_differences, difference_table

SHAPE = (30, 30, 30)


def _ball(radius: float, centre: tuple[int, int, int] = (15, 15, 15)) -> np.ndarray:
    grid = np.indices(SHAPE)
    return sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius ** 2


def test_differences_split_rim_and_interior_and_leave_out_changes():
    brain = _ball(12)
    baseline = np.where(brain, 0.5, 0.0)
    followup = baseline.copy()
    followup[brain & ~_ball(9)] += 0.3          # the outer 3 voxels differ (skull strip)
    lesion = _ball(2, (15, 15, 15))
    followup[lesion] += 0.5                     # a true change: left out
    regions = absolute_differences(baseline, followup, brain, exclude=lesion, rim_mm=4.0,
                                   exclude_margin_mm=1.0)
    # Every voxel of the outer shell is within 4 mm of the edge; the rim holds a little more.
    assert regions["rim"].max() == pytest.approx(0.3)
    assert (regions["rim"] > 0).sum() == (brain & ~_ball(9)).sum()
    assert regions["interior"].max() == 0.0     # the change and its margin are gone
    assert regions["brain"].size == regions["rim"].size + regions["interior"].size
    assert regions["brain"].size < brain.sum() - lesion.sum()

    table = difference_table({"real": regions}).set_index("region")
    shell = (brain & ~_ball(9)).sum()
    assert table.loc["rim", "mean"] == pytest.approx(0.3 * shell / regions["rim"].size)
    assert table.loc["rim", "share_above_0.2"] == pytest.approx(shell / regions["rim"].size)
    assert table.loc["interior", "q99"] == 0.0
    assert table.loc["brain", "share_above_0.1"] == pytest.approx(
        shell / regions["brain"].size)
