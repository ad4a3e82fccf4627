"""Covering a volume with overlapping tiles and blending what the tiles give back.

Networks trained on crops (the VAE, the change detector) see whole volumes tile by
tile; neighbouring tiles overlap and are blended with weights that fall off towards
each tile's faces, which hides the seams.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt


def round_up(value: int, factor: int) -> int:
    """The smallest multiple of ``factor`` that is >= ``value``."""
    return int(-(-value // factor) * factor)


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Starts that cover ``[0, length)`` with tiles of ``tile``; the last one flush with the end."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return sorted(set(starts))


def blend_weights(shape: tuple[int, ...]) -> npt.NDArray[np.float32]:
    """Separable tent weights: 1 in the middle, small (not zero) at the tile's faces."""
    weights = np.ones(shape, dtype=np.float32)
    for axis, n in enumerate(shape):
        ramp = 1.0 - np.abs(np.linspace(-1.0, 1.0, n)) * 0.9
        view = [1] * len(shape)
        view[axis] = n
        weights = weights * ramp.reshape(view).astype(np.float32)
    return weights


def brain_box(
    mask: npt.NDArray[Any], margin: int, factor: int
) -> tuple[tuple[slice, ...], tuple[int, ...]]:
    """The mask's bounding box plus ``margin``, as slices, and its size padded to ``factor``."""
    where = np.nonzero(mask)
    if not where[0].size:
        raise ValueError("the brain mask is empty")
    box = tuple(
        slice(max(0, int(w.min()) - margin), min(n, int(w.max()) + 1 + margin))
        for w, n in zip(where, mask.shape, strict=True)
    )
    padded = tuple(round_up(s.stop - s.start, factor) for s in box)
    return box, padded
