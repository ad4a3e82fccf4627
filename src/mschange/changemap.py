"""From a change map to detected changes, and changes onto another grid.

A change map (the detector's probability, the subtraction baseline's z-score) is
thresholded, split into connected components (26-connectivity) and components under a
minimum size are dropped: each remaining component is one detected change. The
detector, the baseline and the evaluation all use these, so that a change means the
same thing everywhere; the results are mapped onto the follow-up's native grid (the
grid of the file the user gave), so that they overlay it in any viewer.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from mschange.preprocessing.resample import resample_to_grid

# A change's direction (the lesion table's ``direction``): the follow-up brighter there (a
# new or enlarging lesion) or darker (a shrinking or resolving one).
BRIGHTER, DARKER = "brighter", "darker"

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]


def find_changes(
    probability: npt.NDArray[Any], kappa: float, min_blob_voxels: int
) -> npt.NDArray[np.int32]:
    """Label map of the detected changes, ids 1..n from the largest to the smallest.

    ``p > kappa``, 26-connected components, components under ``min_blob_voxels`` dropped.
    """
    components, count = ndimage.label(
        np.asarray(probability) > kappa, structure=np.ones((3, 3, 3), dtype=bool)
    )
    if count == 0:
        return np.zeros(np.shape(probability), dtype=np.int32)
    sizes = np.bincount(components.ravel())[1:]
    kept = [
        label + 1 for label in np.argsort(-sizes, kind="stable") if sizes[label] >= min_blob_voxels
    ]
    relabel = np.zeros(count + 1, dtype=np.int32)
    relabel[kept] = np.arange(1, len(kept) + 1, dtype=np.int32)
    return relabel[components]


def to_native_grid(
    probability: npt.NDArray[Any],
    labels: npt.NDArray[Any],
    affine: npt.NDArray[np.floating[Any]],
    native_shape: tuple[int, int, int],
    native_affine: npt.NDArray[np.floating[Any]],
) -> tuple[F32, npt.NDArray[np.int32]]:
    """Probability and change labels (ids 1..n, as in ``labels``) on another grid of the
    same scanner space; the binary change mask is ``labels > 0``.

    The probability is interpolated (trilinear) at the native voxel centres; the labels
    come from :func:`labels_to_grid`.
    """
    native_probability = resample_to_grid(
        probability, affine, native_shape, native_affine, order=1, antialias=False
    )
    return native_probability, labels_to_grid(labels, affine, native_shape, native_affine)


class NearestGrid:
    """Nearest-neighbour sampling from one grid at the voxel centres of another.

    The index of the source voxel behind every target voxel is worked out once, so a
    label map can be carried over many times (a threshold sweep) for the cost of an
    indexing operation.
    """

    def __init__(
        self,
        source_shape: tuple[int, ...],
        affine: npt.NDArray[np.floating[Any]],
        target_shape: tuple[int, int, int],
        target_affine: npt.NDArray[np.floating[Any]],
    ) -> None:
        self.source_shape = tuple(int(n) for n in source_shape[:3])
        self.target_shape = target_shape
        self.affine = np.asarray(affine, dtype=np.float64)
        self.target_affine = np.asarray(target_affine, dtype=np.float64)
        mapping = np.linalg.solve(self.affine, self.target_affine)
        index = np.indices(target_shape, dtype=np.float32).reshape(3, -1)
        source = mapping[:3, :3].astype(np.float32) @ index + mapping[:3, 3:4].astype(np.float32)
        # Round half up, as scipy's order-0 interpolation does.
        voxel = np.floor(source + 0.5).astype(np.int64)
        inside = np.all((voxel >= 0) & (voxel < np.array(self.source_shape)[:, None]), axis=0)
        self.flat = np.full(voxel.shape[1], -1, dtype=np.int64)
        self.flat[inside] = np.ravel_multi_index(tuple(voxel[:, inside]), self.source_shape)

    def sample(self, data: npt.NDArray[Any]) -> npt.NDArray[Any]:
        values = np.asarray(data).ravel()[np.maximum(self.flat, 0)]
        values[self.flat < 0] = 0
        return values.reshape(self.target_shape)


def labels_to_grid(
    labels: npt.NDArray[Any],
    affine: npt.NDArray[np.floating[Any]],
    native_shape: tuple[int, int, int],
    native_affine: npt.NDArray[np.floating[Any]],
    grid: NearestGrid | None = None,
) -> npt.NDArray[np.int32]:
    """The changes of ``labels`` (ids 1..n) on another grid, keeping their ids.

    The label map is sampled at the native voxel centres (nearest neighbour; ``grid``
    caches that mapping); a change too thin to cover any native voxel centre (e.g.
    between two 3 mm slices) still marks the native voxel that holds its centroid (when
    no other change holds it), so that no detection disappears.
    """
    if grid is None:
        grid = NearestGrid(labels.shape, affine, native_shape, native_affine)
    native_labels = grid.sample(labels).astype(np.int32)
    present = set(np.unique(native_labels[native_labels > 0]).astype(int))
    count = int(labels.max()) if labels.size else 0
    missing = [i for i in range(1, count + 1) if i not in present]
    if missing:
        centroids = np.array(ndimage.center_of_mass(np.ones(labels.shape), labels, missing))
        homogeneous = np.c_[centroids, np.ones(len(missing))]
        native_index = (np.linalg.solve(native_affine, np.asarray(affine) @ homogeneous.T).T)[:, :3]
        for change, voxel in zip(missing, np.rint(native_index).astype(int), strict=True):
            inside = all(0 <= v < n for v, n in zip(voxel, native_shape, strict=True))
            if inside and native_labels[tuple(voxel)] == 0:
                native_labels[tuple(voxel)] = change
        log.debug("%d change(s) thinner than the native grid kept at their centroid", len(missing))
    return native_labels


def changes_to_grid(
    labels: npt.NDArray[Any],
    affine: npt.NDArray[np.floating[Any]],
    native_shape: tuple[int, int, int],
    native_affine: npt.NDArray[np.floating[Any]],
    grid: NearestGrid | None = None,
) -> npt.NDArray[np.uint8]:
    """Binary mask of the changes in ``labels`` (ids 1..n) on another grid: where
    :func:`labels_to_grid` puts a change."""
    return (labels_to_grid(labels, affine, native_shape, native_affine, grid) > 0).astype(np.uint8)
