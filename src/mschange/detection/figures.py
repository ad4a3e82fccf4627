"""A QC picture of one prediction: the pair and the detected changes, slice by slice."""

from __future__ import annotations

import os
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt
import pandas as pd

from mschange.changemap import BRIGHTER
from mschange.imagespace import to_ras_axes
from mschange.io import atomic_path


def plot_prediction(
    baseline: npt.NDArray[Any],
    followup: npt.NDArray[Any],
    labels: npt.NDArray[Any],
    affine: npt.NDArray[np.floating[Any]],
    table: pd.DataFrame,
    png_path: str | os.PathLike[str],
    *,
    title: str,
    max_rows: int = 4,
) -> None:
    """Axial slices through the largest detected changes (or the middle, if none).

    Columns: baseline, follow-up, follow-up with the changes outlined (red: brighter at
    follow-up, blue: darker). Slices are shown in RAS axis order, the subject's left on
    the picture's right (neurological convention), anterior up.
    """
    ras_baseline, _ = to_ras_axes(np.asarray(baseline, dtype=np.float32), affine)
    ras_followup, _ = to_ras_axes(np.asarray(followup, dtype=np.float32), affine)
    ras_labels, _ = to_ras_axes(np.asarray(labels), affine)
    slices: list[tuple[int, str]] = []  # (axial index, caption)
    for row in table.head(max_rows).itertuples():
        where = np.nonzero(ras_labels == row.lesion_id)
        z = int(np.round(np.mean(where[2])))
        slices.append((z, f"change {row.lesion_id}: {row.volume_mm3:.0f} mm³, {row.direction}"))
    if not slices:
        slices.append((ras_followup.shape[2] // 2, "no change detected (middle slice)"))
    brighter = set(table.loc[table["direction"] == BRIGHTER, "lesion_id"].astype(int))

    # Crop to the brain (in-plane), so the slices are not mostly background.
    inside = np.nonzero((ras_followup > 0).any(axis=2))
    box = (
        (
            slice(int(inside[0].min()), int(inside[0].max()) + 1),
            slice(int(inside[1].min()), int(inside[1].max()) + 1),
        )
        if inside[0].size
        else (slice(None), slice(None))
    )
    ras_baseline, ras_followup, ras_labels = (
        v[box] for v in (ras_baseline, ras_followup, ras_labels)
    )
    top = (
        float(np.percentile(ras_followup[ras_followup > 0], 99.5))
        if (ras_followup > 0).any()
        else 1.0
    )
    figure, axes = plt.subplots(
        len(slices), 3, figsize=(9, 3.1 * len(slices)), dpi=90, squeeze=False
    )
    for row_axes, (z, caption) in zip(axes, slices, strict=True):
        section = ras_labels[:, :, z]
        for axis, image, name in zip(
            row_axes,
            (ras_baseline, ras_followup, ras_followup),
            ("baseline", "follow-up", caption),
            strict=True,
        ):
            axis.imshow(image[:, :, z].T, cmap="gray", origin="lower", vmin=0, vmax=top)
            axis.set_title(name, fontsize=8)
            axis.axis("off")
        up = np.isin(section, list(brighter)) & (section > 0)
        down = (section > 0) & ~up
        for mask, colour in ((up, "red"), (down, "deepskyblue")):
            if mask.any():
                row_axes[2].contour(
                    mask.T.astype(float),
                    levels=[0.5],
                    colors=colour,
                    linewidths=0.8,
                    origin="lower",
                )
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    with atomic_path(png_path) as tmp:
        figure.savefig(tmp)
    plt.close(figure)
