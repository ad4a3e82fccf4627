"""Conversions between nibabel (RAS+) images and ITK-family images (LPS+).

nibabel, ANTsPy and SimpleITK agree on voxel index order (i, j, k) but not on
physical coordinates: ITK tools use LPS, NIfTI affines are RAS. These helpers are
the only place that flips signs, so every tool sees the same physical space.
"""

from __future__ import annotations

from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
import SimpleITK as sitk

from mschange.io import voxel_sizes

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def itk_geometry(
    affine: npt.NDArray[np.floating[Any]],
) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """(origin, spacing, direction) in ITK's LPS convention for a NIfTI affine."""
    affine = np.asarray(affine, dtype=np.float64)
    spacing = voxel_sizes(affine)
    direction = RAS_TO_LPS @ (affine[:3, :3] / spacing)
    origin = RAS_TO_LPS @ affine[:3, 3]
    return tuple(origin.tolist()), tuple(spacing.tolist()), tuple(direction.ravel().tolist())


def affine_from_itk(origin: Any, spacing: Any, direction: Any) -> npt.NDArray[np.float64]:
    direction_lps = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = RAS_TO_LPS @ direction_lps @ np.diag(np.asarray(spacing, dtype=np.float64))
    affine[:3, 3] = RAS_TO_LPS @ np.asarray(origin, dtype=np.float64)
    return affine


def to_sitk(data: npt.ArrayLike, affine: npt.NDArray[np.floating[Any]]) -> sitk.Image:
    """A SimpleITK image with the same voxels and physical placement."""
    # SimpleITK arrays are (k, j, i); ours are (i, j, k).
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data).transpose(2, 1, 0)))
    origin, spacing, direction = itk_geometry(affine)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image


def from_sitk(image: sitk.Image) -> tuple[npt.NDArray[Any], npt.NDArray[np.float64]]:
    """(data in (i, j, k) order, RAS affine) of a SimpleITK image."""
    data = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    return data, affine_from_itk(image.GetOrigin(), image.GetSpacing(), image.GetDirection())


def to_ants(data: npt.ArrayLike, affine: npt.NDArray[np.floating[Any]]) -> Any:
    import ants  # imported lazily: loading ANTsPy takes seconds

    origin, spacing, direction = itk_geometry(affine)
    return ants.from_numpy(
        np.asarray(data, dtype=np.float32),
        origin=origin,
        spacing=spacing,
        direction=np.asarray(direction).reshape(3, 3),
    )


def from_ants(image: Any) -> npt.NDArray[Any]:
    return np.asarray(image.numpy())


def voxel_centres_mm(
    shape: tuple[int, ...], affine: npt.NDArray[np.floating[Any]]
) -> npt.NDArray[np.float64]:
    """Scanner (RAS mm) coordinates of every voxel centre, shape (N, 3), C order."""
    grid = np.indices(shape[:3], dtype=np.float64).reshape(3, -1)
    return (np.asarray(affine)[:3, :3] @ grid + np.asarray(affine)[:3, 3:4]).T


def same_grid(a: nib.Nifti1Image, b: nib.Nifti1Image, tolerance_mm: float = 1e-3) -> bool:
    """True when two images have the same shape and the same voxel-to-scanner mapping."""
    if tuple(a.shape[:3]) != tuple(b.shape[:3]):
        return False
    return bool(np.allclose(a.affine, b.affine, atol=tolerance_mm))


def _numbers(values: Any) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


def grid_differences(
    a: nib.Nifti1Image, b: nib.Nifti1Image, tolerance_mm: float = 1e-3
) -> list[str]:
    """How the grid of ``a`` differs from that of ``b``, one phrase per aspect (shape,
    voxel size, orientation, origin), with both values; empty when :func:`same_grid`."""
    if same_grid(a, b, tolerance_mm):
        return []
    differences = []
    shape_a, shape_b = tuple(a.shape[:3]), tuple(b.shape[:3])
    if shape_a != shape_b:
        differences.append(f"shape {shape_a} against {shape_b}")
    affine_a = np.asarray(a.affine, dtype=np.float64)
    affine_b = np.asarray(b.affine, dtype=np.float64)
    sizes_a, sizes_b = voxel_sizes(affine_a), voxel_sizes(affine_b)
    if not np.allclose(sizes_a, sizes_b, atol=tolerance_mm):
        differences.append(f"voxel size {_numbers(sizes_a)} mm against {_numbers(sizes_b)} mm")
    direction_a = affine_a[:3, :3] / sizes_a
    direction_b = affine_b[:3, :3] / sizes_b
    if not np.allclose(direction_a, direction_b, atol=1e-4):
        codes_a = "".join(nib.orientations.aff2axcodes(affine_a))
        codes_b = "".join(nib.orientations.aff2axcodes(affine_b))
        cosine = np.clip((np.trace(direction_a.T @ direction_b) - 1.0) / 2.0, -1.0, 1.0)
        angle = float(np.degrees(np.arccos(cosine)))
        differences.append(
            f"orientation {codes_a} against {codes_b} (axes turned by {angle:.3g} degrees)"
            if codes_a == codes_b
            else f"orientation {codes_a} against {codes_b}"
        )
    if not np.allclose(affine_a[:3, 3], affine_b[:3, 3], atol=tolerance_mm):
        differences.append(
            f"origin {_numbers(affine_a[:3, 3])} mm against {_numbers(affine_b[:3, 3])} mm"
        )
    if len(differences) == int(shape_a != shape_b) and not np.allclose(
        affine_a, affine_b, atol=tolerance_mm
    ):
        # Each part within tolerance, yet not the same affine (e.g. a shear): say so.
        differences.append("voxel-to-scanner matrix (affine) differs")
    return differences


def to_ras_axes(
    data: npt.NDArray[Any], affine: npt.NDArray[np.floating[Any]]
) -> tuple[npt.NDArray[Any], npt.NDArray[np.float64]]:
    """The array with axes permuted and flipped to the nearest R, A, S order.

    Returns the view and the orientation that undoes it (for :func:`from_ras_axes`).
    Networks see every scan in one axis order, whatever its acquisition orientation.
    """
    source = nib.orientations.io_orientation(affine)
    target = nib.orientations.axcodes2ornt(("R", "A", "S"))
    forward = nib.orientations.ornt_transform(source, target)
    back = nib.orientations.ornt_transform(target, source)
    return nib.orientations.apply_orientation(data, forward), back


def from_ras_axes(data: npt.NDArray[Any], back: npt.NDArray[np.float64]) -> npt.NDArray[Any]:
    """Undo :func:`to_ras_axes`."""
    return np.asarray(nib.orientations.apply_orientation(data, back))
