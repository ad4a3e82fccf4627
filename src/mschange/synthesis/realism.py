"""How much do two scans of one head differ where nothing changed: real versus simulated.

A detector trained on no-change pairs learns which differences are not change. If the
simulated rescan makes pairs that differ less (or elsewhere) than two real studies of
a patient do, every real difference the simulation lacks looks like change to the
detector. The reference is a real pair: the two studies of a development patient,
preprocessed, with its true lesion changes (dilated) left out. The same follow-up scan
paired with its simulated rescan is the comparison.

The measure is |follow-up - baseline| of the preprocessed pair (intensities in [0, 1]),
inside the intersection of both brain masks, split into the brain's outer rim (where
skull-strip and partial-volume differences sit) and the interior.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import ndimage

QUANTILES = (0.5, 0.9, 0.99)


def absolute_differences(
    baseline: npt.NDArray[Any],
    followup: npt.NDArray[Any],
    brain: npt.NDArray[np.bool_],
    *,
    exclude: npt.NDArray[Any] | None = None,
    rim_mm: float = 6.0,
    exclude_margin_mm: float = 3.0,
    zooms: Sequence[float] | npt.NDArray[Any] = (1.0, 1.0, 1.0),
) -> dict[str, npt.NDArray[np.float32]]:
    """|FU - BL| inside ``brain``, outside ``exclude`` grown by ``exclude_margin_mm``,
    for the whole brain, its outer ``rim_mm`` and the interior."""
    brain = np.asarray(brain, dtype=bool)
    keep = brain.copy()
    if exclude is not None and np.any(exclude):
        distance = ndimage.distance_transform_edt(
            ~(np.asarray(exclude) > 0), sampling=np.asarray(zooms, float)
        )
        keep &= distance > exclude_margin_mm
    depth = ndimage.distance_transform_edt(brain, sampling=np.asarray(zooms, float))
    difference = np.abs(np.asarray(followup, np.float32) - np.asarray(baseline, np.float32))
    rim = keep & (depth <= rim_mm)
    return {"brain": difference[keep], "rim": difference[rim], "interior": difference[keep & ~rim]}


def difference_table(pairs: Mapping[str, Mapping[str, npt.NDArray[Any]]]) -> pd.DataFrame:
    """One row per pair and region: voxels, mean and quantiles of |FU - BL|, and the
    share of voxels above 0.1 and 0.2 (a tenth or a fifth of the intensity range)."""
    rows = []
    for pair, regions in pairs.items():
        for region, values in regions.items():
            values = np.asarray(values, dtype=np.float64)
            row: dict[str, Any] = {
                "pair": pair,
                "region": region,
                "voxels": int(values.size),
                "mean": float(values.mean()) if values.size else np.nan,
            }
            for q in QUANTILES:
                row[f"q{round(q * 100)}"] = float(np.quantile(values, q)) if values.size else np.nan
            for level in (0.1, 0.2):
                row[f"share_above_{level}"] = (
                    float((values > level).mean()) if values.size else np.nan
                )
            rows.append(row)
    return pd.DataFrame(rows)


def plot_difference_distributions(
    pairs: Mapping[str, Mapping[str, npt.NDArray[Any]]], png_path: Any, *, title: str
) -> None:
    """Survival curves P(|FU - BL| > x) per pair, one panel per region (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regions = list(next(iter(pairs.values())))
    figure, axes = plt.subplots(
        1, len(regions), figsize=(4.2 * len(regions), 3.6), dpi=110, sharey=True
    )
    levels = np.linspace(0.0, 0.6, 121)
    for axis, region in zip(np.atleast_1d(axes), regions, strict=True):
        for pair, values in pairs.items():
            data = np.sort(np.asarray(values[region], dtype=np.float64))
            if not data.size:
                continue
            survival = 1.0 - np.searchsorted(data, levels, side="right") / data.size
            style = "-" if pair.startswith("real") else "--"
            axis.semilogy(levels, np.maximum(survival, 1e-6), style, label=pair)
        axis.set_title(f"{region}")
        axis.set_xlabel("|follow-up - baseline| (intensity, brain in [0, 1])")
        axis.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("share of voxels above")
    np.atleast_1d(axes)[-1].legend(fontsize=7)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    from mschange.io import atomic_path

    with atomic_path(png_path) as tmp:
        figure.savefig(tmp)
    plt.close(figure)


def realism_step(
    pairs: Sequence[Mapping[str, Any]],
    *,
    png: Any,
    tsv: Any,
    augmentation: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Rule rescan_realism: the real and simulated pairs' difference distributions.

    Each of ``pairs`` has name, baseline, followup, masks (preprocessed files) and
    label: a change mask on the raw follow-up's grid for a real pair, empty for a
    simulated one (nothing changed). With ``augmentation`` (the detector's settings,
    enabled), each simulated pair is also shown after it, drawn once from ``seed``:
    the differences the detector is trained to ignore.
    """
    from mschange.io import atomic_path, brain_intersection, load_float_image, voxel_sizes
    from mschange.preprocessing.resample import resample_to_grid

    regions = {}
    for pair in pairs:
        baseline, _ = load_float_image(pair["baseline"])
        followup, image = load_float_image(pair["followup"])
        exclude = None
        if pair.get("label"):
            label, label_image = load_float_image(pair["label"])
            exclude = (
                resample_to_grid(
                    label,
                    label_image.affine,
                    baseline.shape,
                    image.affine,
                    order=0,
                    antialias=False,
                )
                > 0
            )
        brain = brain_intersection(*pair["masks"])
        zooms = voxel_sizes(image.affine)
        regions[pair["name"]] = absolute_differences(
            baseline, followup, brain, exclude=exclude, zooms=zooms
        )
        if exclude is None and augmentation and augmentation.get("enabled"):
            from mschange.detection.augment import augment_patch, augmentation_settings

            augmented = augment_patch(
                baseline,
                followup,
                np.zeros(brain.shape, np.uint8),
                augmentation_settings(augmentation),
                np.random.default_rng(seed),
            )
            regions[f"{pair['name']} + augmentation"] = absolute_differences(
                augmented[0], augmented[1], brain, zooms=zooms
            )
    table = difference_table(regions)
    with atomic_path(tsv) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.5g")
    plot_difference_distributions(
        regions,
        png,
        title="|FU - BL| where nothing changed: "
        "real pairs (solid) and simulated rescans of their "
        "follow-ups (dashed)",
    )
    return table
