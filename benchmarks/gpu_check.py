"""GPU check: the CUDA code paths timed once, in one call, into one table (issue 15, item 4).

Every part runs the package's own functions on a preprocessed pair (after skull
stripping, so neither HD-BET nor its weights are needed):

* VAE training (``train_vae``) in float32 and under bf16 autocast: crops per second;
* SuperMix: the perturbed VAE reconstruction of one volume (``reconstruct_volume``,
  median of 3) and one whole sample written to disk (``supermix_step``: SLIC,
  reconstruction, mixing, NIfTI files);
* detector training (``train_detector``) in float32 and under bf16 autocast: pairs per
  second;
* prediction of one pair with the shipped detector (``load_detector`` then
  ``predict_with_network``: network, components, lesion table, native grid, files;
  median of 3 after one warm-up);
* the paper preset's (``presets/paper.yaml``) VAE and detector training time,
  projected from the measured throughput at the precision the workflow trains in
  (bf16 autocast on CUDA, float32 on CPU).

Peak memory is recorded per part: GPU memory allocated by PyTorch on CUDA, the
process's peak resident set on CPU. The package trains and predicts under bf16
autocast on CUDA (``mschange.torchrun.autocast``); for the float32 and bf16 training
rows this script swaps that helper in the training module for the time of the run.
On CPU the bf16 rows use PyTorch's CPU autocast (the package itself stays in float32
there), which exercises the same mixed-precision code on machines without a GPU.

Full mode (the default on CUDA) uses the paper's geometry: 192x192x16 VAE crops,
whole-brain-box detector training with the paper's network, on an adult-sized 1 mm
phantom pair. Quick mode (the default on CPU, or ``--quick``) keeps everything tiny
so that CI can run it in a minute or two; its projections are not the paper's.

Without ``--pair``, the pair is a deterministic synthetic 1 mm phantom (brain,
cortex, ventricles, texture, stable lesions and new ones at the follow-up), written
with the workflow's file names; the demo generator needs nilearn's templates, which a
bare GPU machine lacks. ``--pair DIR`` uses a preprocessed pair of a workflow run
instead (e.g. ``results/preproc/sub-demo04`` after ``make demo``).

    bash benchmarks/gpu_check.sh --device cuda --out DIR     # the CUDA tests, then this
    python benchmarks/gpu_check.py --device cpu --quick --threads 1 --out DIR

Writes ``gpu_check.md`` (the table) and ``gpu_check.json`` to ``--out`` after every
part, so that a run stopped at its time limit still leaves what it measured. Exits
with 1 when a part failed (the table says which and why).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import re
import resource
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from unittest import mock

import numpy as np
import torch
import yaml
from scipy import ndimage

from mschange.config import section_defaults
from mschange.detection import training as detector_training
from mschange.detection.augment import AugmentationSettings
from mschange.detection.modelfile import load_detector
from mschange.detection.outputs import prediction_paths
from mschange.detection.steps import predict_with_network, training_settings
from mschange.detection.training import DetectorTrainingSettings, TrainingSample, train_detector
from mschange.io import brain_intersection, load_float_image, save_nifti
from mschange.pretrained import inference_for, resolve_model
from mschange.synthesis import vae_training
from mschange.synthesis.reconstruction import reconstruct_volume
from mschange.synthesis.steps import supermix_settings, supermix_step, tiling_settings, vae_settings
from mschange.synthesis.vae import Vae3d, load_vae, save_vae
from mschange.synthesis.vae_training import train_vae
from mschange.torchrun import flush_denormals, job_threads, resolve_device

REPO = Path(__file__).resolve().parents[1]
SUBJECT = "gpucheck"
GIB = 2.0**30

# Row keys, in table order. Each measured row expects a positive number.
MEASURED = (
    "vae_fp32",
    "vae_bf16",
    "supermix_reconstruction",
    "supermix_sample",
    "detector_fp32",
    "detector_bf16",
    "predict_pair",
    "predict_network",
    "paper_vae_hours",
    "paper_detector_hours",
)
ROW_KEYS = ("cuda_tests", *MEASURED)


@dataclass(frozen=True)
class Geometry:
    """Sizes and step counts of one mode."""

    name: str
    grid: tuple[int, int, int]  # phantom grid, 1 mm voxels
    brain_semi_axes_mm: tuple[float, float, float]
    vae_crop: tuple[int, int, int] | None  # None: the paper preset's crop
    detector_patch: tuple[int, int, int] | None  # None: whole brain boxes (the paper's)
    vae_steps: tuple[int, int]  # (warm-up, timed at most)
    detector_steps: tuple[int, int]
    step_time_cap_s: float  # a timed loop stops early past this
    reconstruction_repeats: int = 3
    predict_repeats: int = 3


FULL = Geometry(
    "full",
    grid=(192, 224, 192),
    brain_semi_axes_mm=(70.0, 86.0, 68.0),
    vae_crop=None,
    detector_patch=None,
    vae_steps=(3, 40),
    detector_steps=(3, 20),
    step_time_cap_s=60.0,
)
QUICK = Geometry(
    "quick",
    grid=(72, 88, 72),
    brain_semi_axes_mm=(28.0, 35.0, 26.0),
    vae_crop=(64, 64, 16),
    detector_patch=(32, 32, 32),
    vae_steps=(1, 4),
    detector_steps=(1, 3),
    step_time_cap_s=20.0,
)


# ------------------------------------------------------------------ the pair


@dataclass(frozen=True)
class PairFiles:
    """A preprocessed pair with the workflow's file names (follow-up grid)."""

    baseline: Path
    followup: Path
    baseline_mask: Path
    followup_mask: Path
    change_label: Path | None = None  # the phantom's own truth, a training sample

    @property
    def masks(self) -> list[Path]:
        return [self.baseline_mask, self.followup_mask]


def _sphere(volume: np.ndarray, centre: np.ndarray, radius: float, value: float) -> None:
    low = np.maximum(np.floor(centre - radius).astype(int), 0)
    high = np.minimum(np.ceil(centre + radius).astype(int) + 1, volume.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(low, high, strict=True))
    axes = np.ogrid[box]
    inside = sum((a - c) ** 2 for a, c in zip(axes, centre, strict=True)) <= radius**2
    volume[box][inside] = value


def phantom_pair(
    folder: Path,
    grid: tuple[int, int, int],
    semi_axes_mm: tuple[float, float, float],
    seed: int = 0,
) -> PairFiles:
    """A skull-stripped, normalised FLAIR-like 1 mm pair on one (LPS-stored) grid: an
    ellipsoid brain (white matter, brighter cortex, CSF at its surface, dark
    ventricles), a smooth texture, stable bright lesions, and new lesions at the
    follow-up (their mask is the change label). Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    centre = (np.asarray(grid, dtype=np.float32) - 1) / 2
    axes = np.ogrid[tuple(slice(0, n) for n in grid)]
    offsets = [(a.astype(np.float32) - c) for a, c in zip(axes, centre, strict=True)]
    radius = np.sqrt(sum((o / s) ** 2 for o, s in zip(offsets, semi_axes_mm, strict=True)))
    brain = radius <= 1.0
    image = np.full(grid, 0.5, dtype=np.float32)  # white matter
    image[radius > 0.86] = 0.64  # cortex
    image[radius > 0.97] = 0.3  # CSF at the surface
    a, b, c = semi_axes_mm
    for side in (-1.0, 1.0):  # lateral ventricles
        ventricle = (
            np.sqrt(
                ((offsets[0] - side * 0.1 * a) / (0.07 * a)) ** 2
                + (offsets[1] / (0.25 * b)) ** 2
                + ((offsets[2] - 0.1 * c) / (0.14 * c)) ** 2
            )
            <= 1.0
        )
        image[ventricle] = 0.15
    texture = ndimage.gaussian_filter(rng.standard_normal(grid, dtype=np.float32), 1.5)
    image += 0.03 * texture / max(float(texture.std()), 1e-6)
    del texture, radius

    def lesion_centres(n: int) -> np.ndarray:
        direction = rng.normal(size=(n, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        depth = rng.uniform(0.2, 0.65, size=(n, 1))
        return centre + direction * depth * np.asarray(semi_axes_mm)

    for point in lesion_centres(10):  # stable lesions
        _sphere(image, point, float(rng.uniform(1.5, 4.0)), 0.9)
    followup = image.copy()
    label = np.zeros(grid, dtype=np.uint8)
    for point in lesion_centres(5):  # new at the follow-up
        size = float(rng.uniform(2.0, 4.5))
        _sphere(followup, point, size, 0.88)
        _sphere(label, point, size, 1)

    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[:3, 3] = [centre[0], centre[1], -centre[2]]
    stem = folder / f"sub-{SUBJECT}"
    files = PairFiles(
        baseline=Path(f"{stem}_tp-baseline_space-followup_desc-preproc_FLAIR.nii.gz"),
        followup=Path(f"{stem}_tp-followup_space-followup_desc-preproc_FLAIR.nii.gz"),
        baseline_mask=Path(f"{stem}_tp-baseline_space-followup_desc-brain_mask.nii.gz"),
        followup_mask=Path(f"{stem}_tp-followup_desc-brain_mask.nii.gz"),
        change_label=Path(f"{stem}_desc-change_mask.nii.gz"),
    )
    folder.mkdir(parents=True, exist_ok=True)
    for data, path in ((image, files.baseline), (followup, files.followup)):
        noisy = data + 0.01 * rng.standard_normal(grid, dtype=np.float32)
        save_nifti(np.where(brain, np.clip(noisy, 0.0, 1.0), 0.0), affine, path)
    for path in files.masks:
        save_nifti(brain, affine, path, dtype=np.uint8)
    assert files.change_label is not None
    save_nifti(label * brain, affine, files.change_label, dtype=np.uint8)
    return files


def workflow_pair(folder: Path) -> PairFiles:
    """A preprocessed pair of a workflow run: ``results/preproc/sub-<id>/``."""

    def one(pattern: str) -> Path:
        found = sorted(folder.glob(pattern))
        if len(found) != 1:
            raise FileNotFoundError(f"{folder}: expected one file {pattern}, found {len(found)}")
        return found[0]

    return PairFiles(
        baseline=one("*_tp-baseline_space-followup_desc-preproc_FLAIR.nii.gz"),
        followup=one("*_tp-followup_space-followup_desc-preproc_FLAIR.nii.gz"),
        baseline_mask=one("*_tp-baseline_space-followup_desc-brain_mask.nii.gz"),
        followup_mask=one("*_tp-followup_desc-brain_mask.nii.gz"),
    )


# ------------------------------------------------------------------ measuring helpers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _vm_hwm_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory of a block: PyTorch's GPU allocations on CUDA; on CPU the process's
    peak resident set (reset first where Linux allows it, else the peak so far)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.gib: float | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            _sync(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            with contextlib.suppress(OSError):
                Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            _sync(self.device)
            self.gib = torch.cuda.max_memory_allocated(self.device) / GIB
        else:
            peak = _vm_hwm_bytes()
            if peak is None:  # not Linux: ru_maxrss is in kB on Linux, bytes on macOS
                scale = 1 if sys.platform == "darwin" else 1024
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
            self.gib = peak / GIB


class EnoughSteps(Exception):
    """Raised by :class:`StepTimer` to stop a training run once it is timed."""


class StepTimer:
    """``on_step`` callback of the training functions: when each optimiser step ended.

    The package's loops read the loss back (``loss.item()``) before calling it, so on
    CUDA every stamp follows a synchronisation. After ``warmup`` steps, at most
    ``timed`` steps are timed, fewer when they take longer than ``cap_s`` (at least 2).
    """

    def __init__(self, warmup: int, timed: int, cap_s: float) -> None:
        self.warmup, self.timed, self.cap_s = max(1, warmup), max(1, timed), cap_s
        self.stamps: list[float] = []
        self.losses: list[float] = []

    def __call__(self, step: int, loss: float) -> None:
        self.stamps.append(time.perf_counter())
        self.losses.append(float(loss))
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss {loss} at step {step}")
        counted = len(self.stamps) - self.warmup
        # The last step ends the run by itself (the model file and the log get written).
        if (
            2 <= counted < self.timed
            and self.stamps[-1] - self.stamps[self.warmup - 1] > self.cap_s
        ):
            raise EnoughSteps

    @property
    def steps(self) -> int:
        return self.warmup + self.timed

    def rate(self, per_step: int) -> float:
        counted = len(self.stamps) - self.warmup
        if counted < 1:
            raise RuntimeError(f"only {len(self.stamps)} steps ran; nothing was timed")
        return counted * per_step / (self.stamps[-1] - self.stamps[self.warmup - 1])


@contextlib.contextmanager
def training_precision(module: ModuleType, bf16: bool) -> Iterator[None]:
    """Train in float32 or under bf16 autocast: swaps the module's ``autocast`` helper
    (on CUDA the bf16 one is what the package uses anyway). Fails when the training
    loop did not call it, so that a refactored loop cannot silently time the wrong
    precision."""
    calls = []

    def choose(device: torch.device) -> contextlib.AbstractContextManager[object]:
        calls.append(device)
        if bf16:
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return torch.autocast(device.type, enabled=False)

    with mock.patch.object(module, "autocast", choose):
        yield
    if not calls:
        raise RuntimeError(
            f"{module.__name__} never called its autocast helper: the "
            "precision of this measurement is unknown"
        )


def paper_config(repo: Path = REPO) -> dict[str, Any]:
    """config.yaml with presets/paper.yaml on top, as Snakemake merges ``--configfile``
    (read without the schema check, whose jsonschema a bare GPU machine lacks)."""
    from mschange.config import merge_config

    config = yaml.safe_load((repo / "config.yaml").read_text())
    return merge_config(config, yaml.safe_load((repo / "presets" / "paper.yaml").read_text()))


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if value == 0 or abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{max(0, digits - 1 - math.floor(math.log10(abs(value))))}f}"


def _size(shape: Any) -> str:
    return "×".join(f"{n:g}" for n in shape)


# ------------------------------------------------------------------ the check


@dataclass
class Row:
    key: str
    label: str
    unit: str
    value: float | None = None
    text: str | None = None  # shown instead of the value (tests, errors, skips)
    peak_memory_gib: float | None = None
    setting: str = ""
    seconds: float | None = None  # wall time of the part


@dataclass
class Check:
    device: torch.device
    geometry: Geometry
    out: Path
    work: Path
    threads: int
    budget_s: float
    pair: PairFiles | None = None
    pair_source: str = ""
    rows: dict[str, Row] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        config = paper_config()
        self.config = config
        self.vae_paper = vae_settings(
            config["synthesis"]["vae"], encoder=str(config["synthesis"]["vae"]["encoder"]), seed=0
        )
        self.detector_paper = training_settings(config["detector"], seed=0)
        self.supermix = supermix_settings(config["synthesis"]["supermix"])
        self.cuda = self.device.type == "cuda"
        precision = "bf16 autocast" if self.cuda else "float32"
        memory = "peak GPU memory allocated" if self.cuda else "peak resident memory"
        self.memory_kind = memory
        self.workflow_precision = precision
        labels = {
            "cuda_tests": ("CUDA tests (tests/test_cuda.py)", ""),
            "vae_fp32": ("VAE training, float32", "crops/s"),
            "vae_bf16": ("VAE training, bf16 autocast", "crops/s"),
            "supermix_reconstruction": (
                "SuperMix: perturbed VAE reconstruction of one "
                "volume (median of "
                f"{self.geometry.reconstruction_repeats})",
                "s",
            ),
            "supermix_sample": ("SuperMix: one sample (SLIC, reconstruction, mixing, files)", "s"),
            "detector_fp32": ("detector training, float32", "pairs/s"),
            "detector_bf16": ("detector training, bf16 autocast", "pairs/s"),
            "predict_pair": (
                "prediction of one pair, shipped detector (median of "
                f"{self.geometry.predict_repeats})",
                "s",
            ),
            "predict_network": ("  of which the network over the brain box", "s"),
            "paper_vae_hours": (f"paper preset: VAE training, projected ({precision})", "h"),
            "paper_detector_hours": (
                f"paper preset: detector training, projected ({precision})",
                "h",
            ),
        }
        for key in ROW_KEYS:
            label, unit = labels[key]
            self.rows[key] = Row(key, label, unit)

    # -------------------------------------------------------------- bookkeeping

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def part(self, keys: tuple[str, ...], run: Callable[[], None]) -> None:
        """Run one part; a failure is written into its rows and the check goes on."""
        if self.elapsed() > self.budget_s:
            for key in keys:
                self.rows[key].text = f"skipped: past the {self.budget_s:.0f} s budget"
            self.errors.append(f"{', '.join(keys)}: skipped (time budget)")
            self.write()
            return
        print(f"[{self.elapsed():6.1f} s] {', '.join(keys)}", flush=True)
        started = time.perf_counter()
        try:
            run()
        except Exception as error:  # recorded, so the other parts still run
            message = f"{type(error).__name__}: {error}".splitlines()[0][:300]
            traceback.print_exc()
            for key in keys:
                if self.rows[key].value is None and self.rows[key].text is None:
                    self.rows[key].text = f"error: {message}"
            self.errors.append(f"{', '.join(keys)}: {message}")
        finally:
            if self.cuda:
                with contextlib.suppress(RuntimeError):  # a broken CUDA context
                    torch.cuda.empty_cache()
        for key in keys:
            self.rows[key].seconds = round(time.perf_counter() - started, 1)
        self.write()

    def set(
        self, key: str, value: float, *, memory: float | None = None, setting: str = ""
    ) -> None:
        row = self.rows[key]
        row.value, row.peak_memory_gib, row.setting = float(value), memory, setting
        print(
            f"    {row.label}: {_fmt(value)} {row.unit}"
            + ("" if memory is None else f", {memory:.2f} GiB"),
            flush=True,
        )

    # -------------------------------------------------------------- parts

    def make_pair(self, source: Path | None) -> None:
        if source is None:
            self.pair = phantom_pair(
                self.work / "pair", self.geometry.grid, self.geometry.brain_semi_axes_mm
            )
            self.pair_source = (
                "synthetic phantom, brain semi-axes "
                f"{'/'.join(f'{s:g}' for s in self.geometry.brain_semi_axes_mm)}"
                " mm"
            )
        else:
            self.pair = workflow_pair(source)
            self.pair_source = str(source)
        followup, image = load_float_image(self.pair.followup)
        brain = brain_intersection(*self.pair.masks)
        where = np.nonzero(brain)
        box = [int(w.max() - w.min() + 1) for w in where]
        self.details["pair"] = {
            "source": self.pair_source,
            "shape": list(followup.shape),
            "voxel_mm": [
                round(float(v), 3)
                for v in np.sqrt((np.asarray(image.affine)[:3, :3] ** 2).sum(axis=0))
            ],
            "brain_ml": round(
                float(brain.sum()) * float(abs(np.linalg.det(image.affine[:3, :3]))) / 1000, 1
            ),
            "brain_box": box,
        }

    def vae_training(self, bf16: bool) -> None:
        assert self.pair is not None
        tag = "bf16" if bf16 else "fp32"
        warmup, timed = self.geometry.vae_steps
        timer = StepTimer(warmup, timed, self.geometry.step_time_cap_s)
        settings = dataclasses.replace(
            self.vae_paper,
            crop_size=self.geometry.vae_crop or self.vae_paper.crop_size,
            iterations=1,
            crops_per_iteration=timer.steps * self.vae_paper.batch_size,
            checkpoint_every=10**9,
        )
        folder = self.work / f"vae-{tag}"
        with (
            training_precision(vae_training, bf16),
            PeakMemory(self.device) as memory,
            contextlib.suppress(EnoughSteps),
        ):
            train_vae(
                [str(self.pair.baseline), str(self.pair.followup)],
                [str(m) for m in self.pair.masks],
                settings,
                model_path=folder / "vae.pt",
                loss_tsv=folder / "loss.tsv",
                curve_png=folder / "loss.png",
                checkpoint_dir=folder / "checkpoints",
                device=self.device,
                on_step=timer,
            )
        if (folder / "vae.pt").is_file():
            load_vae(folder / "vae.pt", self.device)  # the saved file reads back
        arch = settings.architecture
        self.set(
            f"vae_{tag}",
            timer.rate(settings.batch_size),
            memory=memory.gib,
            setting=f"crops {_size(settings.crop_size)}, batch {settings.batch_size}, "
            f"channels {'/'.join(map(str, arch.channels))}, "
            f"{len(timer.stamps) - timer.warmup} timed steps after "
            f"{timer.warmup}",
        )
        self.details[f"vae_{tag}"] = {"losses": timer.losses, "settings": settings.as_dict()}

    def vae_for_supermix(self) -> Path:
        """A VAE file of the paper's architecture: a trained one above, else untrained
        (the weights do not change the arithmetic)."""
        for tag in ("bf16", "fp32"):
            path = self.work / f"vae-{tag}" / "vae.pt"
            if path.is_file():
                return path
        torch.manual_seed(0)
        return save_vae(
            Vae3d(self.vae_paper.architecture), self.work / "vae-untrained.pt", training={}
        )

    def supermix_parts(self) -> None:
        assert self.pair is not None
        crop = self.geometry.vae_crop or self.vae_paper.crop_size
        tiling = tiling_settings(crop, self.config["synthesis"]["supermix"])
        model_path = self.vae_for_supermix()
        vae, _ = load_vae(model_path, self.device)
        data, image = load_float_image(self.pair.followup)
        brain = brain_intersection(*self.pair.masks)
        times = []
        repeats = self.geometry.reconstruction_repeats + (1 if self.cuda else 0)
        with PeakMemory(self.device) as memory:
            for seed in range(repeats):
                _sync(self.device)
                started = time.perf_counter()
                reconstruction = reconstruct_volume(
                    vae,
                    data,
                    brain,
                    image.affine,
                    seed=seed,
                    delta=self.supermix.delta,
                    tiling=tiling,
                    device=self.device,
                )
                _sync(self.device)
                times.append(time.perf_counter() - started)
        if not np.isfinite(reconstruction).all():
            raise FloatingPointError("the reconstruction has non-finite voxels")
        timed = times[1:] if self.cuda else times
        self.set(
            "supermix_reconstruction",
            statistics.median(timed),
            memory=memory.gib,
            setting=f"tiles {_size(tiling.tile_size)}, overlap {tiling.overlap} (at most "
            "half a tile)",
        )
        self.details["supermix_reconstruction_s"] = [round(t, 3) for t in times]

        folder = self.work / "supermix"
        outputs = {
            kind: [folder / f"sample_{kind}.nii.gz"]
            for kind in ("synthesised", "reference", "label")
        }
        outputs["record"] = [folder / "sample.json"]
        folder.mkdir(parents=True, exist_ok=True)
        with PeakMemory(self.device) as memory:
            started = time.perf_counter()
            supermix_step(
                {"baseline": self.pair.baseline, "followup": self.pair.followup},
                self.pair.masks,
                model_path,
                outputs,
                subject=SUBJECT,
                seed=0,
                settings=self.supermix,
                tiling=tiling,
                device=str(self.device),
                threads=self.threads,
            )
            seconds = time.perf_counter() - started
        record = json.loads(outputs["record"][0].read_text())
        self.set(
            "supermix_sample",
            seconds,
            memory=memory.gib,
            setting=f"n_seg {record['n_segments']} -> {record['n_superpixels']} "
            f"superpixels, {record['replaced_voxels']} voxels replaced",
        )
        self.details["supermix_record"] = {
            k: record[k]
            for k in ("n_segments", "n_superpixels", "replaced_voxels", "synthesised_timepoint")
        }

    def training_samples(self) -> list[TrainingSample]:
        assert self.pair is not None
        samples = []
        if self.pair.change_label is not None:
            samples.append(
                TrainingSample(
                    str(self.pair.baseline), str(self.pair.followup), str(self.pair.change_label)
                )
            )
        folder = self.work / "supermix"
        if (folder / "sample_label.nii.gz").is_file():
            samples.append(
                TrainingSample(
                    str(folder / "sample_reference.nii.gz"),
                    str(folder / "sample_synthesised.nii.gz"),
                    str(folder / "sample_label.nii.gz"),
                )
            )
        if not samples:
            raise RuntimeError(
                "no training sample: the pair has no change label and the SuperMix part wrote none"
            )
        return samples

    def detector_training(self, bf16: bool) -> None:
        tag = "bf16" if bf16 else "fp32"
        warmup, timed = self.geometry.detector_steps
        timer = StepTimer(warmup, timed, self.geometry.step_time_cap_s)
        paper: DetectorTrainingSettings = self.detector_paper
        settings = dataclasses.replace(
            paper,
            iterations=1,
            pairs_per_iteration=timer.steps * paper.batch_size,
            patch_size=self.geometry.detector_patch,
            checkpoint_every=10**9,
            validate_every=0,
            augmentation=AugmentationSettings(),
        )
        folder = self.work / f"detector-{tag}"
        samples = self.training_samples()
        with (
            training_precision(detector_training, bf16),
            PeakMemory(self.device) as memory,
            contextlib.suppress(EnoughSteps),
        ):
            train_detector(
                samples,
                settings,
                model_path=folder / "model.pt",
                log_tsv=folder / "log.tsv",
                curve_png=folder / "curve.png",
                checkpoint_dir=folder / "checkpoints",
                device=self.device,
                # What a model file must say (mschange.detection.modelfile.check_payload).
                metadata={"preprocessing": section_defaults("preprocessing", resolution_mm=1.0)},
                on_step=timer,
            )
        if (folder / "model.pt").is_file():
            load_detector(folder / "model.pt", self.device)
        shape = self.detector_shape(samples, settings)
        arch = settings.architecture
        self.set(
            f"detector_{tag}",
            timer.rate(settings.batch_size),
            memory=memory.gib,
            setting=f"{'whole brain boxes' if settings.patch_size is None else 'patches'}"
            f" {_size(shape)}, batch {settings.batch_size}, channels "
            f"{'/'.join(map(str, arch.channels))} ({arch.modules_per_block} "
            f"modules per block), {len(timer.stamps) - timer.warmup} timed "
            f"steps after {timer.warmup}",
        )
        self.details[f"detector_{tag}"] = {
            "losses": timer.losses,
            "shape": list(shape),
            "samples": len(samples),
        }

    def detector_shape(
        self, samples: list[TrainingSample], settings: DetectorTrainingSettings
    ) -> tuple[int, ...]:
        """The network's input size, as the package's sampler picks it."""
        if settings.patch_size is not None:
            return tuple(settings.patch_size)
        if "detector_box" not in self.details:
            loaded = [detector_training.load_sample(s) for s in samples]
            sampler = detector_training.PairSampler(loaded, settings, np.random.default_rng(0))
            self.details["detector_box"] = list(sampler.shape)
        return tuple(self.details["detector_box"])

    def prediction(self) -> None:
        assert self.pair is not None
        model_path = resolve_model(None)
        folder = self.work / "predict"
        totals, networks, records = [], [], []
        repeats = self.geometry.predict_repeats + 1  # the first is a warm-up
        with PeakMemory(self.device) as memory:
            for _ in range(repeats):
                _sync(self.device)
                started = time.perf_counter()
                network, metadata = load_detector(model_path, self.device)
                record = predict_with_network(
                    network,
                    self.pair.baseline,
                    self.pair.followup,
                    self.pair.masks,
                    self.pair.followup,
                    prediction_paths(str(folder), SUBJECT),
                    subject=SUBJECT,
                    settings=inference_for(metadata),
                    device=self.device,
                )
                _sync(self.device)
                totals.append(time.perf_counter() - started)
                networks.append(float(record["seconds_network"]))
                records.append(record)
        name = metadata.get("name", model_path.parent.name)
        self.set(
            "predict_pair",
            statistics.median(totals[1:]),
            memory=memory.gib,
            setting=f"{name}: loading, network, components, lesion table, native grid, "
            f"files; first (cold) run {totals[0]:.2f} s",
        )
        self.set(
            "predict_network",
            statistics.median(networks[1:]),
            setting=f"{records[-1]['changes']} change(s) found",
        )
        self.details["predict"] = {
            "model": str(model_path),
            "seconds_total": totals,
            "seconds_network": networks,
            "settings": records[-1]["settings"],
        }

    def projections(self) -> None:
        tag = "bf16" if self.cuda else "fp32"
        quick = (
            ""
            if self.geometry.vae_crop is None
            else (
                "; quick mode: measured on smaller crops than the paper's, not a projection "
                "of its run"
            )
        )
        vae = self.rows[f"vae_{tag}"].value
        if vae is not None:
            crops = self.vae_paper.total_steps * self.vae_paper.batch_size
            self.set(
                "paper_vae_hours",
                crops / vae / 3600,
                setting=f"{self.vae_paper.iterations} iterations × "
                f"{self.vae_paper.crops_per_iteration} crops = {crops:,} crops "
                f"at {_fmt(vae)} crops/s{quick}",
            )
        else:
            self.rows["paper_vae_hours"].text = f"n/a: no VAE {tag} throughput"
        detector = self.rows[f"detector_{tag}"].value
        paper = self.detector_paper
        if detector is not None:
            pairs = paper.total_steps * paper.batch_size
            quick = (
                ""
                if self.geometry.detector_patch is None
                else ("; quick mode: measured on small patches, not the paper's whole boxes")
            )
            self.set(
                "paper_detector_hours",
                pairs / detector / 3600,
                setting=f"{paper.iterations} iterations × {paper.pairs_per_iteration} "
                f"pairs = {pairs:,} pairs at {_fmt(detector)} pairs/s{quick}",
            )
        else:
            self.rows["paper_detector_hours"].text = f"n/a: no detector {tag} throughput"
        if (
            self.rows["paper_vae_hours"].value is None
            or self.rows["paper_detector_hours"].value is None
        ):
            raise RuntimeError("a projection lacks its measured throughput")

    def cuda_tests(self, log: Path | None, returncode: int | None) -> None:
        row = self.rows["cuda_tests"]
        if log is None or not log.is_file():
            row.text = "not run (run benchmarks/gpu_check.sh)"
            return
        lines = [
            line.strip("= ")
            for line in log.read_text().splitlines()
            if re.search(r"\b(passed|failed|skipped|error|errors|deselected)\b", line)
            and " in " in line
        ]
        summary = lines[-1] if lines else "no pytest summary found"
        row.text = summary if returncode in (0, None) else f"FAILED (exit {returncode}): {summary}"
        self.details["cuda_tests"] = {"summary": summary, "returncode": returncode}
        if returncode not in (0, None):
            self.errors.append(f"cuda_tests: pytest exit {returncode}: {summary}")

    # -------------------------------------------------------------- output

    def report(self) -> dict[str, Any]:
        cuda = torch.cuda.is_available()
        return {
            "mode": self.geometry.name,
            "device": str(self.device),
            "machine": {
                "platform": platform.platform(),
                "python": platform.python_version(),
                "torch": torch.__version__,
                "threads": self.threads,
                "cpu_cores": os.cpu_count(),
                "gpu": torch.cuda.get_device_name(self.device) if self.cuda else None,
                "cuda": torch.version.cuda if cuda else None,
                "cudnn": torch.backends.cudnn.version() if cuda else None,
                # float32 convolutions run as TF32 on Ampere and later when this is set
                "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            },
            "memory_kind": self.memory_kind,
            "workflow_precision": self.workflow_precision,
            "pair": self.details.get("pair"),
            "paper_preset": {
                "vae": self.vae_paper.as_dict(),
                "detector": self.detector_paper.as_dict(),
            },
            "rows": [dataclasses.asdict(self.rows[key]) for key in ROW_KEYS],
            "details": self.details,
            "errors": self.errors,
            "elapsed_s": round(self.elapsed(), 1),
        }

    def markdown(self) -> str:
        report = self.report()
        machine = report["machine"]
        where = (
            f"{machine['gpu']} (CUDA {machine['cuda']}, cuDNN {machine['cudnn']})"
            if self.cuda
            else f"CPU, {self.threads} thread(s) of {machine['cpu_cores']}"
        )
        pair = report["pair"] or {}
        lines = [
            f"# GPU check ({self.geometry.name} mode, {self.device})",
            "",
            f"{where}; PyTorch {machine['torch']}, Python {machine['python']}; "
            f"{report['elapsed_s']} s in all.",
            f"Pair: {pair.get('source', 'n/a')}; grid {_size(pair.get('shape', []))} of "
            f"{_size(pair.get('voxel_mm', []))} mm, brain {pair.get('brain_ml', 'n/a')} ml, "
            f"brain box {_size(pair.get('brain_box', []))}.",
            "",
            f"| measurement | value | unit | {self.memory_kind} (GiB) | setting |",
            "| --- | ---: | --- | ---: | --- |",
        ]
        for key in ROW_KEYS:
            row = self.rows[key]
            value = row.text if row.value is None else _fmt(row.value)
            memory = "" if row.peak_memory_gib is None else f"{row.peak_memory_gib:.2f}"
            cell = (value or "").replace("|", "/")
            lines.append(
                f"| {row.label} | {cell} | {row.unit} | {memory} | "
                f"{row.setting.replace('|', '/')} |"
            )
        if self.errors:
            lines += ["", "Failed or skipped:", *[f"- {e}" for e in self.errors]]
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu_check.json").write_text(json.dumps(self.report(), indent=1, default=str))
        (self.out / "gpu_check.md").write_text(self.markdown())


def run_check(args: argparse.Namespace) -> Check:
    device = resolve_device(args.device)
    geometry = QUICK if args.quick or (device.type == "cpu" and not args.full) else FULL
    torch.set_num_threads(args.threads)
    flush_denormals()
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        check = Check(
            device=device,
            geometry=geometry,
            out=args.out,
            work=work,
            threads=args.threads,
            budget_s=args.budget_s,
        )
        check.cuda_tests(args.cuda_tests_log, args.cuda_tests_rc)
        check.write()
        try:
            check.make_pair(args.pair)
        except Exception as error:
            traceback.print_exc()
            check.errors.append(f"pair: {type(error).__name__}: {error}")
            for key in MEASURED:
                check.rows[key].text = "not run: no pair"
            return check
        check.part(("vae_bf16",), lambda: check.vae_training(bf16=True))
        check.part(("vae_fp32",), lambda: check.vae_training(bf16=False))
        check.part(("supermix_reconstruction", "supermix_sample"), check.supermix_parts)
        check.part(("predict_pair", "predict_network"), check.prediction)
        check.part(("detector_bf16",), lambda: check.detector_training(bf16=True))
        check.part(("detector_fp32",), lambda: check.detector_training(bf16=False))
        check.part(("paper_vae_hours", "paper_detector_hours"), check.projections)
    return check


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cuda, cuda:N or cpu (default: cuda when PyTorch sees a GPU)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick", action="store_true", help="tiny sizes and a few steps (the default on CPU)"
    )
    mode.add_argument(
        "--full", action="store_true", help="the paper's geometry also on CPU (slow: hours)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "results" / "gpu_check")
    parser.add_argument(
        "--pair",
        type=Path,
        help="a preprocessed pair's folder (results/preproc/sub-<id>); "
        "default: a synthetic phantom pair",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=job_threads(),
        help="CPU threads (default: all this process may use)",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=300.0,
        help="parts not started by then are skipped (default 300)",
    )
    parser.add_argument(
        "--work", type=Path, help="keep the intermediate files here (default: a temp folder)"
    )
    parser.add_argument("--cuda-tests-log", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cuda-tests-rc", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check = run_check(args)
    check.write()
    print()
    print(check.markdown())
    print(f"written to {check.out / 'gpu_check.md'} and {check.out / 'gpu_check.json'}")
    return 1 if check.errors else 0


if __name__ == "__main__":
    sys.exit(main())
