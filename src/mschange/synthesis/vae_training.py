"""Training the VAE on random crops of the no-change scans (To et al., section 4).

The paper trains for 200 iterations of 4096 crops of 192 x 192 x 16 voxels, mini-batch
2, Adam at 5e-5; all of that is configurable (the demo uses a few crops). Crop sizes
are given in anatomical order (left-right, anterior-posterior, inferior-superior):
every scan is put in RAS axis order first, so the 16-voxel side of a crop always
runs head to foot, whatever the scan's orientation.

A training run checkpoints into a folder beside its outputs and resumes from it
when rerun after a kill (see :mod:`mschange.checkpoints`). The scans are decoded once
into uncompressed files in that folder and crops are read from them
(:mod:`mschange.scancache`), so memory does not grow with the number of scans.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
import torch

from mschange.imagespace import to_ras_axes
from mschange.scancache import DiskArray, ScanCache
from mschange.synthesis.vae import Vae3d, VaeArchitecture, save_vae, vae_loss
from mschange.torchrun import autocast
from mschange.training_loop import ResumableTraining

log = logging.getLogger(__name__)

LOSS_COLUMNS = ["iteration", "step", "crops", "loss", "l1", "kl", "crops_per_second", "elapsed_s"]


@dataclass(frozen=True)
class VaeTrainingSettings:
    """Everything that defines a VAE training run (the checkpoint fingerprint)."""

    architecture: VaeArchitecture = field(default_factory=VaeArchitecture)
    crop_size: tuple[int, int, int] = (192, 192, 16)
    kl_weight: float = 1e-3
    learning_rate: float = 5e-5
    batch_size: int = 2
    iterations: int = 200
    crops_per_iteration: int = 4096
    checkpoint_every: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        factor = self.architecture.downsampling
        if len(self.crop_size) != 3 or any(c % factor or c <= 0 for c in self.crop_size):
            raise ValueError(
                f"crop_size {list(self.crop_size)} must be 3 positive multiples "
                f"of {factor} (2 to the number of VAE levels)"
            )
        if self.batch_size < 1 or self.iterations < 1 or self.crops_per_iteration < 1:
            raise ValueError("batch_size, iterations and crops_per_iteration must be >= 1")

    @property
    def steps_per_iteration(self) -> int:
        return math.ceil(self.crops_per_iteration / self.batch_size)

    @property
    def total_steps(self) -> int:
        return self.iterations * self.steps_per_iteration

    def as_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["architecture"]["channels"] = list(self.architecture.channels)
        values["crop_size"] = list(self.crop_size)
        return values


@dataclass(frozen=True)
class CropSource:
    """What crops of one scan can show: ``array`` holds the voxels of the (padded) scan
    from ``offset`` on that some crop reaches, with its axes in the order ``axes`` (the
    crop's thinnest side first, so that a crop of the paper's 192 x 192 x 16 voxels is
    16 contiguous slabs rather than bits of every page of the file); ``shape`` is the
    padded scan's shape and ``low``/``high`` its brain's box, where crop centres are
    drawn (all in RAS order). ``array`` is in memory or a
    :class:`~mschange.scancache.DiskArray`."""

    array: npt.NDArray[np.float32] | DiskArray
    offset: npt.NDArray[np.intp]
    shape: npt.NDArray[np.intp]
    low: npt.NDArray[np.intp]
    high: npt.NDArray[np.intp]
    axes: tuple[int, ...] = (0, 1, 2)

    def crop(
        self, start: npt.NDArray[np.intp], size: npt.NDArray[np.intp]
    ) -> npt.NDArray[np.float32]:
        """The crop of ``size`` voxels from ``start`` (padded scan's voxels, RAS order)."""
        region = tuple(
            slice(int(s), int(s + n)) for s, n in zip(start - self.offset, size, strict=True)
        )
        block = self.array[tuple(region[a] for a in self.axes)]
        return np.transpose(block, np.argsort(self.axes))


def crop_source(
    volume: npt.NDArray[np.float32], mask: npt.NDArray[np.bool_], crop_size: tuple[int, int, int]
) -> CropSource:
    """One scan (RAS order) and its brain mask as a :class:`CropSource`.

    A crop starts at ``clip(centre - crop // 2, 0, shape - crop)`` for a centre in the
    brain's box; that start grows with the centre, so the box's corners bound the voxels
    any crop can show, and only those are kept.
    """
    crop = np.asarray(crop_size)
    # Pad scans smaller than a crop, so every crop has the full size.
    padding = [(0, max(0, int(c) - s)) for c, s in zip(crop, volume.shape, strict=True)]
    where = np.nonzero(mask)  # padding adds voxels after the scan: the box is the same
    if not where[0].size:
        raise ValueError("a training scan has an empty brain mask")
    low = np.array([w.min() for w in where])
    high = np.array([w.max() for w in where])
    shape = np.array(volume.shape) + np.array([after for _, after in padding])
    first = np.clip(low - crop // 2, 0, shape - crop)
    last = np.clip(high - crop // 2, 0, shape - crop) + crop
    padded = np.pad(volume, padding) if any(after for _, after in padding) else volume
    region = tuple(slice(int(a), int(b)) for a, b in zip(first, last, strict=True))
    axes = tuple(int(a) for a in np.argsort(crop, kind="stable"))
    return CropSource(
        array=np.ascontiguousarray(np.transpose(padded[region], axes), dtype=np.float32),
        offset=first,
        shape=shape,
        low=low,
        high=high,
        axes=axes,
    )


class CropSampler:
    """Random crops around the brain of a set of scans (RAS axis order).

    Built from scans in memory, or with :meth:`from_files` from a
    :class:`~mschange.scancache.ScanCache` of them on disk, which gives the same crops
    for the same generator and keeps only one crop at a time in memory.
    """

    def __init__(
        self,
        volumes: Sequence[npt.NDArray[np.float32]],
        masks: Sequence[npt.NDArray[np.bool_]],
        crop_size: tuple[int, int, int],
        rng: np.random.Generator,
    ) -> None:
        self._setup(
            [
                crop_source(volume, mask, crop_size)
                for volume, mask in zip(volumes, masks, strict=True)
            ],
            crop_size,
            rng,
        )

    def _setup(
        self, sources: list[CropSource], crop_size: tuple[int, int, int], rng: np.random.Generator
    ) -> None:
        if not sources:
            raise ValueError("the VAE needs at least one training scan (no pair has change: no)")
        self.crop = np.asarray(crop_size)
        self.rng = rng
        self.sources = sources

    @classmethod
    def from_files(
        cls,
        images: Sequence[str],
        masks: Sequence[str],
        crop_size: tuple[int, int, int],
        rng: np.random.Generator,
        cache: ScanCache,
    ) -> CropSampler:
        """A sampler reading its crops from ``cache``, where each scan is decoded once."""
        sampler = cls.__new__(cls)
        kind = f"vae-crop-source crop={list(crop_size)}"
        sources = []
        for image_path, mask_path in zip(images, masks, strict=True):

            def build(
                image_path: str = image_path, mask_path: str = mask_path
            ) -> tuple[dict[str, npt.NDArray[Any]], dict[str, Any]]:
                volume, mask = _load_scan(image_path, mask_path)
                source = crop_source(volume, mask, crop_size)
                values = {
                    name: getattr(source, name).tolist()
                    for name in ("offset", "shape", "low", "high")
                }
                return {"region": np.asarray(source.array)}, {**values, "axes": list(source.axes)}

            arrays, values = cache.entry(kind, [image_path, mask_path], build)
            sources.append(
                CropSource(
                    array=arrays["region"],
                    axes=tuple(values["axes"]),
                    **{
                        name: np.array(values[name], dtype=np.intp)
                        for name in ("offset", "shape", "low", "high")
                    },
                )
            )
        sampler._setup(sources, crop_size, rng)
        return sampler

    def crop_batch(self, size: int) -> npt.NDArray[np.float32]:
        """(size, 1, X, Y, Z) crops, each centred on a random point of a scan's brain box."""
        batch = np.empty((size, 1, *self.crop), dtype=np.float32)
        for b in range(size):
            source = self.sources[int(self.rng.integers(len(self.sources)))]
            centre = self.rng.integers(source.low, source.high + 1)
            start = np.clip(centre - self.crop // 2, 0, source.shape - self.crop)
            batch[b, 0] = source.crop(start, self.crop)
        return batch


def _load_scan(
    image_path: str, mask_path: str
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    image = nib.load(image_path)
    data, _ = to_ras_axes(
        np.asarray(image.dataobj, dtype=np.float32),  # type: ignore[attr-defined]
        image.affine,  # type: ignore[attr-defined]
    )
    mask_image = nib.load(mask_path)
    mask, _ = to_ras_axes(
        np.asarray(mask_image.dataobj) > 0,  # type: ignore[attr-defined]
        mask_image.affine,  # type: ignore[attr-defined]
    )
    return np.ascontiguousarray(data), np.ascontiguousarray(mask)


def load_training_scans(
    images: Sequence[str], masks: Sequence[str]
) -> tuple[list[npt.NDArray[np.float32]], list[npt.NDArray[np.bool_]]]:
    """Preprocessed scans and their brain masks, in RAS axis order, in memory (training
    itself reads them through a :class:`~mschange.scancache.ScanCache` instead)."""
    volumes, brains = [], []
    for image_path, mask_path in zip(images, masks, strict=True):
        volume, mask = _load_scan(image_path, mask_path)
        volumes.append(volume)
        brains.append(mask)
    return volumes, brains


class VaeTraining(ResumableTraining[VaeTrainingSettings, Vae3d]):
    """The VAE's hooks to :class:`~mschange.training_loop.ResumableTraining`: random
    crops of the training scans and the VAE's loss."""

    name = "VAE"
    unit = "crops"
    columns = LOSS_COLUMNS
    logger = log
    second_curve = ("l1", "L1 reconstruction")
    log_scale = True

    def __init__(
        self,
        images: Sequence[str],
        masks: Sequence[str],
        settings: VaeTrainingSettings,
        *,
        model_path: str | os.PathLike[str],
        loss_tsv: str | os.PathLike[str],
        curve_png: str | os.PathLike[str],
        checkpoint_dir: str | os.PathLike[str],
        device: torch.device,
        on_step: Callable[[int, float], None] | None = None,
    ) -> None:
        super().__init__(
            settings,
            inputs=[*images, *masks],
            checkpoint_dir=checkpoint_dir,
            log_tsv=loss_tsv,
            curve_png=curve_png,
            device=device,
            on_step=on_step,
        )
        self.images, self.masks = images, masks
        self.model_path = model_path

    def build_model(self) -> Vae3d:
        return Vae3d(self.settings.architecture).to(self.device)

    @property
    def samples_per_iteration(self) -> int:
        return self.settings.crops_per_iteration

    def load_data(self, cache: ScanCache) -> None:
        started_loading = time.perf_counter()
        self.sampler = CropSampler.from_files(
            self.images, self.masks, self.settings.crop_size, self.rng, cache
        )
        cache.prune()
        log.info(
            "%d training scans ready in %.0f s (%d decoded now, %.1f GB in %s); crops "
            "of %s voxels (RAS order)",
            len(self.sampler.sources),
            time.perf_counter() - started_loading,
            cache.built,
            cache.size_bytes() / 1e9,
            cache.folder,
            list(self.settings.crop_size),
        )

    def loss(self, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        batch = torch.from_numpy(self.sampler.crop_batch(self.settings.batch_size)).to(self.device)
        with autocast(self.device):
            reconstruction, mu, logvar = self.model(batch)
        loss, l1, kl = vae_loss(reconstruction, batch, mu, logvar, self.settings.kl_weight)
        return loss, {"l1": l1.item(), "kl": kl.item()}

    def end_of_iteration(self, row: dict[str, Any]) -> None:
        log.info(
            "iteration %d/%d: loss %.5f (L1 %.5f, KL %.4f), %.2f crops/s",
            row["iteration"],
            self.settings.iterations,
            row["loss"],
            row["l1"],
            row["kl"],
            row["crops_per_second"],
        )

    def summary_values(self) -> dict[str, Any]:
        return {"training_scans": [str(p) for p in self.images]}

    def curve_title(self) -> str:
        return f"VAE ({self.settings.architecture.encoder} encoder)"

    def save_models(self, summary: dict[str, Any]) -> None:
        save_vae(self.model, self.model_path, training=json.loads(json.dumps(summary)))


def train_vae(
    images: Sequence[str],
    masks: Sequence[str],
    settings: VaeTrainingSettings,
    *,
    model_path: str | os.PathLike[str],
    loss_tsv: str | os.PathLike[str],
    curve_png: str | os.PathLike[str],
    checkpoint_dir: str | os.PathLike[str],
    device: torch.device,
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Train (or resume training) and write the model, the loss table and its curve.

    ``on_step(step, loss)`` is called after each optimiser step (progress display).
    Returns a summary: steps run now, the step resumed from, final loss.
    """
    return VaeTraining(
        images,
        masks,
        settings,
        model_path=model_path,
        loss_tsv=loss_tsv,
        curve_png=curve_png,
        checkpoint_dir=checkpoint_dir,
        device=device,
        on_step=on_step,
    ).run()
