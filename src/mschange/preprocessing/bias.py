"""N4 bias-field correction (Tustison et al. 2010) with SimpleITK, inside the brain."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk

from mschange.imagespace import from_sitk, to_sitk


def n4_correct(
    data: npt.NDArray[Any],
    affine: npt.NDArray[np.floating[Any]],
    mask: npt.NDArray[Any],
    *,
    shrink_factor: int = 4,
    iterations: Sequence[int] = (50, 50, 30),
    convergence: float = 1e-3,
    threads: int | None = None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """(corrected image, bias field) on the input grid; zero outside ``mask``.

    The field is fitted on a ``shrink_factor``-times coarser copy (the usual way to
    make N4 fast) and evaluated at full resolution.
    """
    brain = np.asarray(mask) > 0
    if not brain.any():
        raise ValueError("the brain mask is empty; N4 needs voxels to fit the bias field")
    if threads is not None:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    values = np.where(brain, np.clip(np.asarray(data, np.float32), 0.0, None), 0.0)
    # N4 works on log intensities: lift the brain's values away from zero.
    offset = 1e-3 * float(values[brain].max()) if values[brain].max() > 0 else 1.0
    image = to_sitk((values + offset).astype(np.float32), affine)
    mask_image = to_sitk(brain.astype(np.uint8), affine)

    shrink = [shrink_factor] * 3
    small_image = sitk.Shrink(image, shrink)
    small_mask = sitk.Shrink(mask_image, shrink)
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([int(n) for n in iterations])
    corrector.SetConvergenceThreshold(float(convergence))
    corrector.Execute(small_image, small_mask)
    log_field = corrector.GetLogBiasFieldAsImage(image)
    field, _ = from_sitk(sitk.Exp(log_field))
    field = field.astype(np.float32)
    corrected = np.where(brain, (values + offset) / field - offset, 0.0)
    return np.clip(corrected, 0.0, None).astype(np.float32), field
