"""Paint, train and predict on the GPU machine, in one time-bounded run.

Reads what ``pack.py`` wrote (``--data``), needs torch, numpy, scipy and nibabel (a
carried wheel), and neither SimpleITK nor torchio: stub modules stand in for them and
nothing that needs them is called. Phases:

1. painting (``--paint-seconds``): lesion-painted samples of the train subjects'
   no-change pairs (``mschange.synthesis.lesions.paint_pair``), in parallel worker
   processes, kept in memory (images float16, label uint8);
2. training (``--minutes`` of wall clock): ``ChangeDetector`` on random patches (a
   ``--foreground-share`` of them centred on a changed voxel), bf16 autocast, Adam with
   a cosine decay over the time budget, the configured focal Tversky loss; every patch
   augmented on the GPU (flips; a rigid misalignment of the baseline; per time point a
   bias field, a gamma change and Rician noise, as ``mschange.artefacts`` defines them);
3. prediction: each test pair's whole cropped box in one pass; the probability
   (uint8, x 255) and the model go to ``--out``.

    python3 tools/gpu_experiment/train_on_device.py --data .gpu_data --out $OUT
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import queue
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

START = time.monotonic()
# Imported by mschange.imagespace and mschange.detection.augment at module top; never used here.
for _name in ("SimpleITK", "torchio"):
    sys.modules.setdefault(_name, types.ModuleType(_name))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mschange.artefacts import BIAS_EXPONENTS, draw_bias_coefficients  # noqa: E402
from mschange.detection.loss import LossSettings, detector_loss  # noqa: E402
from mschange.detection.network import ChangeDetector, DetectorArchitecture  # noqa: E402
from mschange.synthesis.lesions import (  # noqa: E402
    LesionBank,
    LesionPaintSettings,
    lesion_paint_settings,
    load_lesion_bank,
    paint_pair,
    paint_seed,
)
from mschange.torchrun import autocast  # noqa: E402


def log(message: str) -> None:
    print(f"[{time.monotonic() - START:7.1f}s] {message}", flush=True)


# ------------------------------------------------------------------ phase 1: painting

_WORKER: dict[str, Any] = {}


def _worker_init(data: str, paint: dict[str, Any], threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    _WORKER["data"] = Path(data)
    _WORKER["bank"] = load_lesion_bank(Path(data) / "lesion_bank.npz")
    _WORKER["settings"] = lesion_paint_settings(paint)
    _WORKER["cache"] = {}


def _subject_arrays(subject: str) -> dict[str, Any]:
    cache: dict[str, dict[str, Any]] = _WORKER["cache"]
    if subject not in cache:
        with np.load(_WORKER["data"] / f"{subject}.npz") as stored:
            cache[subject] = {
                "baseline": stored["baseline"].astype(np.float32) / np.float32(255.0),
                "followup": stored["followup"].astype(np.float32) / np.float32(255.0),
                "brain": stored["brain"].astype(bool),
                "thickness": float(stored["thickness_mm"]),
                "axis": int(stored["axis"]),
            }
    return cache[subject]


def _paint_task(task: tuple[str, int, int]) -> dict[str, Any]:
    try:
        return _paint(task)
    except Exception as error:  # one bad draw must not end the run
        return {"error": f"{task}: {type(error).__name__}: {error}"}


def _paint(task: tuple[str, int, int]) -> dict[str, Any]:
    subject, seed, index = task
    arrays = _subject_arrays(subject)
    bank: LesionBank = _WORKER["bank"]
    settings: LesionPaintSettings = _WORKER["settings"]
    pair = paint_pair(
        arrays["baseline"],
        arrays["followup"],
        arrays["brain"],
        bank,
        settings,
        paint_seed(seed, subject, index),
        slice_thickness_mm=arrays["thickness"],
        through_plane_axis=arrays["axis"],
        affine=None,
    )
    return {
        "subject": subject,
        "index": index,
        "baseline": pair.baseline.astype(np.float16),
        "followup": pair.followup.astype(np.float16),
        "label": pair.label.astype(np.uint8),
        "changed": np.flatnonzero(pair.label).astype(np.int64),
        "kinds": [lesion["kind"] for lesion in pair.record["lesions"]],
    }


def paint_pool(
    data: Path,
    subjects: list[str],
    paint: dict[str, Any],
    seed: int,
    *,
    workers: int,
    pool_size: int,
    seconds: float,
) -> list[dict[str, Any]]:
    """Up to ``pool_size`` painted samples, round-robin over the subjects, in ``seconds``."""
    tasks = [(subjects[i % len(subjects)], seed, i // len(subjects)) for i in range(pool_size)]
    samples: list[dict[str, Any]] = []
    failures = 0
    deadline = time.monotonic() + seconds
    context = mp.get_context("fork")
    pool = context.Pool(workers, initializer=_worker_init, initargs=(str(data), paint, 1))
    try:
        results = pool.imap_unordered(_paint_task, tasks, chunksize=1)
        while len(samples) < pool_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                result = results.next(timeout=remaining)
            except (mp.TimeoutError, StopIteration):
                break
            if "error" in result:
                failures += 1
                if failures <= 5:
                    log(f"painting failed: {result['error']}")
                continue
            samples.append(result)
            if len(samples) % 50 == 0:
                log(f"painted {len(samples)} samples")
    finally:
        pool.terminate()
        pool.join()
    if failures:
        log(f"{failures} painting task(s) failed")
    return samples


# ------------------------------------------------------------------ phase 2: training


class PatchSampler:
    """Random patches of the painted pool (numpy, float16 images), in a background thread."""

    def __init__(
        self,
        samples: list[dict[str, Any]],
        patch: int,
        batch: int,
        foreground_share: float,
        seed: int,
        prefetch: int = 6,
    ) -> None:
        self.samples, self.patch, self.batch = samples, patch, batch
        self.foreground_share = foreground_share
        self.rng = np.random.default_rng(seed)
        self.queue: queue.Queue[tuple[npt.NDArray[Any], ...]] = queue.Queue(prefetch)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _region(self, sample: dict[str, Any]) -> tuple[slice, ...]:
        shape = np.array(sample["label"].shape)
        size = np.full(3, self.patch)
        changed = sample["changed"]
        if len(changed) and self.rng.random() < self.foreground_share:
            centre = np.array(
                np.unravel_index(
                    int(changed[int(self.rng.integers(len(changed)))]), sample["label"].shape
                )
            )
        else:
            centre = np.array([self.rng.integers(n) for n in shape])
        start = np.clip(centre - size // 2, 0, np.maximum(shape - size, 0))
        return tuple(slice(int(s), int(s + n)) for s, n in zip(start, size, strict=True))

    def make(self) -> tuple[npt.NDArray[Any], ...]:
        arrays = (
            np.zeros((self.batch, 1, *(self.patch,) * 3), dtype=np.float16),
            np.zeros((self.batch, 1, *(self.patch,) * 3), dtype=np.float16),
            np.zeros((self.batch, 1, *(self.patch,) * 3), dtype=np.uint8),
        )
        for b in range(self.batch):
            sample = self.samples[int(self.rng.integers(len(self.samples)))]
            region = self._region(sample)
            for array, key in zip(arrays, ("baseline", "followup", "label"), strict=True):
                part = sample[key][region]
                array[b, 0][tuple(slice(0, n) for n in part.shape)] = part
        return arrays

    def _run(self) -> None:
        while not self.stop.is_set():
            item = self.make()
            while not self.stop.is_set():
                try:
                    self.queue.put(item, timeout=0.5)
                    break
                except queue.Full:
                    continue

    def next(self) -> tuple[npt.NDArray[Any], ...]:
        return self.queue.get()


def _rotation(angles: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    ax, ay, az = np.radians(angles)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return np.asarray(rz @ ry @ rx, dtype=np.float64)


def _bias_field(
    shape: tuple[int, int, int], coefficients: tuple[float, ...], device: torch.device
) -> torch.Tensor:
    """mschange.artefacts.bias_field, on the GPU."""
    coords = [torch.linspace(-1.0, 1.0, n, device=device) for n in shape]
    x, y, z = torch.meshgrid(*coords, indexing="ij")
    log_field = torch.zeros(shape, device=device)
    for (px, py, pz), coefficient in zip(BIAS_EXPONENTS, coefficients, strict=True):
        log_field += coefficient * x**px * y**py * z**pz
    return torch.exp(log_field)


def augment_batch(
    baseline: torch.Tensor,
    followup: torch.Tensor,
    label: torch.Tensor,
    aug: dict[str, Any],
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flips (all three), a rigid misalignment of the baseline, then per time point a bias
    field, a gamma change and Rician noise (augment_patch's semantics, on the GPU)."""
    n = baseline.shape[0]
    shape = tuple(int(s) for s in baseline.shape[2:])
    outs_b, outs_f, outs_l = [], [], []
    for b in range(n):
        flips = [axis + 2 for axis in range(3) if rng.random() < aug["flip_probability"]]
        pb, pf, pl = baseline[b : b + 1], followup[b : b + 1], label[b : b + 1]
        if flips:
            pb, pf, pl = (torch.flip(t, flips) for t in (pb, pf, pl))
        outs_b.append(pb)
        outs_f.append(pf)
        outs_l.append(pl)
    baseline, followup, label = torch.cat(outs_b), torch.cat(outs_f), torch.cat(outs_l)

    # Rigid misalignment of the baseline (about the patch centre, border values outside).
    moved = rng.random(n) < aug["misalignment_probability"]
    if moved.any():
        degrees, mm = aug["misalignment_rotation_deg"], aug["misalignment_translation_mm"]
        theta = np.zeros((n, 3, 4), dtype=np.float32)
        for b in range(n):
            theta[b, :, :3] = np.eye(3)
            if moved[b]:
                theta[b, :, :3] = _rotation(rng.uniform(-degrees, degrees, 3))
                # align_corners=True: one voxel is 2 / (size - 1) normalised units.
                shift = rng.uniform(-mm, mm, 3) * 2.0 / (np.array(shape[::-1]) - 1.0)
                theta[b, :, 3] = shift
        grid = F.affine_grid(
            torch.from_numpy(theta).to(baseline.device), list(baseline.shape), align_corners=True
        )
        baseline = F.grid_sample(
            baseline, grid, mode="bilinear", padding_mode="border", align_corners=True
        )

    background = (baseline == 0) & (followup == 0)
    upper = torch.clamp(
        torch.maximum(baseline.amax(dim=(1, 2, 3, 4)), followup.amax(dim=(1, 2, 3, 4))), min=1.0
    )
    images = [baseline.clone(), followup.clone()]
    for image in images:
        for b in range(n):
            patch = image[b, 0]
            if rng.random() < aug["bias_field_probability"]:
                strength = rng.uniform(*aug["bias_field_strength"])
                patch.mul_(
                    _bias_field(
                        shape,
                        draw_bias_coefficients(rng, strength),  # type: ignore[arg-type]
                        image.device,
                    )
                )
            if rng.random() < aug["gamma_probability"]:
                gamma = rng.uniform(*aug["gamma"])
                patch.copy_(torch.clamp(patch, min=0.0) ** gamma)
            if rng.random() < aug["noise_probability"]:
                sigma = rng.uniform(*aug["noise_std"])
                noise = torch.randn((2, *shape), device=image.device) * sigma
                patch.copy_(torch.hypot(patch + noise[0], noise[1]))
        image.copy_(torch.minimum(torch.clamp(image, min=0.0), upper.view(-1, 1, 1, 1, 1)))
        image[background] = 0.0
    return images[0], images[1], label


def learning_rate(elapsed: float, budget: float, high: float, low: float) -> float:
    fraction = min(1.0, max(0.0, elapsed / budget))
    return low + 0.5 * (high - low) * (1.0 + math.cos(math.pi * fraction))


def train(
    samples: list[dict[str, Any]],
    args: argparse.Namespace,
    loss: LossSettings,
    aug: dict[str, Any],
    device: torch.device,
    deadline: float,
    out: Path,
) -> tuple[ChangeDetector, dict[str, Any]]:
    architecture = DetectorArchitecture(
        channels=tuple(args.channels), modules_per_block=args.modules_per_block
    )
    torch.manual_seed(args.seed)
    model = ChangeDetector(architecture).to(device)
    n_parameters = sum(p.numel() for p in model.parameters())
    log(f"model: {architecture.as_dict()}, {n_parameters / 1e6:.2f} M parameters")
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr)
    sampler = PatchSampler(samples, args.patch, args.batch, args.foreground_share, args.seed + 1)
    rng = np.random.default_rng(args.seed + 2)
    budget = max(1.0, deadline - time.monotonic())
    begin = time.monotonic()
    step = 0
    rows: list[str] = ["step\tseconds\tlr\tloss\tfinal\tdeep\tl2\tforeground_voxels"]
    window: list[float] = []
    model.train()
    try:
        while time.monotonic() < deadline:
            elapsed = time.monotonic() - begin
            lr = learning_rate(elapsed, budget, args.lr, args.lr_min)
            for group in optimiser.param_groups:
                group["lr"] = lr
            arrays = sampler.next()
            baseline, followup, label = (
                torch.from_numpy(a).to(device, non_blocking=True).float() for a in arrays
            )
            baseline, followup, label = augment_batch(baseline, followup, label, aug, rng)
            with autocast(device):
                logits = model(baseline, followup)
            total, parts = detector_loss(logits, label, loss, model)
            optimiser.zero_grad(set_to_none=True)
            total.backward()
            optimiser.step()
            step += 1
            window.append(float(total.detach()))
            if step % args.log_every == 0 or step == 1:
                deep = sum(v for k, v in parts.items() if k.startswith("deep"))
                row = (
                    f"{step}\t{time.monotonic() - begin:.1f}\t{lr:.3g}\t"
                    f"{np.mean(window):.4f}\t{parts['final']:.4f}\t{deep:.4f}\t"
                    f"{parts.get('l2', 0.0):.3g}\t{int(label.sum())}"
                )
                rows.append(row)
                log("train " + row.replace("\t", " "))
                window = []
                (out / "train_log.tsv").write_text("\n".join(rows) + "\n")
    finally:
        sampler.stop.set()
    (out / "train_log.tsv").write_text("\n".join(rows) + "\n")
    seconds = time.monotonic() - begin
    return model, {
        "steps": step,
        "train_seconds": seconds,
        "steps_per_second": step / max(seconds, 1e-9),
        "parameters": n_parameters,
        "architecture": architecture.as_dict(),
        "final_loss_window": rows[-1],
    }


# ------------------------------------------------------------------ phase 3: prediction


@torch.no_grad()
def predict_box(
    model: ChangeDetector,
    baseline: npt.NDArray[Any],
    followup: npt.NDArray[Any],
    brain: npt.NDArray[np.bool_],
    device: torch.device,
) -> npt.NDArray[np.float32]:
    """The network on the whole box, zero-padded at the end to a multiple of the
    downsampling; sigmoid; 0 outside the brain."""
    factor = model.architecture.downsampling
    shape = baseline.shape
    padded = tuple(int(math.ceil(n / factor) * factor) for n in shape)
    tensors = []
    for volume in (baseline, followup):
        region = np.zeros(padded, dtype=np.float32)
        region[: shape[0], : shape[1], : shape[2]] = volume
        tensors.append(torch.from_numpy(region)[None, None].to(device))
    model.eval()
    with autocast(device):
        logits = model(*tensors)[0]
    probability = (
        torch.sigmoid(logits.float())[0, 0].cpu().numpy()[: shape[0], : shape[1], : shape[2]]
    )
    probability = np.where(brain, probability, 0.0).astype(np.float32)
    return probability


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(".gpu_data"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=5.0, help="training wall clock")
    parser.add_argument("--paint-seconds", type=float, default=90.0)
    parser.add_argument(
        "--deadline-seconds",
        type=float,
        default=480.0,
        help="training stops by this long after the start, whatever --minutes",
    )
    parser.add_argument(
        "--predict-reserve",
        type=float,
        default=45.0,
        help="seconds kept for prediction and saving before the deadline",
    )
    parser.add_argument("--pool", type=int, default=600, help="painted samples at most")
    parser.add_argument("--workers", type=int, default=0, help="0: all CPUs")
    parser.add_argument("--patch", type=int, default=96)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--modules-per-block", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lr-min", type=float, default=1e-5)
    parser.add_argument("--foreground-share", type=float, default=0.5)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=None, help="default: the config's")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    meta = json.loads((args.data / "meta.json").read_text())
    if args.seed is None:
        args.seed = int(meta["seed"])
    device = torch.device(args.device)
    train_subjects = [s["subject"] for s in meta["subjects"] if s["split"] == "train"]
    test_subjects = [s["subject"] for s in meta["subjects"] if s["split"] == "test"]
    log(f"train subjects: {len(train_subjects)}, test pairs: {test_subjects}")
    summary: dict[str, Any] = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "device": str(device),
        "train_subjects": train_subjects,
    }

    workers = args.workers or len(os.sched_getaffinity(0))
    t0 = time.monotonic()
    samples = paint_pool(
        args.data,
        train_subjects,
        meta["paint_settings"],
        args.seed,
        workers=workers,
        pool_size=args.pool,
        seconds=args.paint_seconds,
    )
    kinds = [k for s in samples for k in s["kinds"]]
    summary["painting"] = {
        "samples": len(samples),
        "seconds": time.monotonic() - t0,
        "workers": workers,
        "lesions": len(kinds),
        **{kind: kinds.count(kind) for kind in sorted(set(kinds))},
        "samples_without_label": sum(1 for s in samples if not len(s["changed"])),
        "per_subject": {s: sum(1 for x in samples if x["subject"] == s) for s in train_subjects},
    }
    log(f"painting: {summary['painting']}")
    if not samples:
        raise RuntimeError("no sample was painted")

    if device.type == "cuda":  # after the painting workers are forked
        torch.backends.cudnn.benchmark = True
        summary["device_name"] = torch.cuda.get_device_name(device)
        log(f"device: {summary['device_name']}, torch {torch.__version__}")
    loss = LossSettings(**meta["loss"])
    deadline = min(
        time.monotonic() + 60.0 * args.minutes, START + args.deadline_seconds - args.predict_reserve
    )
    model, summary["training"] = train(
        samples, args, loss, meta["augmentation"], device, deadline, args.out
    )
    del samples
    log(f"training: {summary['training']}")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(
        {"state_dict": state, "architecture": model.architecture.as_dict()}, args.out / "model.pt"
    )
    if device.type == "cuda":
        summary["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30

    summary["prediction"] = {}
    for subject in test_subjects:
        t1 = time.monotonic()
        with np.load(args.data / f"{subject}.npz") as stored:
            baseline = stored["baseline"].astype(np.float32) / np.float32(255.0)
            followup = stored["followup"].astype(np.float32) / np.float32(255.0)
            brain = stored["brain"].astype(bool)
        probability = predict_box(model, baseline, followup, brain, device)
        np.savez_compressed(
            args.out / f"prob_{subject}.npz",
            probability=np.round(probability * 255.0).astype(np.uint8),
        )
        summary["prediction"][subject] = {
            "seconds": time.monotonic() - t1,
            "voxels_above_0.5": int((probability > 0.5).sum()),
        }
        log(f"predicted {subject}: {summary['prediction'][subject]}")
    summary["total_seconds"] = time.monotonic() - START
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
