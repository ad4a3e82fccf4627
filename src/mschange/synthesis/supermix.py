"""SuperMix: lesion changes synthesised by mixing a scan with its perturbed VAE reconstruction.

Equation 1 of To et al.: the scan ``x`` is cut into ``n_seg`` superpixels (3D SLIC,
Achanta et al.); each superpixel keeps ``x`` (``lambda_t = 1``) with probability
``tau`` and otherwise takes the perturbed reconstruction ``x~``; the change label is
1 exactly on the replaced superpixels. Superpixels are computed inside the brain
only, so only brain tissue can change; ``n_seg`` counts superpixels in the brain.

Every random choice of a sample is drawn from a seed derived from the config seed,
the subject and the sample index, and written to the sample's JSON record;
:func:`replay` rebuilds the sample's voxels from that record alone.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from skimage.segmentation import slic

from mschange.io import voxel_sizes
from mschange.synthesis.reconstruction import (
    DEFAULT_TILING,
    TilingSettings,
    reconstruct_volume,
)
from mschange.synthesis.vae import Vae3d
from mschange.tiling import brain_box

F32 = npt.NDArray[np.float32]
RECORD_VERSION = 1
TIMEPOINTS = ("baseline", "followup")


@dataclass(frozen=True)
class SuperMixSettings:
    tau: float = 0.98  # probability a superpixel is kept
    n_segments: tuple[int, int] = (200, 5000)  # log n_seg ~ U(log lo, log hi)
    delta: float = 5.0  # Delta ~ U(-delta, delta)
    compactness: float = 0.1  # SLIC: intensities are ~[0, 1]
    slic_iterations: int = 5

    def __post_init__(self) -> None:
        if not 0.0 <= self.tau <= 1.0:
            raise ValueError(f"tau must be in [0, 1], got {self.tau}")
        low, high = self.n_segments
        if not 1 <= low <= high:
            raise ValueError(
                f"n_segments must be [low, high] with 1 <= low <= high, got {list(self.n_segments)}"
            )


@dataclass(frozen=True)
class SampleChoices:
    """The random choices that make one SuperMix sample (all in its JSON record)."""

    synthesised_timepoint: str
    n_segments: int
    latent_seed: int
    replace_draws_seed: int


def sample_seed(seed: int, subject: str, sample: int) -> list[int]:
    """Entropy of one sample's random stream: config seed, subject and sample index."""
    return [int(seed), zlib.crc32(subject.encode()), int(sample)]


def draw_choices(entropy: list[int], settings: SuperMixSettings) -> SampleChoices:
    rng = np.random.default_rng(np.random.SeedSequence(entropy))
    low, high = settings.n_segments
    return SampleChoices(
        synthesised_timepoint=TIMEPOINTS[int(rng.integers(2))],
        n_segments=round(math.exp(rng.uniform(math.log(low), math.log(high)))),
        latent_seed=int(rng.integers(2**31)),
        replace_draws_seed=int(rng.integers(2**31)),
    )


def superpixels(
    image: npt.NDArray[Any],
    mask: npt.NDArray[Any],
    affine: npt.NDArray[np.floating[Any]],
    *,
    n_segments: int,
    compactness: float,
    iterations: int,
) -> npt.NDArray[np.int32]:
    """3D SLIC labels 1..n inside ``mask`` (0 outside), about ``n_segments`` of them.

    SLIC runs on the brain's bounding box from a regular grid of seeds, and the
    superpixels are then cut to the mask. (skimage's masked SLIC places its seeds
    by k-means over the mask, which takes minutes for thousands of segments.) The
    request is scaled by box volume / brain volume so that about ``n_segments``
    superpixels fall inside the brain.
    """
    brain = np.asarray(mask, dtype=bool)
    box, _ = brain_box(brain, margin=0, factor=1)
    box_mask = brain[box]
    requested = max(1, round(n_segments * box_mask.size / int(box_mask.sum())))
    box_labels = slic(
        np.asarray(image[box], dtype=np.float64),
        n_segments=requested,
        compactness=compactness,
        max_num_iter=iterations,
        spacing=voxel_sizes(affine),
        channel_axis=None,
        start_label=1,
    )
    inside = box_labels[box_mask]
    _, compact = np.unique(inside, return_inverse=True)
    labels = np.zeros(brain.shape, dtype=np.int32)
    box_out = np.zeros(box_mask.shape, dtype=np.int32)
    box_out[box_mask] = compact.reshape(-1).astype(np.int32) + 1
    labels[box] = box_out
    return labels


def replaced_superpixels(n_superpixels: int, tau: float, draws_seed: int) -> list[int]:
    """1-based ids of the superpixels with ``lambda_t = 0``: ``u ~ U(0, 1)``, ``u >= tau``."""
    draws = np.random.default_rng(draws_seed).random(n_superpixels)
    return [int(i) + 1 for i in np.flatnonzero(draws >= tau)]


def mix(
    scan: npt.NDArray[Any],
    reconstruction: npt.NDArray[Any],
    labels: npt.NDArray[np.int32],
    replaced: list[int],
) -> tuple[F32, npt.NDArray[np.uint8]]:
    """Equation 1: ``x'`` takes the reconstruction on the replaced superpixels; ``y`` marks them."""
    change = np.isin(labels, np.asarray(replaced, dtype=np.int32)) & (labels > 0)
    synthesised = np.where(change, reconstruction, scan).astype(np.float32)
    return synthesised, change.astype(np.uint8)


@dataclass
class SuperMixSample:
    synthesised: F32
    label: npt.NDArray[np.uint8]
    reconstruction: F32
    superpixel_labels: npt.NDArray[np.int32]
    record: dict[str, Any]


def synthesise(
    scan: npt.NDArray[Any],
    mask: npt.NDArray[Any],
    affine: npt.NDArray[np.floating[Any]],
    model: Vae3d,
    choices: SampleChoices,
    settings: SuperMixSettings,
    *,
    tiling: TilingSettings = DEFAULT_TILING,
    device: torch.device | None = None,
    replaced: list[int] | None = None,
    reconstruction: F32 | None = None,
) -> SuperMixSample:
    """One SuperMix sample of ``scan``; ``replaced`` overrides the draws (replay).

    ``reconstruction``, when given, must be the perturbed reconstruction for
    ``choices.latent_seed`` (callers that vary only ``n_seg`` compute it once).
    """
    labels = superpixels(
        scan,
        mask,
        affine,
        n_segments=choices.n_segments,
        compactness=settings.compactness,
        iterations=settings.slic_iterations,
    )
    n_superpixels = int(labels.max())
    if replaced is None:
        replaced = replaced_superpixels(n_superpixels, settings.tau, choices.replace_draws_seed)
    if reconstruction is None:
        reconstruction = reconstruct_volume(
            model,
            scan,
            mask,
            affine,
            seed=choices.latent_seed,
            delta=settings.delta,
            tiling=tiling,
            device=device,
        )
    synthesised, label = mix(scan, reconstruction, labels, replaced)
    record = {
        "version": RECORD_VERSION,
        **dataclasses.asdict(choices),
        "settings": {**dataclasses.asdict(settings), "n_segments": list(settings.n_segments)},
        "tiling": {**dataclasses.asdict(tiling), "tile_size": list(tiling.tile_size)},
        "n_superpixels": n_superpixels,
        "replaced_superpixels": replaced,
        "replaced_voxels": int(label.sum()),
    }
    return SuperMixSample(synthesised, label, reconstruction, labels, record)


def replay(
    record: dict[str, Any],
    scan: npt.NDArray[Any],
    mask: npt.NDArray[Any],
    affine: npt.NDArray[np.floating[Any]],
    model: Vae3d,
    device: torch.device | None = None,
) -> SuperMixSample:
    """Rebuild a sample from its JSON record (same scan, mask and VAE): identical voxels."""
    if record.get("version") != RECORD_VERSION:
        raise ValueError(f"unsupported SuperMix record version {record.get('version')!r}")
    choices = SampleChoices(**{f.name: record[f.name] for f in dataclasses.fields(SampleChoices)})
    stored = record["settings"]
    settings = SuperMixSettings(
        tau=stored["tau"],
        n_segments=tuple(stored["n_segments"]),
        delta=stored["delta"],
        compactness=stored["compactness"],
        slic_iterations=stored["slic_iterations"],
    )
    tiling = TilingSettings(
        tile_size=tuple(record["tiling"]["tile_size"]),
        overlap=record["tiling"]["overlap"],
        margin=record["tiling"]["margin"],
    )
    return synthesise(
        scan,
        mask,
        affine,
        model,
        choices,
        settings,
        tiling=tiling,
        device=device,
        replaced=list(record["replaced_superpixels"]),
    )
