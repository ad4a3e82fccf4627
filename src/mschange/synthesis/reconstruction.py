"""Whole-volume (perturbed) VAE reconstructions, by tiling the brain with overlapping crops.

The VAE is trained on crops; SuperMix needs a reconstruction of the whole scan. The
brain's bounding box is covered by overlapping tiles (in RAS axis order, like the
training crops) and the decoded tiles are blended with weights that fall off
towards each tile's border, which hides the seams.

The perturbation of To et al.: ``z ~ N(mu, Sigma)``, then ``x~ = g(z * Delta)`` with
``Delta ~ U(-delta, delta)`` element-wise. The sampling noise and ``Delta`` are drawn
once for the whole volume's latent grid, from one seed, and each tile reads its part:
overlapping tiles agree on the latent they share, and the seed alone reproduces the
reconstruction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from mschange.imagespace import from_ras_axes, to_ras_axes
from mschange.synthesis.vae import Vae3d
from mschange.tiling import blend_weights, brain_box, round_up, tile_starts
from mschange.torchrun import autocast

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class TilingSettings:
    tile_size: tuple[int, int, int] = (192, 192, 16)  # voxels, RAS order (the training crop)
    overlap: int = 8  # voxels shared by neighbouring tiles (at most half a tile per axis)
    margin: int = 4  # voxels kept around the brain box


DEFAULT_TILING = TilingSettings()


def latent_noise(
    latent_shape: tuple[int, ...], seed: int, delta: float | None
) -> tuple[F32, F32 | None]:
    """Sampling noise ``epsilon ~ N(0, I)`` and, given ``delta``, ``Delta ~ U(-delta, delta)``."""
    rng = np.random.default_rng(seed)
    epsilon = rng.standard_normal(latent_shape, dtype=np.float32)
    scale = None if delta is None else rng.uniform(-delta, delta, latent_shape).astype(np.float32)
    return epsilon, scale


@torch.no_grad()
def reconstruct_volume(
    model: Vae3d,
    data: npt.NDArray[Any],
    mask: npt.NDArray[Any],
    affine: npt.NDArray[np.floating[Any]],
    *,
    seed: int,
    delta: float | None,
    tiling: TilingSettings = DEFAULT_TILING,
    device: torch.device | None = None,
    sample: bool = True,
) -> F32:
    """The VAE's reconstruction of ``data`` on its own grid, perturbed when ``delta`` is set.

    Voxels outside the brain's box keep the input's values. ``sample=False`` decodes
    the latent mean (the plain, unperturbed reconstruction used for figures).
    """
    device = device or next(model.parameters()).device
    factor = model.architecture.downsampling
    ras, back = to_ras_axes(np.asarray(data, dtype=np.float32), affine)
    ras_mask, _ = to_ras_axes(np.asarray(mask) > 0, affine)
    box, padded_shape = brain_box(ras_mask, tiling.margin, factor)
    region = np.zeros(padded_shape, dtype=np.float32)
    crop = ras[box]
    region[tuple(slice(0, n) for n in crop.shape)] = crop

    tile = tuple(
        min(round_up(t, factor), n) for t, n in zip(tiling.tile_size, padded_shape, strict=True)
    )
    # Half a tile of overlap at most: then every voxel lies in a tile's inner half along
    # each axis, away from the zero padding of the tile's faces.
    overlaps = [min(round_up(tiling.overlap, factor), t // 2) for t in tile]
    strides = [max(factor, t - o) for t, o in zip(tile, overlaps, strict=True)]
    latent_shape = (model.architecture.latent_channels, *(n // factor for n in padded_shape))
    epsilon, scale = latent_noise(latent_shape, seed, delta)

    output = np.zeros(padded_shape, dtype=np.float32)
    weight_sum = np.zeros(padded_shape, dtype=np.float32)
    weights = blend_weights(tile)
    starts = [tile_starts(n, t, s) for n, t, s in zip(padded_shape, tile, strides, strict=True)]
    for i in starts[0]:
        for j in starts[1]:
            for k in starts[2]:
                where = (slice(i, i + tile[0]), slice(j, j + tile[1]), slice(k, k + tile[2]))
                latent_where = (
                    slice(None),
                    *(slice(s.start // factor, s.stop // factor) for s in where),
                )
                x = torch.from_numpy(region[where].copy())[None, None].to(device)
                with autocast(device):
                    mu, logvar = model.encode(x)
                    z = mu.float()
                    if sample:
                        noise = torch.from_numpy(epsilon[latent_where])[None].to(device)
                        z = z + torch.exp(0.5 * logvar.float()) * noise
                    if scale is not None:
                        z = z * torch.from_numpy(scale[latent_where])[None].to(device)
                    decoded = model.decode(z)
                output[where] += decoded.float().cpu().numpy()[0, 0] * weights
                weight_sum[where] += weights
    log.debug(
        "reconstructed %s voxels with %d tiles of %s",
        padded_shape,
        np.prod([len(s) for s in starts]),
        tile,
    )

    reconstruction = ras.copy()
    blended = output / np.maximum(weight_sum, 1e-6)
    reconstruction[box] = blended[tuple(slice(0, s.stop - s.start) for s in box)]
    return np.ascontiguousarray(from_ras_axes(reconstruction, back), dtype=np.float32)
