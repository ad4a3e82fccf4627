"""Resampling to isotropic voxels, keeping the scanner-space placement."""

from __future__ import annotations

from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
from scipy import ndimage

from mschange.io import voxel_sizes

# FWHM of a Gaussian in units of its sigma.
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


def isotropic_grid(
    shape: tuple[int, ...], affine: npt.NDArray[np.floating[Any]], spacing_mm: float
) -> tuple[tuple[int, int, int], npt.NDArray[np.float64]]:
    """Shape and affine of a grid with ``spacing_mm`` voxels covering the same field of view.

    The axes keep their directions; the outer corner of the first voxel stays where
    it was, so the new grid covers the old field of view from the same corner.
    """
    affine = np.asarray(affine, dtype=np.float64)
    old_spacing = voxel_sizes(affine)
    extent = np.asarray(shape[:3], dtype=np.float64) * old_spacing
    new_shape = tuple(int(n) for n in np.maximum(np.ceil(extent / spacing_mm - 1e-6), 1))
    directions = affine[:3, :3] / old_spacing
    corner = affine[:3, 3] - directions @ (old_spacing / 2.0)
    new_affine = np.eye(4)
    new_affine[:3, :3] = directions * spacing_mm
    new_affine[:3, 3] = corner + directions @ np.full(3, spacing_mm / 2.0)
    return (new_shape[0], new_shape[1], new_shape[2]), new_affine


def resample_to_grid(
    data: npt.NDArray[Any],
    affine: npt.NDArray[np.floating[Any]],
    target_shape: tuple[int, int, int],
    target_affine: npt.NDArray[np.floating[Any]],
    *,
    order: int = 1,
    antialias: bool = True,
    cval: float = 0.0,
) -> npt.NDArray[np.float32]:
    """Sample ``data`` (on ``affine``) at the voxel centres of the target grid.

    With ``antialias``, axes that get coarser are first smoothed with the Gaussian
    that turns the old point spread into the new one, so thin-slice noise and
    in-plane detail do not alias into the coarser grid.
    """
    source = np.asarray(data, dtype=np.float32)
    if source.shape == tuple(target_shape) and np.allclose(affine, target_affine, atol=1e-6):
        return source.copy()  # the same grid: nothing to interpolate
    old_spacing = voxel_sizes(affine)
    new_spacing = voxel_sizes(target_affine)
    if antialias and order > 0:
        fwhm_mm = np.sqrt(np.clip(new_spacing**2 - old_spacing**2, 0.0, None))
        sigma_voxels = fwhm_mm / FWHM_PER_SIGMA / old_spacing
        if np.any(sigma_voxels > 0.1):
            source = ndimage.gaussian_filter(source, sigma=sigma_voxels, mode="nearest")
    # Target voxel index -> source voxel index.
    mapping = np.linalg.solve(
        np.asarray(affine, dtype=np.float64), np.asarray(target_affine, dtype=np.float64)
    )
    resampled = ndimage.affine_transform(
        source,
        mapping[:3, :3],
        offset=mapping[:3, 3],
        output_shape=target_shape,
        order=order,
        mode="constant",
        cval=cval,
        prefilter=order > 1,
    )
    return resampled.astype(np.float32, copy=False)


def resample_isotropic(
    image: nib.Nifti1Image, spacing_mm: float = 1.0, *, order: int = 1
) -> nib.Nifti1Image:
    """Resample an image to ``spacing_mm`` isotropic voxels (trilinear by default).

    Cubic interpolation (``order=3``) can overshoot; values are clipped to the
    input's range so that intensities stay physical.
    """
    data = np.asarray(image.dataobj, dtype=np.float32)
    shape, affine = isotropic_grid(data.shape, image.affine, spacing_mm)
    resampled = resample_to_grid(data, image.affine, shape, affine, order=order)
    if order > 1:
        np.clip(resampled, float(data.min()), float(data.max()), out=resampled)
    header = image.header.copy()
    header.set_zooms((spacing_mm,) * 3)
    result = nib.Nifti1Image(resampled, affine, header=header)
    result.set_data_dtype(np.float32)
    return result
