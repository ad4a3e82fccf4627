"""Quality control of preprocessed pairs: numbers for a table, pictures for a person."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from mschange.io import atomic_path, voxel_sizes


def brain_volume_ml(mask: npt.NDArray[Any], affine: npt.NDArray[np.floating[Any]]) -> float:
    voxel_ml = float(np.prod(voxel_sizes(affine))) / 1000.0
    return float(np.count_nonzero(mask)) * voxel_ml


def registration_correlation(fixed: npt.NDArray[Any], moved: npt.NDArray[Any],
                             mask: npt.NDArray[Any]) -> float:
    """Pearson correlation of the two images inside the mask (1 = identical up to contrast).

    Correlation rather than mutual information: both images are FLAIR of the same
    head, so a good alignment gives a value near 1 whatever the scanner settings.
    """
    inside = np.asarray(mask) > 0
    a = np.asarray(fixed, dtype=np.float64)[inside]
    b = np.asarray(moved, dtype=np.float64)[inside]
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def checkerboard(a: npt.NDArray[Any], b: npt.NDArray[Any], tile: int = 16
                 ) -> npt.NDArray[Any]:
    """Alternate 2D tiles of ``a`` and ``b``: misregistration shows as broken edges."""
    rows, cols = np.indices(a.shape)
    pick_a = ((rows // tile) + (cols // tile)) % 2 == 0
    return np.where(pick_a, a, b)


def _mid_slices(volume: npt.NDArray[Any], centre: tuple[int, int, int]
                ) -> list[npt.NDArray[Any]]:
    i, j, k = centre
    # Transposed and flipped so that superior/anterior is up in the picture (RAS-ish input).
    return [np.flipud(volume[:, :, k].T), np.flipud(volume[:, j, :].T),
            np.flipud(volume[i, :, :].T)]


def plot_pair_qc(followup: npt.NDArray[Any], baseline_moved: npt.NDArray[Any],
                 mask: npt.NDArray[Any], png_path: str | os.PathLike[str], *, title: str
                 ) -> Path:
    """A QC figure: both time points with the mask contour, a checkerboard, the difference.

    Rows are axial, coronal and sagittal slices through the brain's centre.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    brain = np.asarray(mask) > 0
    if brain.any():
        i, j, k = np.round(np.argwhere(brain).mean(axis=0)).astype(int).tolist()
    else:
        i, j, k = (s // 2 for s in followup.shape)
    centre = (i, j, k)
    tile = max(4, followup.shape[0] // 12)
    columns = ["follow-up + mask", "baseline on follow-up", "checkerboard", "follow-up - baseline"]
    fig, axes = plt.subplots(3, 4, figsize=(12, 9), facecolor="black")
    for row, (fu, bl, m) in enumerate(zip(_mid_slices(followup, centre),
                                          _mid_slices(baseline_moved, centre),
                                          _mid_slices(brain, centre),
                                          strict=True)):
        panels = [fu, bl, checkerboard(fu, bl, tile), fu - bl]
        for col, panel in enumerate(panels):
            ax = axes[row, col]
            if col == 3:
                ax.imshow(panel, cmap="coolwarm", vmin=-0.5, vmax=0.5)
            else:
                ax.imshow(panel, cmap="gray", vmin=0.0, vmax=1.0)
            if col in (0, 1) and m.any():
                ax.contour(m.astype(float), levels=[0.5], colors="yellow", linewidths=0.6)
            ax.set_axis_off()
            if row == 0:
                ax.set_title(columns[col], color="white", fontsize=10)
    fig.suptitle(title, color="white")
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, dpi=80, facecolor="black")
    plt.close(fig)
    return Path(png_path)


QC_COLUMNS = ["subject", "split", "change", "brain_volume_ml_baseline",
              "brain_volume_ml_followup", "registration_correlation", "flagged",
              "flag_reason"]


def qc_table(rows: Iterable[Mapping[str, Any]], *, min_correlation: float,
             min_brain_ml: float, max_brain_ml: float) -> pd.DataFrame:
    """One row per pair, with ``flagged`` set where a documented threshold is crossed.

    Thresholds: registration correlation below ``min_correlation`` (misregistration
    or a failed skull strip), or a brain volume outside [min_brain_ml, max_brain_ml]
    at either time point (HD-BET cut into brain or kept skull).
    """
    table = pd.DataFrame(list(rows))
    reasons: list[str] = []
    for _, row in table.iterrows():
        why = []
        corr = row["registration_correlation"]
        if not np.isfinite(corr) or corr < min_correlation:
            why.append(f"registration correlation {corr:.3f} < {min_correlation}")
        for tp in ("baseline", "followup"):
            volume = row[f"brain_volume_ml_{tp}"]
            if not min_brain_ml <= volume <= max_brain_ml:
                why.append(f"{tp} brain volume {volume:.0f} ml outside "
                           f"[{min_brain_ml:.0f}, {max_brain_ml:.0f}]")
        reasons.append("; ".join(why))
    table["flag_reason"] = reasons
    table["flagged"] = [bool(r) for r in reasons]
    extra = [c for c in table.columns if c not in QC_COLUMNS]
    return table[[c for c in QC_COLUMNS if c in table.columns] + extra]
