"""Running the detector on a pair, and turning its output into changes (To et al., sec. 3.2).

The network slides over the brain's bounding box of the 1 mm follow-up grid (RAS
axis order, as in training), overlapping windows blended with tent weights. The
probability map is thresholded at ``kappa`` (``p > kappa``), split into connected
components (26-connectivity) and components under ``min_blob_voxels`` are dropped.
Each remaining component is one detected change, listed in a table with its size,
place (scanner mm) and whether the follow-up is brighter there (new or enlarging
lesion) or darker (shrinking or resolving).

Thresholding and the mapping onto the follow-up's native grid (the grid of the file the
user gave) live in :mod:`mschange.changemap`, shared with the baseline and the evaluation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch
from scipy import ndimage

from mschange.changemap import BRIGHTER, DARKER
from mschange.detection.network import ChangeDetector
from mschange.imagespace import from_ras_axes, to_ras_axes
from mschange.io import voxel_sizes
from mschange.locations import (
    LOCATION_DESCRIPTIONS,
    anatomy_maps,
    can_locate,
    classify_changes,
)
from mschange.preprocessing.normalize import match_intensities
from mschange.tiling import blend_weights, brain_box, round_up, tile_starts
from mschange.torchrun import autocast

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
# The lesion table's columns, described as a BIDS data dictionary (the TSV's JSON sidecar).
LESION_COLUMN_INFO: dict[str, dict[str, Any]] = {
    "lesion_id": {"Description": "Number of the detected change (its label in the mask)"},
    "voxels": {"Description": "Size of the change in voxels of the 1 mm follow-up grid"},
    "volume_mm3": {"Description": "Volume of the change", "Units": "mm^3"},
    "centroid_x_mm": {"Description": "Centre of the change, scanner x (RAS)", "Units": "mm"},
    "centroid_y_mm": {"Description": "Centre of the change, scanner y (RAS)", "Units": "mm"},
    "centroid_z_mm": {"Description": "Centre of the change, scanner z (RAS)", "Units": "mm"},
    "mean_probability": {"Description": "Mean change probability inside the change"},
    "max_probability": {"Description": "Highest change probability inside the change"},
    "mean_intensity_change": {
        "Description": "Mean follow-up minus baseline FLAIR intensity inside the change, "
        "on the normalised scale (the brain's 99th percentile is 1)",
    },
    "direction": {
        "Description": "Whether the follow-up is brighter or darker there",
        "Levels": {
            BRIGHTER: "new or enlarging lesion",
            DARKER: "shrinking or resolving lesion",
        },
    },
    "location": {
        "Description": "Where the change lies, in the lesion locations of the McDonald 2017 "
        "/ MAGNIMS 2021 criteria; where two apply, the first of infratentorial, "
        "periventricular, cortical_juxtacortical (rule: docs/locations.md)",
        "Levels": {
            **LOCATION_DESCRIPTIONS,
            "n/a": "not determined (no brain mask, or ANTsPy or nilearn not installed)",
        },
    },
}
LESION_COLUMNS = list(LESION_COLUMN_INFO)


@dataclass(frozen=True)
class InferenceSettings:
    window: tuple[int, int, int] | None = None  # voxels, RAS order; None: the whole brain box
    overlap: int = 32  # voxels shared by neighbouring windows
    kappa: float = 0.1  # threshold on the change probability (paper 0.1)
    min_blob_voxels: int = 20  # smaller components are dropped (paper 20 or 100)
    margin: int = 8  # voxels of context kept around the brain box
    # Follow-up histogram matched to the baseline's inside both brain masks first.
    harmonise: bool = False
    # Mirroring test-time augmentation: the mean over every combination of flips of
    # these RAS axes (0 left-right, 1 anterior-posterior, 2 inferior-superior); 2^n passes.
    mirror_axes: tuple[int, ...] = ()
    # Changes are not reported within this depth of the edge of both brain masks.
    edge_margin_mm: float = 0.0
    # Changes are reported only where the baseline or the follow-up is at least this
    # many times the brain's median intensity (a FLAIR lesion is bright at the time
    # point that has it); 0: everywhere.
    min_lesion_contrast: float = 0.0

    def __post_init__(self) -> None:
        if any(axis not in (0, 1, 2) for axis in self.mirror_axes) or len(
            set(self.mirror_axes)
        ) != len(self.mirror_axes):
            raise ValueError(
                f"mirror_axes {list(self.mirror_axes)} must be distinct axes among 0, 1, 2"
            )
        if self.edge_margin_mm < 0:
            raise ValueError("edge_margin_mm must be >= 0")
        if self.min_lesion_contrast < 0:
            raise ValueError("min_lesion_contrast must be >= 0")

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["window"] = None if self.window is None else list(self.window)
        values["mirror_axes"] = list(self.mirror_axes)
        return values


def mirrorings(axes: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Every combination of flips of ``axes`` (the empty one first): 2^len(axes)."""
    return [
        tuple(axis for bit, axis in enumerate(axes) if code >> bit & 1)
        for code in range(2 ** len(axes))
    ]


def network_inputs(
    baseline: npt.NDArray[Any],
    followup: npt.NDArray[Any],
    brain: npt.NDArray[Any],
    settings: InferenceSettings,
) -> tuple[F32, F32]:
    """The two scans as the network gets them (float32; harmonised when set)."""
    baseline = np.asarray(baseline, dtype=np.float32)
    followup = np.asarray(followup, dtype=np.float32)
    if settings.harmonise:
        followup = match_intensities(followup, baseline, np.asarray(brain) > 0)
    return baseline, followup


def lesion_bright_mask(
    baseline: npt.NDArray[Any],
    followup: npt.NDArray[Any],
    brain: npt.NDArray[Any],
    min_contrast: float,
) -> npt.NDArray[np.bool_]:
    """Brain voxels where either scan is at least ``min_contrast`` x the brain's median
    intensity (each scan its own median), grown by one voxel to keep lesion borders."""
    inside = np.asarray(brain) > 0
    bright = np.zeros(inside.shape, dtype=bool)
    for scan in (np.asarray(baseline, np.float32), np.asarray(followup, np.float32)):
        bright |= scan >= min_contrast * float(np.median(scan[inside]))
    return inside & ndimage.binary_dilation(bright, structure=np.ones((3, 3, 3), bool))


def edge_depth_mask(
    brain: npt.NDArray[Any], affine: npt.NDArray[np.floating[Any]], margin_mm: float
) -> npt.NDArray[np.bool_]:
    """Brain voxels deeper than ``margin_mm`` inside ``brain`` (all of it for 0)."""
    inside = np.asarray(brain) > 0
    if margin_mm <= 0:
        return inside
    depth = ndimage.distance_transform_edt(inside, sampling=voxel_sizes(affine))
    return inside & (depth > margin_mm)


@torch.no_grad()
def predict_probability(
    model: ChangeDetector | Sequence[ChangeDetector],
    baseline: npt.NDArray[Any],
    followup: npt.NDArray[Any],
    brain: npt.NDArray[Any],
    affine: npt.NDArray[np.floating[Any]],
    settings: InferenceSettings,
    *,
    device: torch.device | None = None,
    on_window: Callable[[int, int], None] | None = None,
) -> F32:
    """Change probability on the input grid; zero outside ``brain`` (and within
    ``settings.edge_margin_mm`` of its edge).

    ``on_window(done, total)`` is called after each window (progress display). Several
    models (an ensemble) give the mean of their probabilities.
    """
    models = [model] if isinstance(model, ChangeDetector) else list(model)
    device = device or next(models[0].parameters()).device
    factor = max(m.architecture.downsampling for m in models)
    baseline, followup = network_inputs(baseline, followup, brain, settings)
    ras_baseline, back = to_ras_axes(baseline, affine)
    ras_followup, _ = to_ras_axes(followup, affine)
    ras_brain, _ = to_ras_axes(np.asarray(brain) > 0, affine)
    box, padded = brain_box(ras_brain, settings.margin, factor)
    brain_region = np.zeros(padded, dtype=bool)
    brain_part = ras_brain[box]
    brain_region[tuple(slice(0, n) for n in brain_part.shape)] = brain_part
    regions = []
    for volume in (ras_baseline, ras_followup):
        region = np.zeros(padded, dtype=np.float32)
        part = volume[box]
        region[tuple(slice(0, n) for n in part.shape)] = part
        regions.append(region)

    window = (
        padded
        if settings.window is None
        else tuple(
            min(round_up(w, factor), n) for w, n in zip(settings.window, padded, strict=True)
        )
    )
    strides = [max(factor, w - min(round_up(settings.overlap, factor), w // 2)) for w in window]
    starts = [tile_starts(n, w, s) for n, w, s in zip(padded, window, strides, strict=True)]
    weights = blend_weights(tuple(window))
    flipped = mirrorings(settings.mirror_axes)
    output = np.zeros(padded, dtype=np.float32)
    weight_sum = np.zeros(padded, dtype=np.float32)
    total = int(np.prod([len(s) for s in starts]))
    done = 0
    for i in starts[0]:
        for j in starts[1]:
            for k in starts[2]:
                where = (slice(i, i + window[0]), slice(j, j + window[1]), slice(k, k + window[2]))
                done += 1
                if brain_region[where].any():  # corners of the box may hold no brain
                    pair = [
                        torch.from_numpy(r[where].copy())[None, None].to(device) for r in regions
                    ]
                    window_probability = torch.zeros(pair[0].shape[2:], device=device)
                    for network in models:
                        for flips in flipped:
                            dims = [2 + axis for axis in flips]
                            inputs = [torch.flip(p, dims) if dims else p for p in pair]
                            with autocast(device):
                                logits = network(*inputs)[0].float()
                            if dims:
                                logits = torch.flip(logits, dims)
                            window_probability += torch.sigmoid(logits)[0, 0]
                    output[where] += (
                        window_probability.cpu().numpy() / (len(flipped) * len(models)) * weights
                    )
                    weight_sum[where] += weights
                if on_window is not None:
                    on_window(done, total)
    log.debug("predicted %s voxels with %d windows of %s", padded, total, window)
    probability = np.zeros(ras_brain.shape, dtype=np.float32)
    blended = output / np.maximum(weight_sum, 1e-6)
    probability[box] = blended[tuple(slice(0, s.stop - s.start) for s in box)]
    probability[~ras_brain] = 0.0
    probability = from_ras_axes(probability, back)
    if settings.edge_margin_mm > 0:
        probability[~edge_depth_mask(brain, affine, settings.edge_margin_mm)] = 0.0
    if settings.min_lesion_contrast > 0:
        probability[
            ~lesion_bright_mask(baseline, followup, brain, settings.min_lesion_contrast)
        ] = 0.0
    return np.ascontiguousarray(probability, dtype=np.float32)


def lesion_table(
    labels: npt.NDArray[Any],
    probability: npt.NDArray[Any],
    baseline: npt.NDArray[Any],
    followup: npt.NDArray[Any],
    affine: npt.NDArray[np.floating[Any]],
    *,
    brain_mask: npt.NDArray[Any] | None = None,
) -> pd.DataFrame:
    """One row per detected change (see ``LESION_COLUMNS``); centroids in scanner mm.

    ``location`` needs the follow-up's ``brain_mask`` (:mod:`mschange.locations`, a few
    seconds per pair with changes), ANTsPy and nilearn; without them it is ``n/a``.
    """
    count = int(labels.max()) if labels.size else 0
    if count == 0:
        return pd.DataFrame(columns=LESION_COLUMNS)
    index = np.arange(1, count + 1)
    voxels = ndimage.sum_labels(np.ones(labels.shape), labels, index)
    centroids = np.array(ndimage.center_of_mass(np.ones(labels.shape), labels, index))
    scanner = (np.asarray(affine)[:3, :3] @ centroids.T + np.asarray(affine)[:3, 3:4]).T
    change = np.asarray(followup, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)
    mean_change = ndimage.mean(change, labels, index)
    table = pd.DataFrame(
        {
            "lesion_id": index,
            "voxels": voxels.astype(int),
            "volume_mm3": voxels * float(np.prod(voxel_sizes(affine))),
            "centroid_x_mm": scanner[:, 0],
            "centroid_y_mm": scanner[:, 1],
            "centroid_z_mm": scanner[:, 2],
            "mean_probability": ndimage.mean(probability, labels, index),
            "max_probability": ndimage.maximum(probability, labels, index),
            "mean_intensity_change": mean_change,
            "direction": np.where(np.asarray(mean_change) > 0, BRIGHTER, DARKER),
            "location": "n/a",
        }
    )
    if brain_mask is not None and not can_locate():
        log.warning("change locations left n/a: ANTsPy or nilearn is not installed")
    elif brain_mask is not None:
        anatomy = anatomy_maps(followup, brain_mask, affine, baseline=baseline)
        table["location"] = classify_changes(labels, anatomy)
    return table[LESION_COLUMNS]
