"""Training the change detector on synthetic changes (To et al., section 4).

The paper trains for 60 iterations of 100 SuperMix-augmented no-change pairs,
mini-batch 2, Adam with an initial learning rate of 2e-4 and Keras' time-based decay
``lr / (1 + decay * step)`` with decay 1e-3. A SuperMix sample is (x', x^, y^): the
untouched time point, the synthesised one and the change label; the network gets
x' as the baseline and x^ as the follow-up, as at inference. A lesion-based sample
(:mod:`mschange.synthesis.lesions`) has its own baseline and follow-up, since a
resolving lesion is painted into the baseline.

Volumes are put in RAS axis order, cut to the brain's bounding box (float16) and
written once into uncompressed files in the checkpoint folder, from which each batch
is read (:mod:`mschange.scancache`): memory does not grow with the number of samples.
Training uses whole boxes (``patch_size: None``, the paper's set-up, for GPUs) or
random patches, a share of them centred on a changed voxel so that the rare changes
are seen (for CPUs and small GPUs).
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
import pandas as pd
import torch
from matplotlib.axes import Axes

from mschange.detection.augment import AugmentationSettings, augment_patch
from mschange.detection.loss import LossSettings, detector_loss
from mschange.detection.modelfile import load_detector, save_detector
from mschange.detection.network import ChangeDetector, DetectorArchitecture
from mschange.imagespace import to_ras_axes
from mschange.scancache import DiskArray, ScanCache
from mschange.tiling import round_up
from mschange.torchrun import autocast
from mschange.training_loop import Panel, ResumableTraining

log = logging.getLogger(__name__)

LOG_COLUMNS = [
    "iteration",
    "step",
    "pairs",
    "loss",
    "loss_final",
    "learning_rate",
    "pairs_per_second",
    "elapsed_s",
]
# Written at the iterations where the validation set is scored (NaN elsewhere).
VALIDATION_COLUMNS = ["val_f1", "val_ltpr", "val_ppv", "val_kappa", "val_fp_nochange"]
# Scores the network on the validation set: ``validate(network, device)`` -> val_* values.
Validator = Callable[[ChangeDetector, torch.device], dict[str, float]]


@dataclass(frozen=True)
class DetectorTrainingSettings:
    """Everything that defines a detector training run (the checkpoint fingerprint)."""

    architecture: DetectorArchitecture = field(default_factory=DetectorArchitecture)
    loss: LossSettings = field(default_factory=LossSettings)
    learning_rate: float = 2e-4
    learning_rate_decay: float = 1e-3
    batch_size: int = 2
    iterations: int = 60
    pairs_per_iteration: int = 100
    patch_size: tuple[int, int, int] | None = None  # None: whole brain boxes
    foreground_share: float = 0.5  # patches centred on a changed voxel (patch training)
    checkpoint_every: int = 100
    # Score the validation set every this many iterations (and after the last); the best
    # scoring weights become the model file (0: no validation, the last weights).
    validate_every: int = 0
    seed: int = 0
    # on-the-fly MR-artefact augmentation of the patches (off: the paper trains without)
    augmentation: AugmentationSettings = field(default_factory=AugmentationSettings)

    def __post_init__(self) -> None:
        factor = self.architecture.downsampling
        if self.patch_size is not None and (
            len(self.patch_size) != 3 or any(p % factor or p <= 0 for p in self.patch_size)
        ):
            raise ValueError(
                f"patch_size {list(self.patch_size)} must be 3 positive multiples "
                f"of {factor} (2 to the number of poolings)"
            )
        if self.batch_size < 1 or self.iterations < 1 or self.pairs_per_iteration < 1:
            raise ValueError("batch_size, iterations and pairs_per_iteration must be >= 1")
        if not 0.0 <= self.foreground_share <= 1.0:
            raise ValueError("foreground_share must be in [0, 1]")
        if self.validate_every < 0:
            raise ValueError("validate_every must be >= 0")

    @property
    def steps_per_iteration(self) -> int:
        return math.ceil(self.pairs_per_iteration / self.batch_size)

    @property
    def total_steps(self) -> int:
        return self.iterations * self.steps_per_iteration

    def learning_rate_at(self, step: int) -> float:
        """Keras' time-based decay, ``step`` counted from 0."""
        return self.learning_rate / (1.0 + self.learning_rate_decay * step)

    def as_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["architecture"] = self.architecture.as_dict()
        values["augmentation"] = self.augmentation.as_dict()
        values["patch_size"] = None if self.patch_size is None else list(self.patch_size)
        return values


@dataclass(frozen=True)
class TrainingSample:
    """One training sample's files: what the network gets as baseline and follow-up, and
    the change label. For SuperMix the untouched time point is the baseline and the
    synthesised one the follow-up (To et al.); a lesion-based sample has both."""

    baseline: str
    followup: str
    label: str


@dataclass
class LoadedSample:
    """A sample as training reads it: arrays in memory, or on disk (:func:`cached_sample`)."""

    baseline: npt.NDArray[np.float16] | DiskArray
    followup: npt.NDArray[np.float16] | DiskArray
    label: npt.NDArray[np.uint8] | DiskArray
    changed: npt.NDArray[np.int32] | DiskArray  # (n, 3) indices of changed voxels

    ARRAYS = ("baseline", "followup", "label", "changed")


def _ras(path: str, dtype: type) -> npt.NDArray[Any]:
    image = nib.load(path)
    data, _ = to_ras_axes(np.asarray(image.dataobj), image.affine)  # type: ignore[attr-defined]
    return np.asarray(data, dtype=dtype)


def load_sample(sample: TrainingSample) -> LoadedSample:
    """A sample in RAS axis order, cut to the box where either image has brain (non-zero)."""
    baseline = _ras(sample.baseline, np.float32)
    followup = _ras(sample.followup, np.float32)
    label = _ras(sample.label, np.uint8)
    where = np.nonzero((baseline != 0) | (followup != 0))
    if not where[0].size:
        raise ValueError(f"{sample.followup}: the images are empty (all zero)")
    box = tuple(slice(int(w.min()), int(w.max()) + 1) for w in where)
    label = np.ascontiguousarray(label[box] > 0, dtype=np.uint8)
    return LoadedSample(
        baseline=baseline[box].astype(np.float16),
        followup=followup[box].astype(np.float16),
        label=label,
        changed=np.argwhere(label).astype(np.int32),
    )


SAMPLE_CACHE_KIND = "detector-sample ras box float16"


def cached_sample(sample: TrainingSample, cache: ScanCache) -> LoadedSample:
    """:func:`load_sample`'s arrays, decoded once into ``cache`` and read from there."""

    def build() -> tuple[dict[str, npt.NDArray[Any]], dict[str, Any]]:
        loaded = load_sample(sample)
        return {name: np.asarray(getattr(loaded, name)) for name in LoadedSample.ARRAYS}, {}

    arrays, _ = cache.entry(
        SAMPLE_CACHE_KIND, [sample.baseline, sample.followup, sample.label], build
    )
    return LoadedSample(**arrays)


class PairSampler:
    """Mini-batches of (baseline, follow-up, label) from samples in memory or on disk."""

    def __init__(
        self,
        samples: Sequence[LoadedSample],
        settings: DetectorTrainingSettings,
        rng: np.random.Generator,
    ) -> None:
        if not samples:
            raise ValueError("the detector needs at least one SuperMix sample")
        self.samples = list(samples)
        self.settings = settings
        self.rng = rng
        factor = settings.architecture.downsampling
        if settings.patch_size is None:
            largest = np.max([s.label.shape for s in self.samples], axis=0)
            self.shape = tuple(round_up(int(n), factor) for n in largest)
        else:
            self.shape = tuple(int(p) for p in settings.patch_size)
        self.order: list[int] = []

    def _next_index(self) -> int:
        """Samples in shuffled passes, so every sample is used once per pass."""
        if not self.order:
            self.order = [int(i) for i in self.rng.permutation(len(self.samples))]
        return self.order.pop()

    def _region(self, sample: LoadedSample) -> tuple[slice, ...]:
        shape = np.array(sample.label.shape)
        size = np.array(self.shape)
        if self.settings.patch_size is None:
            return tuple(slice(0, int(n)) for n in shape)
        if len(sample.changed) and self.rng.random() < self.settings.foreground_share:
            centre = sample.changed[int(self.rng.integers(len(sample.changed)))]
        else:
            centre = np.array([self.rng.integers(n) for n in shape])
        start = np.clip(centre - size // 2, 0, np.maximum(shape - size, 0))
        return tuple(slice(int(s), int(s + n)) for s, n in zip(start, size, strict=True))

    def batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        size = self.settings.batch_size
        arrays = np.zeros((3, size, 1, *self.shape), dtype=np.float32)
        for b in range(size):
            sample = self.samples[self._next_index()]
            region = self._region(sample)
            parts = tuple(
                np.asarray(volume[region])
                for volume in (sample.baseline, sample.followup, sample.label)
            )
            if self.settings.augmentation.enabled:
                # from self.rng, which is checkpointed: a resumed run draws the same
                parts = augment_patch(
                    parts[0], parts[1], parts[2], self.settings.augmentation, self.rng
                )
            for channel, part in enumerate(parts):
                arrays[channel, b, 0][tuple(slice(0, n) for n in part.shape)] = part
        baseline, followup, label = (torch.from_numpy(a) for a in arrays)
        return baseline, followup, label


class DetectorTraining(ResumableTraining[DetectorTrainingSettings, ChangeDetector]):
    """The detector's hooks to :class:`~mschange.training_loop.ResumableTraining`: its
    samples, its learning-rate decay, validation and the best weights kept."""

    name = "detector"
    unit = "pairs"
    columns = LOG_COLUMNS + VALIDATION_COLUMNS
    logger = log
    second_curve = ("loss_final", "final map")
    na_rep = "NaN"

    def __init__(
        self,
        samples: Sequence[TrainingSample],
        settings: DetectorTrainingSettings,
        *,
        model_path: str | os.PathLike[str],
        log_tsv: str | os.PathLike[str],
        curve_png: str | os.PathLike[str],
        checkpoint_dir: str | os.PathLike[str],
        device: torch.device,
        metadata: dict[str, Any] | None = None,
        on_step: Callable[[int, float], None] | None = None,
        validate: Validator | None = None,
        last_model_path: str | os.PathLike[str] | None = None,
        initial_model: str | os.PathLike[str] | None = None,
    ) -> None:
        files = [path for s in samples for path in (s.baseline, s.followup, s.label)]
        if initial_model is not None:
            files.append(str(initial_model))
        super().__init__(
            settings,
            inputs=files,
            checkpoint_dir=checkpoint_dir,
            log_tsv=log_tsv,
            curve_png=curve_png,
            device=device,
            on_step=on_step,
        )
        self.samples = list(samples)
        self.model_path, self.last_model_path = model_path, last_model_path
        self.metadata = metadata or {}
        self.validate = validate
        self.initial_model = initial_model
        self.best: dict[str, Any] = {}  # the best validated iteration's row and weights
        self.learning_rate = settings.learning_rate

    def build_model(self) -> ChangeDetector:
        model = ChangeDetector(self.settings.architecture).to(self.device)
        if self.initial_model is not None:
            start, _ = load_detector(self.initial_model)
            if start.architecture != self.settings.architecture:
                raise ValueError(
                    f"{self.initial_model}: its architecture {start.architecture} "
                    f"is not the one to train, {self.settings.architecture}"
                )
            model.load_state_dict(start.state_dict())
        return model

    @property
    def samples_per_iteration(self) -> int:
        return self.settings.pairs_per_iteration

    def load_data(self, cache: ScanCache) -> None:
        started_loading = time.perf_counter()
        loaded = [cached_sample(s, cache) for s in self.samples]
        cache.prune()
        self.sampler = PairSampler(loaded, self.settings, self.rng)
        log.info(
            "%d training samples ready in %.0f s (%d decoded now, %.1f GB in %s); "
            "training on %s voxels per pair",
            len(loaded),
            time.perf_counter() - started_loading,
            cache.built,
            cache.size_bytes() / 1e9,
            cache.folder,
            list(self.sampler.shape),
        )

    def loss(self, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        self.learning_rate = self.settings.learning_rate_at(step - 1)
        for group in self.optimiser.param_groups:
            group["lr"] = self.learning_rate
        baseline, followup, label = (t.to(self.device) for t in self.sampler.batch())
        with autocast(self.device):
            logits = self.model(baseline, followup)
        loss, parts = detector_loss(logits, label, self.settings.loss, self.model)
        return loss, {"loss_final": parts["final"]}

    def iteration_values(self) -> dict[str, Any]:
        return {"learning_rate": self.learning_rate}

    def end_of_iteration(self, row: dict[str, Any]) -> None:
        settings = self.settings
        log.info(
            "iteration %d/%d: loss %.4f (final map %.4f), lr %.3g, %.2f pairs/s",
            row["iteration"],
            settings.iterations,
            row["loss"],
            row["loss_final"],
            row["learning_rate"],
            row["pairs_per_second"],
        )
        if settings.validate_every and (
            row["iteration"] % settings.validate_every == 0 or row["step"] == settings.total_steps
        ):
            self._validate(row)

    def _validate(self, row: dict[str, Any]) -> None:
        assert self.validate is not None
        started = time.perf_counter()
        self.model.eval()
        row.update(self.validate(self.model, self.device))
        self.model.train()
        log.info(
            "iteration %d: validation lesion F1 %.3f (LTPR %.2f, PPV %.2f at kappa %g, "
            "%.1f detections per no-change pair), %.0f s",
            row["iteration"],
            row["val_f1"],
            row["val_ltpr"],
            row["val_ppv"],
            row["val_kappa"],
            row["val_fp_nochange"],
            time.perf_counter() - started,
        )
        if not self.best or row["val_f1"] > self.best["row"]["val_f1"]:
            self.best["row"] = dict(row)
            self.best["state"] = {
                k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()
            }

    def state(self) -> dict[str, Any]:
        best = self.best
        return {
            "sampler_order": json.dumps(self.sampler.order),
            **({"best_model": best["state"], "best_row": json.dumps(best["row"])} if best else {}),
        }

    def restore(self, saved: dict[str, Any]) -> None:
        self.sampler.order = json.loads(saved["sampler_order"])
        if "best_model" in saved:
            self.best = {"row": json.loads(saved["best_row"]), "state": saved["best_model"]}

    def summary_values(self) -> dict[str, Any]:
        best = self.best
        return {
            "training_samples": [s.followup for s in self.samples],
            "initial_model": None if self.initial_model is None else str(self.initial_model),
            # The kept weights: the best validated iteration, else the last.
            "selected": (
                {"by": "validation", **best["row"]}
                if best
                else {"by": "last", "iteration": self.settings.iterations}
            ),
        }

    def curve_title(self) -> str:
        return "change detector"

    def more_curves(self, table: pd.DataFrame) -> Panel | None:
        validated = table.dropna(subset=["val_f1"])
        if not len(validated):
            return None
        selected = self.best["row"]["iteration"] if self.best else None

        def panel(axis: Axes) -> None:
            for column, name in (
                ("val_f1", "lesion F1 (To)"),
                ("val_ltpr", "LTPR"),
                ("val_ppv", "PPV"),
            ):
                axis.plot(validated["iteration"], validated[column], marker="o", label=name)
            if selected is not None:
                axis.axvline(
                    selected, color="grey", linestyle="--", label=f"kept: iteration {selected}"
                )
            axis.set_xlabel("iteration")
            axis.set_ylabel("validation set (pooled, best threshold)")
            axis.set_ylim(0, 1)
            axis.set_title("validation")
            axis.legend(fontsize="small")

        return panel

    def save_models(self, summary: dict[str, Any]) -> None:
        training = json.loads(json.dumps(summary))
        if self.last_model_path is not None:
            save_detector(
                self.model,
                self.last_model_path,
                training={
                    **training,
                    "selected": {"by": "last", "iteration": self.settings.iterations},
                },
                metadata=self.metadata,
            )
        if self.best:
            self.model.load_state_dict(self.best["state"])
            log.info(
                "kept the weights of iteration %d (validation lesion F1 %.3f at kappa %g)",
                self.best["row"]["iteration"],
                self.best["row"]["val_f1"],
                self.best["row"]["val_kappa"],
            )
        save_detector(self.model, self.model_path, training=training, metadata=self.metadata)


def train_detector(
    samples: Sequence[TrainingSample],
    settings: DetectorTrainingSettings,
    *,
    model_path: str | os.PathLike[str],
    log_tsv: str | os.PathLike[str],
    curve_png: str | os.PathLike[str],
    checkpoint_dir: str | os.PathLike[str],
    device: torch.device,
    metadata: dict[str, Any] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    validate: Validator | None = None,
    last_model_path: str | os.PathLike[str] | None = None,
    initial_model: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Train (or resume training) and write the model file, the log and its curve.

    ``metadata`` (config, preprocessing parameters) is stored in the model file.
    ``on_step(step, loss)`` runs after every optimiser step. With ``validate`` and
    ``settings.validate_every``, the validation set is scored every that many
    iterations and after the last; the model file gets the best-scoring weights (the
    first of equals) and ``last_model_path`` the last ones (nnU-Net keeps both).
    Without, both get the last weights. ``initial_model`` (a model file) gives the
    starting weights instead of a random initialisation (fine-tuning); its
    architecture must be ``settings.architecture``. Returns a summary.
    """
    if settings.validate_every and validate is None:
        raise ValueError("validate_every is set but no validation set was given")
    return DetectorTraining(
        samples,
        settings,
        model_path=model_path,
        log_tsv=log_tsv,
        curve_png=curve_png,
        checkpoint_dir=checkpoint_dir,
        device=device,
        metadata=metadata,
        on_step=on_step,
        validate=validate,
        last_model_path=last_model_path,
        initial_model=initial_model,
    ).run()
