"""Rigid registration of the baseline onto the follow-up with ANTsPy.

The follow-up is the reference (fixed image): every later output lives on the
follow-up's grid, and the saved transform (ITK convention: it maps follow-up
points to baseline points) lets any result go back to the follow-up's native grid
or the baseline's.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk

from mschange.imagespace import from_ants, to_ants


@dataclass(frozen=True)
class RigidRegistration:
    """A baseline image and mask moved onto the follow-up grid, and the transform."""

    moved_image: npt.NDArray[np.float32]
    moved_mask: npt.NDArray[np.bool_]
    transform_file: Path


def register_rigid(
    fixed: npt.NDArray[Any],
    fixed_affine: npt.NDArray[np.floating[Any]],
    moving: npt.NDArray[Any],
    moving_affine: npt.NDArray[np.floating[Any]],
    moving_mask: npt.NDArray[Any],
    transform_file: str | os.PathLike[str],
    *,
    transform_type: str = "Rigid",
    sampling_points: int = 225000,
    seed: int = 1,
    threads: int | None = None,
) -> RigidRegistration:
    """Register ``moving`` onto ``fixed`` and write the transform to ``transform_file``.

    ANTs starts from a centre-of-mass alignment, so large head displacements
    (tens of mm) between sessions are handled. The transform file is an ITK
    ``.mat`` readable by ``SimpleITK.ReadTransform`` and ``ants.apply_transforms``.
    ``sampling_points``: how many of the fixed grid's voxels the metric is sampled at
    (at most all). With one thread and a given ``seed`` two runs give the same
    transform bit for bit.
    """
    if threads is not None:
        # ITK reads this once per process, at its first use (each workflow job is a fresh
        # process); more than one thread makes ANTs differ slightly from run to run.
        os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
    import ants

    # ANTs samples the metric at random points; a fixed seed makes reruns identical.
    # ANTs reads a seed of 0 as "seed from the clock", so 0 becomes 1.
    ants.config._random_seed = int(seed) or 1
    fixed_ants = to_ants(fixed, fixed_affine)
    moving_ants = to_ants(moving, moving_affine)
    result = ants.registration(
        fixed=fixed_ants,
        moving=moving_ants,
        type_of_transform=transform_type,
        aff_random_sampling_rate=min(1.0, sampling_points / fixed.size),
        verbose=False,
    )
    forward = [t for t in result["fwdtransforms"] if t.endswith(".mat")]
    if len(forward) != 1:
        raise RuntimeError(f"expected one linear transform from ANTs, got {forward}")
    destination = Path(transform_file)
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(forward[0], destination)
    for temporary in result["fwdtransforms"] + result["invtransforms"]:
        if os.path.exists(temporary) and Path(temporary).parent != destination.parent:
            os.remove(temporary)

    moved = from_ants(result["warpedmovout"]).astype(np.float32)
    moved_mask = ants.apply_transforms(
        fixed=fixed_ants,
        moving=to_ants(np.asarray(moving_mask, np.float32), moving_affine),
        transformlist=[str(destination)],
        interpolator="nearestNeighbor",
    )
    return RigidRegistration(
        moved_image=np.clip(moved, 0.0, None),
        moved_mask=from_ants(moved_mask) > 0.5,
        transform_file=destination,
    )


def map_points(
    transform_file: str | os.PathLike[str], points_lps: npt.NDArray[np.floating[Any]]
) -> npt.NDArray[np.float64]:
    """Apply a saved transform to physical points (LPS mm, shape (N, 3)).

    For the registration above, follow-up points go in, baseline points come out.
    """
    transform = sitk.ReadTransform(str(transform_file))
    return np.array([transform.TransformPoint(tuple(map(float, p))) for p in points_lps])


def linear_transform_matrix(transform_file: str | os.PathLike[str]) -> npt.NDArray[np.float64]:
    """The 4x4 homogeneous LPS matrix of a saved linear ITK transform."""
    transform = sitk.ReadTransform(str(transform_file))
    # A linear map is fixed by where it sends the origin and the unit vectors.
    origin = np.array(transform.TransformPoint((0.0, 0.0, 0.0)))
    matrix = np.eye(4)
    for axis in range(3):
        unit = [0.0, 0.0, 0.0]
        unit[axis] = 1.0
        matrix[:3, axis] = np.array(transform.TransformPoint(tuple(unit))) - origin
    matrix[:3, 3] = origin
    return matrix


def registration_error_mm(
    transform_file: str | os.PathLike[str],
    true_mapping: Any,
    points_lps: npt.NDArray[np.floating[Any]],
) -> npt.NDArray[np.float64]:
    """Distance (mm) between where the saved transform and the truth send each point.

    ``true_mapping`` maps an (N, 3) array of follow-up points to the true baseline
    points (both LPS mm).
    """
    estimated = map_points(transform_file, points_lps)
    truth = np.asarray(true_mapping(points_lps), dtype=np.float64)
    return np.linalg.norm(estimated - truth, axis=1)
