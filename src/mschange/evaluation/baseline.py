"""The classical baseline: subtraction of the two preprocessed scans.

Follow-up minus baseline (both on the 1 mm follow-up grid, same preprocessing as the
detector sees), smoothed with a Gaussian, then standardised inside the brain:
z = (d - mean) / sd. A change is where |z| > k; its sign says brighter (new or
enlarging lesion) or darker (shrinking). The outer ``erode_mm`` of the brain is left
out: there the two skull strips differ by more than any lesion does. Every table lists
it next to the learned models so that a reader sees what learning adds.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from mschange.io import brain_intersection, load_float_image, save_json, save_nifti, voxel_sizes
from mschange.preprocessing.normalize import match_intensities

log = logging.getLogger(__name__)
PathLike = str | os.PathLike[str]


def subtraction_zmap(
    baseline: npt.NDArray[Any],
    followup: npt.NDArray[Any],
    brain: npt.NDArray[np.bool_],
    zooms: npt.ArrayLike,
    sigma_mm: float,
    erode_mm: float = 0.0,
    harmonise: bool = False,
) -> npt.NDArray[np.float32]:
    """Standardised, smoothed follow-up minus baseline; 0 outside ``brain`` and within
    ``erode_mm`` of its edge (the statistics use the whole brain). ``harmonise``: the
    follow-up's histogram is first matched to the baseline's inside ``brain``."""
    if harmonise:
        followup = match_intensities(followup, baseline, brain)
    difference = np.asarray(followup, dtype=np.float32) - np.asarray(baseline, dtype=np.float32)
    if sigma_mm > 0:
        sigma = sigma_mm / np.asarray(zooms, dtype=np.float64)
        # Smooth brain voxels only, renormalised, so that the brain edge (0 outside)
        # does not leak in as a false darkening.
        weight = ndimage.gaussian_filter(brain.astype(np.float32), sigma)
        difference = ndimage.gaussian_filter(np.where(brain, difference, 0.0), sigma)
        difference = difference / np.maximum(weight, 1e-3)
    zmap = np.zeros(difference.shape, dtype=np.float32)
    inside = difference[brain]
    if inside.size > 1:
        spread = float(inside.std())
        zmap[brain] = (inside - float(inside.mean())) / (spread if spread > 0 else 1.0)
    if erode_mm > 0:
        depth = ndimage.distance_transform_edt(brain, sampling=np.asarray(zooms, float))
        zmap[depth <= erode_mm] = 0.0
    return zmap


def subtraction_step(
    baseline: PathLike,
    followup: PathLike,
    masks: list[PathLike],
    zmap_out: PathLike,
    record_out: PathLike,
    *,
    subject: str,
    sigma_mm: float,
    erode_mm: float = 0.0,
    harmonise: bool = False,
) -> dict[str, Any]:
    """Rule subtraction_baseline: the z-map of one preprocessed pair, and its record."""
    baseline_data, _ = load_float_image(baseline)
    followup_data, image = load_float_image(followup)
    brain = brain_intersection(*masks)
    zmap = subtraction_zmap(
        baseline_data,
        followup_data,
        brain,
        voxel_sizes(image.affine),
        sigma_mm,
        erode_mm,
        harmonise,
    )
    save_nifti(zmap, image.affine, zmap_out, dtype=np.float32)
    record = {
        "subject": subject,
        "method": "subtraction",
        "sigma_mm": sigma_mm,
        "erode_mm": erode_mm,
        "harmonise": harmonise,
        "brain_voxels": int(brain.sum()),
        "voxels_above_3sd": int((np.abs(zmap) > 3).sum()),
    }
    save_json(record, record_out)
    log.info(
        "%s: subtraction z-map, %d brain voxels, %d with |z| > 3",
        subject,
        record["brain_voxels"],
        record["voxels_above_3sd"],
    )
    return record
