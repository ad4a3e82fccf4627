"""Benchmark: change-detector training throughput and the inference time of one pair.

Inference runs the whole sliding-window prediction (``predict_probability``) on a
preprocessed 1 mm pair, plus thresholding and connected components, median of
``--repeats`` runs; training throughput is SuperMix pairs per second at a given
patch size and batch 2. Both use untrained weights (the arithmetic is the same) and
two architectures: the paper preset's (channels 16-128, 2 Inception modules per
block) and the demo's. On a GPU, fp32 and bf16 autocast are timed and the peak
GPU memory is recorded.

    python benchmarks/detector.py --subject demo04 --threads 2    # after `make demo`
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from mschange.changemap import find_changes
from mschange.detection.inference import InferenceSettings, predict_probability
from mschange.detection.loss import LossSettings, detector_loss
from mschange.detection.network import ChangeDetector, DetectorArchitecture
from mschange.torchrun import autocast

REPO = Path(__file__).resolve().parents[1]
ARCHITECTURES = {
    "paper": DetectorArchitecture(channels=(16, 32, 64, 128), modules_per_block=2),
    "demo": DetectorArchitecture(channels=(8, 16, 32), modules_per_block=1),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_inference(
    pair: dict[str, Any],
    architecture: DetectorArchitecture,
    settings: InferenceSettings,
    device: torch.device,
    bf16: bool,
    repeats: int,
) -> dict[str, Any]:
    torch.manual_seed(0)
    model = ChangeDetector(architecture).to(device).eval()
    if not bf16:
        model.float()
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(repeats + (1 if device.type == "cuda" else 0)):  # GPU: one warm-up
        _sync(device)
        started = time.perf_counter()
        context = autocast(device) if bf16 else torch.autocast(device.type, enabled=False)
        with context:
            probability = predict_probability(
                model,
                pair["baseline"],
                pair["followup"],
                pair["brain"],
                pair["affine"],
                settings,
                device=device,
            )
        find_changes(probability, settings.kappa, settings.min_blob_voxels)
        _sync(device)
        times.append(time.perf_counter() - started)
    if device.type == "cuda":
        times = times[1:]
    result: dict[str, Any] = {
        "seconds_median": round(statistics.median(times), 2),
        "seconds_all": [round(t, 2) for t in times],
        "peak_process_memory_gib": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2
        ),
    }
    if device.type == "cuda":
        result["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return result


def time_training(
    architecture: DetectorArchitecture,
    patch: list[int],
    device: torch.device,
    bf16: bool,
    steps: int,
    repeats: int,
) -> dict[str, Any]:
    torch.manual_seed(0)
    model = ChangeDetector(architecture).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-4)
    baseline = torch.rand(2, 1, *patch, device=device)
    followup = baseline.clone()
    label = torch.zeros_like(baseline)
    label[..., 10:20, 10:20, 10:20] = 1.0
    followup[label > 0] += 0.3
    settings = LossSettings(l2=1e-6)

    def step() -> None:
        context = autocast(device) if bf16 else torch.autocast(device.type, enabled=False)
        with context:
            logits = model(baseline, followup)
        loss, _ = detector_loss(logits, label, settings, model)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rates = []
    for _ in range(repeats):
        _sync(device)
        started = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        rates.append(steps * 2 / (time.perf_counter() - started))
    result: dict[str, Any] = {"patch": patch, "pairs_per_s": round(statistics.median(rates), 3)}
    if device.type == "cuda":
        result["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return result


def load_pair(subject: str) -> dict[str, Any]:
    folder = REPO / "results" / "preproc" / f"sub-{subject}"
    stem = folder / f"sub-{subject}"
    followup = nib.load(f"{stem}_tp-followup_space-followup_desc-preproc_FLAIR.nii.gz")
    brain = np.asarray(nib.load(f"{stem}_tp-followup_desc-brain_mask.nii.gz").dataobj) > 0
    brain &= (
        np.asarray(nib.load(f"{stem}_tp-baseline_space-followup_desc-brain_mask.nii.gz").dataobj)
        > 0
    )
    return {
        "baseline": np.asarray(
            nib.load(f"{stem}_tp-baseline_space-followup_desc-preproc_FLAIR.nii.gz").dataobj,
            dtype=np.float32,
        ),
        "followup": np.asarray(followup.dataobj, dtype=np.float32),
        "brain": brain,
        "affine": followup.affine,
        "shape": list(followup.shape),
        "brain_ml": round(
            float(brain.sum()) * float(abs(np.linalg.det(followup.affine[:3, :3]))) / 1000, 1
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--subject",
        default="demo04",
        help="a preprocessed pair under results/preproc (default demo04)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument(
        "--window",
        nargs="+",
        default=["none"],
        help="sliding window (3 sizes) or 'none' for the whole brain box",
    )
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--cpu-patch", type=int, nargs=3, default=[48, 48, 48])
    parser.add_argument(
        "--gpu-patch",
        type=int,
        nargs=3,
        default=[160, 192, 160],
        help="a whole 1 mm brain box, as in the paper",
    )
    parser.add_argument("--architectures", nargs="+", default=list(ARCHITECTURES))
    parser.add_argument("--skip-cpu", action="store_true", help="GPU figures only")
    parser.add_argument(
        "--output", type=Path, default=REPO / "results" / "benchmarks" / "detector_benchmark.json"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    pair = load_pair(args.subject)
    window = None if args.window == ["none"] else tuple(int(w) for w in args.window)
    settings = InferenceSettings(window=window, overlap=args.overlap)  # type: ignore[arg-type]
    report: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "threads": args.threads,
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "pair": {"subject": args.subject, "shape": pair["shape"], "brain_ml": pair["brain_ml"]},
        "inference_settings": settings.as_dict(),
        "results": {},
    }
    devices = [] if args.skip_cpu else [("cpu", torch.device("cpu"), False)]
    if torch.cuda.is_available():
        cuda = torch.device("cuda")
        devices += [("cuda_fp32", cuda, False), ("cuda_bf16", cuda, True)]
    for name in args.architectures:
        architecture = ARCHITECTURES[name]
        for label, device, bf16 in devices:
            patch = args.cpu_patch if device.type == "cpu" else args.gpu_patch
            entry = {
                "inference": time_inference(
                    pair, architecture, settings, device, bf16, args.repeats
                ),
                "training": time_training(
                    architecture, patch, device, bf16, args.train_steps, args.repeats
                ),
            }
            report["results"][f"{name}/{label}"] = entry
            print(json.dumps({f"{name}/{label}": entry}), flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1))
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
