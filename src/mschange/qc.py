"""Quality control of preprocessed pairs: numbers for a table, pictures for a person."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import scipy.stats

from mschange.io import atomic_path, voxel_sizes


def brain_volume_ml(mask: npt.NDArray[Any], affine: npt.NDArray[np.floating[Any]]) -> float:
    voxel_ml = float(np.prod(voxel_sizes(affine))) / 1000.0
    return float(np.count_nonzero(mask)) * voxel_ml


def registration_correlation(
    fixed: npt.NDArray[Any], moved: npt.NDArray[Any], mask: npt.NDArray[Any]
) -> float:
    """Pearson correlation of the two images inside the mask.

    Kept as a QC column for comparison; the registration flag uses
    :func:`registration_similarity`, which a contrast change between the time points
    does not lower.
    """
    inside = np.asarray(mask) > 0
    a = np.asarray(fixed, dtype=np.float64)[inside]
    b = np.asarray(moved, dtype=np.float64)[inside]
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def registration_similarity(
    fixed: npt.NDArray[Any], moved: npt.NDArray[Any], mask: npt.NDArray[Any]
) -> float:
    """How well two images are aligned inside the mask, whatever their contrasts: the
    Spearman (rank) correlation of their intensities.

    The rank correlation is the Pearson correlation after each image's histogram is
    matched to a uniform one, so any increasing change of either image's intensities (a
    gamma curve, another gain, a different grey/white matter contrast) leaves it
    exactly as it was, while misalignment lowers it. 1 when one image's intensities are
    an increasing function of the other's. benchmarks/qc_registration.py measured it
    on pairs with known alignment (docs/qc.md): 0.675-0.971 for pairs registered to
    within 1 mm, 0.038-0.553 once the baseline is moved by 4 mm or more or rotated by 6
    degrees. It separated those as well as normalised mutual information did, and
    moved less than it when CSF was made bright in the baseline (not an increasing
    change).
    """
    inside = np.asarray(mask) > 0
    a = np.asarray(fixed, dtype=np.float64)[inside]
    b = np.asarray(moved, dtype=np.float64)[inside]
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(scipy.stats.spearmanr(a, b).statistic)


def contrast_difference(
    followup: npt.NDArray[Any],
    baseline: npt.NDArray[Any],
    followup_mask: npt.NDArray[Any],
    baseline_mask: npt.NDArray[Any],
) -> float:
    """How much the two time points' intensity distributions inside the brain differ.

    The Wasserstein (earth mover's) distance between the intensities inside each time
    point's brain mask: the mean absolute difference between their quantiles, in the
    units of the normalised images (the brain's 0th-99th percentiles map to [0, 1]).
    It does not depend on the alignment, only on the two histograms: a different
    contrast (e.g. a gamma change of the baseline, or of the scanner settings) raises
    it; lesion changes, which are a small share of the brain, barely move it. Measured
    (docs/qc.md): 0.017-0.040 for unchanged pairs, 0.064 or more for a gamma change of
    0.67 or 1.5 between the time points.
    """
    a = np.asarray(followup, dtype=np.float64)[np.asarray(followup_mask) > 0]
    b = np.asarray(baseline, dtype=np.float64)[np.asarray(baseline_mask) > 0]
    if a.size == 0 or b.size == 0:
        return float("nan")
    return float(scipy.stats.wasserstein_distance(a, b))


def checkerboard(a: npt.NDArray[Any], b: npt.NDArray[Any], tile: int = 16) -> npt.NDArray[Any]:
    """Alternate 2D tiles of ``a`` and ``b``: misregistration shows as broken edges."""
    rows, cols = np.indices(a.shape)
    pick_a = ((rows // tile) + (cols // tile)) % 2 == 0
    return np.where(pick_a, a, b)


def _mid_slices(volume: npt.NDArray[Any], centre: tuple[int, int, int]) -> list[npt.NDArray[Any]]:
    i, j, k = centre
    # Transposed and flipped so that superior/anterior is up in the picture (RAS-ish input).
    return [
        np.flipud(volume[:, :, k].T),
        np.flipud(volume[:, j, :].T),
        np.flipud(volume[i, :, :].T),
    ]


def plot_pair_qc(
    followup: npt.NDArray[Any],
    baseline_moved: npt.NDArray[Any],
    mask: npt.NDArray[Any],
    png_path: str | os.PathLike[str],
    *,
    title: str,
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
    for row, (fu, bl, m) in enumerate(
        zip(
            _mid_slices(followup, centre),
            _mid_slices(baseline_moved, centre),
            _mid_slices(brain, centre),
            strict=True,
        )
    ):
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


QC_COLUMNS = [
    "subject",
    "split",
    "change",
    "brain_volume_ml_baseline",
    "brain_volume_ml_followup",
    "registration_similarity",
    "contrast_difference",
    "registration_correlation",
    "flagged",
    "flag_registration",
    "flag_contrast",
    "flag_brain_volume",
    "flag_reason",
]


def registration_flag(similarity: float, min_similarity: float) -> str:
    """The registration check's reason, or "" when the pair passes."""
    if np.isfinite(similarity) and similarity >= min_similarity:
        return ""
    return (
        f"registration: similarity of the registered time points {similarity:.3f} < "
        f"{min_similarity} (rank correlation inside the brain, contrast-robust): "
        "misaligned, or a skull strip failed; see the checkerboard"
    )


def contrast_flag(difference: float, max_difference: float) -> str:
    """The contrast check's reason, or "" when the pair passes."""
    if np.isfinite(difference) and difference <= max_difference:
        return ""
    return (
        f"contrast: the time points' intensity distributions inside the brain differ by "
        f"{difference:.3f} > {max_difference} (Wasserstein distance, normalised "
        "intensities): the scans differ in contrast, which the detector may report "
        "as change"
    )


def qc_table(
    rows: Iterable[Mapping[str, Any]],
    *,
    min_similarity: float,
    max_contrast: float,
    min_brain_ml: float,
    max_brain_ml: float,
) -> pd.DataFrame:
    """One row per pair, with ``flagged`` set where a documented threshold is crossed.

    Three checks, each with its own column and its own text in ``flag_reason``:
    ``flag_registration`` when the registration similarity
    (:func:`registration_similarity`) is below ``min_similarity`` (misregistration or a
    failed skull strip); ``flag_contrast`` when the contrast difference
    (:func:`contrast_difference`) is above ``max_contrast``; ``flag_brain_volume`` when
    a brain volume is outside [min_brain_ml, max_brain_ml] at either time point (HD-BET
    cut into brain or kept skull). A contrast difference does not lower the
    registration similarity, so it is reported as contrast, not as registration.
    """
    table = pd.DataFrame(list(rows))
    reasons: list[str] = []
    flags: dict[str, list[bool]] = {"registration": [], "contrast": [], "brain_volume": []}
    for _, row in table.iterrows():
        registration = registration_flag(float(row["registration_similarity"]), min_similarity)
        contrast = contrast_flag(float(row["contrast_difference"]), max_contrast)
        volumes = []
        for tp in ("baseline", "followup"):
            volume = row[f"brain_volume_ml_{tp}"]
            if not min_brain_ml <= volume <= max_brain_ml:
                volumes.append(
                    f"{tp} brain volume {volume:.0f} ml outside "
                    f"[{min_brain_ml:.0f}, {max_brain_ml:.0f}]"
                )
        flags["registration"].append(bool(registration))
        flags["contrast"].append(bool(contrast))
        flags["brain_volume"].append(bool(volumes))
        reasons.append("; ".join(r for r in (registration, contrast, *volumes) if r))
    table["flag_reason"] = reasons
    for name, values in flags.items():
        table[f"flag_{name}"] = values
    table["flagged"] = [bool(r) for r in reasons]
    extra = [c for c in table.columns if c not in QC_COLUMNS]
    return table[[c for c in QC_COLUMNS if c in table.columns] + extra]
