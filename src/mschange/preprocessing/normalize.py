"""Intensity normalisation to [0, 1] from brain percentiles (To et al., section 3.1)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt


def normalize_percentiles(
    data: npt.NDArray[Any],
    mask: npt.NDArray[Any],
    *,
    low_percentile: float = 0.0,
    high_percentile: float = 99.0,
) -> tuple[npt.NDArray[np.float32], tuple[float, float]]:
    """Map the brain's [low, high] percentiles to [0, 1], clip, and zero the background.

    Returns the image and the (low, high) intensities used, for the record.
    """
    brain = np.asarray(mask) > 0
    if not brain.any():
        raise ValueError("the brain mask is empty; cannot normalise intensities")
    values = np.asarray(data, dtype=np.float32)
    low, high = np.percentile(values[brain], [low_percentile, high_percentile])
    if high <= low:
        raise ValueError(f"the brain's intensities are constant ({low}); cannot normalise")
    scaled = np.clip((values - low) / (high - low), 0.0, 1.0)
    return np.where(brain, scaled, 0.0).astype(np.float32), (float(low), float(high))


def match_intensities(
    source: npt.NDArray[Any],
    reference: npt.NDArray[Any],
    mask: npt.NDArray[Any],
    *,
    quantiles: int = 1001,
) -> npt.NDArray[np.float32]:
    """``source`` with its histogram inside ``mask`` matched to ``reference``'s there.

    Quantile mapping: the source's 0th..100th percentiles (``quantiles`` of them) inside
    the mask go to the reference's, linearly in between; outside the mask the source is
    left as it is. Used on the two scans of a pair (both normalised to [0, 1] on their
    own percentiles): where an acquisition difference or bright orbits kept by one skull
    strip move one scan's percentiles, the same tissue ends up at the same value again.
    A few lesion voxels barely move the quantiles, so real changes survive.
    """
    inside = np.asarray(mask) > 0
    if not inside.any():
        raise ValueError("the mask is empty; cannot match intensities")
    values = np.asarray(source, dtype=np.float32)
    levels = np.linspace(0.0, 100.0, quantiles)
    source_levels = np.percentile(values[inside], levels)
    reference_levels = np.percentile(np.asarray(reference, dtype=np.float32)[inside], levels)
    # np.interp needs increasing sample points: ties (flat stretches) get nudged apart.
    source_levels = source_levels + np.arange(quantiles) * 1e-9
    matched = values.copy()
    matched[inside] = np.interp(values[inside], source_levels, reference_levels)
    return matched.astype(np.float32)
