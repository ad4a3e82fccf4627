"""Benchmark: one SuperMix sample on a 1 mm brain, and VAE training throughput.

SuperMix is timed per part (3D SLIC, tiled perturbed VAE reconstruction, mixing) for
several n_seg, median of ``--repeats`` runs, with the config's VAE architecture
(untrained weights: the arithmetic is the same). VAE training throughput is crops
per second at the config's crop size and batch size, fp32 on CPU and, where a GPU
is present, fp32 and bf16 autocast on it.

    python benchmarks/synthesis.py --subject demo01 --threads 2     # after `make demo`
    python benchmarks/synthesis.py --scan SCAN.nii.gz --mask MASK.nii.gz
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
import yaml

from mschange.config import validate_config
from mschange.synthesis.reconstruction import reconstruct_volume
from mschange.synthesis.steps import supermix_settings, tiling_settings
from mschange.synthesis.supermix import mix, replaced_superpixels, superpixels
from mschange.synthesis.vae import Vae3d, VaeArchitecture, vae_loss
from mschange.torchrun import autocast

REPO = Path(__file__).resolve().parents[1]


def time_supermix(
    scan: Path,
    mask_path: Path,
    config: dict[str, Any],
    n_segments: list[int],
    repeats: int,
    device: torch.device,
) -> list[dict[str, Any]]:
    image = nib.load(scan)
    data = np.asarray(image.dataobj, dtype=np.float32)
    mask = np.asarray(nib.load(mask_path).dataobj) > 0
    vae_config = config["synthesis"]["vae"]
    supermix_config = config["synthesis"]["supermix"]
    settings = supermix_settings(supermix_config)
    tiling = tiling_settings(vae_config["crop_size"], supermix_config)
    torch.manual_seed(0)
    model = (
        Vae3d(
            VaeArchitecture(
                channels=tuple(vae_config["channels"]),
                latent_channels=vae_config["latent_channels"],
            )
        )
        .to(device)
        .eval()
    )
    rows = []
    for n in n_segments:
        parts: dict[str, list[float]] = {
            "slic_s": [],
            "reconstruction_s": [],
            "mix_s": [],
            "total_s": [],
        }
        count = 0
        for repeat in range(repeats):
            started = time.perf_counter()
            labels = superpixels(
                data,
                mask,
                image.affine,
                n_segments=n,
                compactness=settings.compactness,
                iterations=settings.slic_iterations,
            )
            sliced = time.perf_counter()
            reconstruction = reconstruct_volume(
                model,
                data,
                mask,
                image.affine,
                seed=repeat,
                delta=settings.delta,
                tiling=tiling,
                device=device,
            )
            reconstructed = time.perf_counter()
            replaced = replaced_superpixels(int(labels.max()), settings.tau, repeat)
            mix(data, reconstruction, labels, replaced)
            done = time.perf_counter()
            count = int(labels.max())
            for key, value in (
                ("slic_s", sliced - started),
                ("reconstruction_s", reconstructed - sliced),
                ("mix_s", done - reconstructed),
                ("total_s", done - started),
            ):
                parts[key].append(value)
        rows.append(
            {
                "n_segments": n,
                "superpixels": count,
                **{k: round(statistics.median(v), 2) for k, v in parts.items()},
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def time_vae_training(
    config: dict[str, Any], device: torch.device, bf16: bool, steps: int, repeats: int
) -> float:
    vae_config = config["synthesis"]["vae"]
    batch_size = int(vae_config["batch_size"])
    torch.manual_seed(0)
    model = Vae3d(
        VaeArchitecture(
            channels=tuple(vae_config["channels"]), latent_channels=vae_config["latent_channels"]
        )
    ).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=5e-5)
    batch = torch.rand(batch_size, 1, *vae_config["crop_size"], device=device)

    def step() -> None:
        context = autocast(device) if bf16 else torch.autocast(device.type, enabled=False)
        with context:
            reconstruction, mu, logvar = model(batch)
        loss, _, _ = vae_loss(reconstruction, batch, mu, logvar, 1e-3)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    for _ in range(2):  # warm-up (cuDNN autotuning, allocator)
        step()
    rates = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(steps * batch_size / (time.perf_counter() - started))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--subject",
        default="demo01",
        help="a preprocessed subject under results/preproc (default demo01)",
    )
    parser.add_argument("--scan", type=Path, help="a preprocessed 1 mm scan (overrides --subject)")
    parser.add_argument("--mask", type=Path, help="its brain mask")
    parser.add_argument("--config", type=Path, default=REPO / "config.yaml")
    parser.add_argument("--n-segments", type=int, nargs="+", default=[200, 1000, 5000])
    parser.add_argument(
        "--crop-size",
        type=int,
        nargs=3,
        default=[192, 192, 16],
        help="VAE crop and reconstruction tile (default: the paper's)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument(
        "--output", type=Path, default=REPO / "results" / "benchmarks" / "synthesis_benchmark.json"
    )
    args = parser.parse_args()
    folder = REPO / "results" / "preproc" / f"sub-{args.subject}"
    args.scan = args.scan or folder / (
        f"sub-{args.subject}_tp-followup_space-followup_desc-preproc_FLAIR.nii.gz"
    )
    args.mask = args.mask or folder / f"sub-{args.subject}_tp-followup_desc-brain_mask.nii.gz"
    torch.set_num_threads(args.threads)
    config = validate_config(yaml.safe_load(args.config.read_text()))
    config["synthesis"]["vae"]["crop_size"] = args.crop_size
    config["synthesis"]["supermix"]["tile_overlap"] = max(args.crop_size) // 2  # half a tile
    cpu = torch.device("cpu")
    report: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "threads": args.threads,
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "scan": str(args.scan),
        "shape": list(nib.load(args.scan).shape),
        "supermix_cpu": time_supermix(
            args.scan, args.mask, config, args.n_segments, args.repeats, cpu
        ),
    }
    report["vae_training_crops_per_s"] = {
        "cpu_fp32": round(time_vae_training(config, cpu, False, args.train_steps, args.repeats), 3)
    }
    print(json.dumps(report["vae_training_crops_per_s"]), flush=True)
    if torch.cuda.is_available():
        cuda = torch.device("cuda")
        report["supermix_cuda"] = time_supermix(
            args.scan, args.mask, config, args.n_segments, args.repeats, cuda
        )
        for name, bf16 in (("cuda_fp32", False), ("cuda_bf16", True)):
            report["vae_training_crops_per_s"][name] = round(
                time_vae_training(config, cuda, bf16, 10 * args.train_steps, args.repeats), 2
            )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
