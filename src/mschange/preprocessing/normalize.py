"""Intensity normalisation to [0, 1] from brain percentiles (To et al., section 3.1)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt


def normalize_percentiles(data: npt.NDArray[Any], mask: npt.NDArray[Any], *,
                          low_percentile: float = 0.0, high_percentile: float = 99.0
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
