"""Evaluation pictures: predicted versus true changes on slices, and metric plots.

Every function takes plain arrays or DataFrames (no file paths to images), so that the
pictures can be tested on tiny synthetic cases, and writes its PNG atomically.
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt
import pandas as pd
from matplotlib.patches import Patch
from scipy import ndimage

from mschange.io import atomic_path

# Colours of the overlay; the legend, the fills and the outlines share them.
TRUTH_COLOUR = (0.0, 0.45, 1.0)  # blue
PREDICTION_COLOUR = (1.0, 0.1, 0.1)  # red
BOTH_COLOUR = (1.0, 0.0, 1.0)  # magenta
FILL_ALPHA = 0.5

_CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)


def _z_ranges(mask: npt.NDArray[np.bool_]) -> list[tuple[int, int]]:
    """First and last axial slice of each 26-connected component."""
    labels, _ = ndimage.label(mask, structure=_CONNECTIVITY_26)
    return [
        (int(box[2].start), int(box[2].stop) - 1)
        for box in ndimage.find_objects(labels)
        if box is not None
    ]


def _check_pair(
    truth: npt.NDArray[Any], prediction: npt.NDArray[Any]
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    true_mask = np.asarray(truth) > 0
    predicted_mask = np.asarray(prediction) > 0
    if true_mask.ndim != 3 or true_mask.shape != predicted_mask.shape:
        raise ValueError(
            f"truth and prediction must be 3D arrays of one shape, got "
            f"{true_mask.shape} and {predicted_mask.shape}"
        )
    return true_mask, predicted_mask


def _slice_cover(
    truth: npt.NDArray[Any], prediction: npt.NDArray[Any], max_slices: int
) -> tuple[list[int], int, int]:
    """The chosen slices, how many lesions they cross and how many lesions there are.

    Greedy set cover: each pick crosses the most still-unseen lesions, so cutting the
    pick list after ``max_slices`` keeps the slices that show the most lesions.
    """
    if max_slices < 1:
        raise ValueError(f"max_slices must be at least 1, got {max_slices}")
    true_mask, predicted_mask = _check_pair(truth, prediction)
    ranges = _z_ranges(true_mask) + _z_ranges(predicted_mask)
    if not ranges:
        return [], 0, 0
    depth = true_mask.shape[2]
    crosses = np.zeros((len(ranges), depth), dtype=bool)
    for row, (first, last) in enumerate(ranges):
        crosses[row, first : last + 1] = True
    voxels = (true_mask | predicted_mask).sum(axis=(0, 1))
    unseen = np.ones(len(ranges), dtype=bool)
    picks: list[int] = []
    while unseen.any() and len(picks) < max_slices:
        gain = crosses[unseen].sum(axis=0)
        # Ties: the slice with the most lesion voxels, then the lowest index (argmax).
        z = int(np.argmax(np.where(gain == gain.max(), voxels, -1)))
        picks.append(z)
        unseen &= ~crosses[:, z]
    return sorted(picks), int((~unseen).sum()), len(ranges)


def lesion_slices(
    truth: npt.NDArray[Any], prediction: npt.NDArray[Any], max_slices: int = 12
) -> list[int]:
    """Axial slices (last axis) that together cross every lesion of truth and prediction.

    A lesion is a 26-connected component; true and predicted lesions count separately,
    so a missed lesion and a false positive are both shown. Few slices are chosen (greedy
    set cover) because a reader compares panels side by side. With more lesions than
    ``max_slices`` can cross, the ``max_slices`` slices that cross the most are kept.
    Sorted ascending; ``[]`` when neither volume has a lesion.
    """
    return _slice_cover(truth, prediction, max_slices)[0]


def _in_plane_box(*volumes: npt.NDArray[np.bool_]) -> tuple[slice, slice]:
    """The in-plane bounding box of everything non-zero, over all slices."""
    any_slice = np.zeros(volumes[0].shape[:2], dtype=bool)
    for volume in volumes:
        any_slice |= volume.any(axis=2)
    rows, cols = np.nonzero(any_slice)
    if rows.size == 0:
        return slice(None), slice(None)
    return (
        slice(int(rows.min()), int(rows.max()) + 1),
        slice(int(cols.min()), int(cols.max()) + 1),
    )


def _overlay_rgba(
    truth: npt.NDArray[np.bool_], prediction: npt.NDArray[np.bool_]
) -> npt.NDArray[np.float64]:
    rgba = np.zeros((*truth.shape, 4))
    for mask, colour in (
        (truth & ~prediction, TRUTH_COLOUR),
        (prediction & ~truth, PREDICTION_COLOUR),
        (truth & prediction, BOTH_COLOUR),
    ):
        rgba[mask] = (*colour, FILL_ALPHA)
    return rgba


def plot_change_overlay(
    followup: npt.NDArray[Any],
    truth: npt.NDArray[Any],
    prediction: npt.NDArray[Any],
    zooms: tuple[float, float, float],
    path: str | os.PathLike[str],
    *,
    title: str,
    max_slices: int = 12,
) -> Path:
    """Follow-up FLAIR with true changes in blue, predicted ones in red, overlap magenta.

    Arrays are in RAS-like axis order (as after ``nibabel.as_closest_canonical``); panels
    are axial, anterior up and the subject's right on the picture's right, with the pixel
    aspect of the in-plane voxel size. Each lesion of either mask is crossed by a panel
    (see :func:`lesion_slices`), filled and outlined, so a miss and a false positive are
    equally visible. Panels are cropped to the non-zero part of the follow-up.
    """
    image = np.nan_to_num(np.asarray(followup, dtype=np.float32))
    true_mask, predicted_mask = _check_pair(truth, prediction)
    if image.shape != true_mask.shape:
        raise ValueError(f"follow-up shape {image.shape} differs from the masks' {true_mask.shape}")
    if len(zooms) != 3 or not all(float(z) > 0 for z in zooms):
        raise ValueError(f"zooms must be three positive voxel sizes, got {zooms}")
    slices, shown, total = _slice_cover(true_mask, predicted_mask, max_slices)
    n_true = len(_z_ranges(true_mask))
    subtitle = f"{n_true} true, {total - n_true} predicted lesions"
    if shown < total:
        subtitle += f"; {shown} of {total} lesions shown"
    if not slices:
        brain = np.nonzero((image != 0).any(axis=(0, 1)))[0]
        first, last = (
            (int(brain.min()), int(brain.max())) if brain.size else (0, image.shape[2] - 1)
        )
        slices = sorted({round(first + (last - first) * q) for q in (0.25, 0.5, 0.75)})
        subtitle = "no lesion in truth or prediction"

    box = _in_plane_box(image != 0, true_mask, predicted_mask)
    image, true_mask, predicted_mask = image[box], true_mask[box], predicted_mask[box]
    inside = image[image > 0]
    top = float(np.percentile(inside, 99.5)) if inside.size else 1.0
    aspect = float(zooms[1]) / float(zooms[0])

    columns = min(4, len(slices))
    rows = math.ceil(len(slices) / columns)
    width_mm = image.shape[0] * float(zooms[0])
    height_mm = image.shape[1] * float(zooms[1])
    panel_width = 3.0
    panel_height = float(np.clip(panel_width * height_mm / width_mm, 0.8, 5.0))
    figure, axes = plt.subplots(
        rows,
        columns,
        squeeze=False,
        dpi=90,
        layout="constrained",
        figsize=(max(panel_width * columns, 5.2), (panel_height + 0.3) * rows + 0.9),
    )
    for axis in axes.flat:
        axis.axis("off")
    for axis, z in zip(axes.flat, slices, strict=False):
        true_section, predicted_section = true_mask[:, :, z].T, predicted_mask[:, :, z].T
        axis.imshow(
            image[:, :, z].T,
            cmap="gray",
            origin="lower",
            vmin=0,
            vmax=top,
            aspect=aspect,
            interpolation="nearest",
        )
        axis.imshow(
            _overlay_rgba(true_section, predicted_section),
            origin="lower",
            aspect=aspect,
            interpolation="nearest",
        )
        if min(true_section.shape) >= 2:
            for mask, colour in (
                (true_section, TRUTH_COLOUR),
                (predicted_section, PREDICTION_COLOUR),
            ):
                if mask.any():
                    axis.contour(
                        mask.astype(float),
                        levels=[0.5],
                        colors=[colour],
                        linewidths=0.9,
                        origin="lower",
                    )
        axis.set_title(f"z={z}", fontsize=8)
    handles = [
        Patch(facecolor=(*colour, FILL_ALPHA), edgecolor=edge, label=label)
        for colour, edge, label in (
            (TRUTH_COLOUR, TRUTH_COLOUR, "ground truth only"),
            (PREDICTION_COLOUR, PREDICTION_COLOUR, "prediction only"),
            (BOTH_COLOUR, BOTH_COLOUR, "both"),
        )
    ]
    figure.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    figure.suptitle(f"{title}\n{subtitle}", fontsize=10)
    with atomic_path(path) as tmp:
        figure.savefig(tmp)
    plt.close(figure)
    return Path(path)


def _groups(frame: pd.DataFrame, method: str) -> tuple[list[Any], pd.Series]:
    """Method names in order of first appearance, and each row's method.

    Without a ``method`` column all rows are one group, so a single-method table
    needs no dummy column.
    """
    if method in frame.columns:
        keys = frame[method]
        return list(pd.unique(keys.dropna())), keys
    return ["all"], pd.Series("all", index=frame.index)


def plot_metric_boxplots(
    per_pair: pd.DataFrame,
    metrics: list[tuple[str, str]],
    path: str | os.PathLike[str],
    *,
    method: str = "method",
) -> Path:
    """One panel per ``(column, label)`` metric, one box per method, each pair a dot.

    With a handful of pairs the box alone hides how few values there are, so every pair
    is drawn as a jittered dot and each tick says ``n``. NaN values are left out; a
    metric with no value at all gets an empty panel that says so.
    """
    if not metrics:
        raise ValueError("no metric to plot")
    names, keys = _groups(per_pair, method)
    jitter = np.random.default_rng(0)  # fixed: the same table gives the same picture
    # At most three panels a row, so that the figure reads on a page.
    columns = min(3, len(metrics))
    rows = -(-len(metrics) // columns)
    figure, axes = plt.subplots(
        rows,
        columns,
        squeeze=False,
        dpi=90,
        layout="constrained",
        figsize=(max(2.8, 0.9 * len(names) + 1.4) * columns, 3.8 * rows),
    )
    for axis in axes.ravel()[len(metrics) :]:
        axis.set_visible(False)
    for axis, (column, label) in zip(axes.ravel(), metrics, strict=False):
        axis.set_title(label, fontsize=10)
        values = (
            pd.to_numeric(per_pair[column], errors="coerce")
            if column in per_pair
            else pd.Series(np.nan, index=per_pair.index, dtype=float)
        )
        groups = [
            values[(keys == name).to_numpy()].dropna().to_numpy(dtype=float) for name in names
        ]
        if not any(group.size for group in groups):
            axis.text(
                0.5,
                0.5,
                "no pairs",
                ha="center",
                va="center",
                fontsize=10,
                color="grey",
                transform=axis.transAxes,
            )
            axis.set_xticks([])
            axis.set_yticks([])
            continue
        filled = [i for i, group in enumerate(groups) if group.size]
        axis.boxplot(
            [groups[i] for i in filled],
            positions=[i + 1 for i in filled],
            widths=0.5,
            showfliers=False,
            medianprops={"color": "black"},
        )
        for i, group in enumerate(groups):
            x = i + 1 + jitter.uniform(-0.12, 0.12, size=group.size)
            axis.scatter(
                x,
                group,
                s=18,
                color=f"C{i % 10}",
                alpha=0.8,
                zorder=3,
                edgecolors="white",
                linewidths=0.5,
            )
        axis.set_xticks(
            range(1, len(names) + 1),
            [f"{name}\n(n={group.size})" for name, group in zip(names, groups, strict=True)],
            fontsize=8,
        )
        axis.set_xlim(0.4, len(names) + 0.6)
        axis.grid(axis="y", alpha=0.3)
    with atomic_path(path) as tmp:
        figure.savefig(tmp)
    plt.close(figure)
    return Path(path)


def plot_threshold_curves(
    sweep: pd.DataFrame,
    path: str | os.PathLike[str],
    *,
    method: str = "method",
    threshold: str = "threshold",
    x: str = "ppv",
    y: str = "ltpr",
) -> Path:
    """Lesion-wise sensitivity (LTPR) against precision (PPV), one line per method.

    Each point is a detection threshold and is labelled with it, so a reader can pick
    the operating point from the picture; rows with either rate NaN are left out.
    """
    names, keys = _groups(sweep, method)
    figure, axis = plt.subplots(figsize=(5.5, 5.0), dpi=90, layout="constrained")
    drawn = 0
    for i, name in enumerate(names):
        rows = sweep[(keys == name).to_numpy()].copy()
        rows[x] = pd.to_numeric(rows[x], errors="coerce")
        rows[y] = pd.to_numeric(rows[y], errors="coerce")
        rows = rows.dropna(subset=[x, y]).sort_values(threshold)
        if rows.empty:
            continue
        drawn += 1
        colour = f"C{i % 10}"
        axis.plot(
            rows[x], rows[y], marker="o", markersize=4, color=colour, label=str(name), clip_on=False
        )
        for px, py, value in zip(rows[x], rows[y], rows[threshold], strict=True):
            if pd.notna(value):
                axis.annotate(
                    f"{value:g}" if isinstance(value, numbers.Real) else str(value),
                    (px, py),
                    xytext=(3, 3),
                    textcoords="offset points",
                    fontsize=6,
                    color=colour,
                )
    if drawn:
        axis.legend(fontsize=8, loc="lower left")
    else:
        axis.text(
            0.5,
            0.5,
            "no threshold with both rates",
            ha="center",
            va="center",
            color="grey",
            transform=axis.transAxes,
        )
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_xlabel("PPV (lesion-wise precision)")
    axis.set_ylabel("LTPR (lesion-wise sensitivity)")
    axis.set_title("Detection threshold sweep", fontsize=10)
    axis.grid(alpha=0.3)
    axis.set_aspect("equal")
    with atomic_path(path) as tmp:
        figure.savefig(tmp)
    plt.close(figure)
    return Path(path)
