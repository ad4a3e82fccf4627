"""Benchmark: the detector's patch sampler with and without MR-artefact augmentation,
next to the training step of the demo network, on the same CPU threads.

The sampler cuts batch-2 pairs of 48^3 patches from in-memory synthetic samples of
about a brain's box (140 x 170 x 140 voxels, float16, as training keeps them). The
augmentation must not make the sampler the bottleneck: its pairs per second should
stay well above the network's. Median of ``--repeats``; prints a Markdown table.

    python benchmarks/sampler.py --threads 2
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from mschange.detection.augment import AugmentationSettings
from mschange.detection.training import DetectorTrainingSettings, LoadedSample, PairSampler

SHAPE = (140, 170, 140)
PATCH = (48, 48, 48)
ARTEFACTS = [
    "bias_field",
    "gamma",
    "slice_thickness",
    "anisotropy",
    "blur",
    "edge",
    "motion",
    "ghosting",
    "spike",
    "noise",
]


def synthetic_sample(seed: int) -> LoadedSample:
    """A textured ellipsoid 'brain' (background 0) with a few changed blobs."""
    rng = np.random.default_rng(seed)
    grid = np.indices(SHAPE, dtype=np.float32)
    centre = (np.array(SHAPE, dtype=np.float32) - 1) / 2
    radii = np.array(SHAPE, dtype=np.float32) / 2 - 4
    inside = sum(((grid[a] - centre[a]) / radii[a]) ** 2 for a in range(3)) < 1.0
    texture = ndimage.gaussian_filter(rng.uniform(0.2, 0.8, SHAPE).astype(np.float32), 1.5)
    reference = np.where(inside, texture, 0.0).astype(np.float32)
    label = np.zeros(SHAPE, np.uint8)
    for _ in range(5):
        corner = [int(rng.integers(40, n - 50)) for n in SHAPE]
        label[tuple(slice(c, c + 6) for c in corner)] = 1
    synthesised = np.where(label > 0, 0.95, reference).astype(np.float32)
    return LoadedSample(
        baseline=reference.astype(np.float16),
        followup=synthesised.astype(np.float16),
        label=label,
        changed=np.argwhere(label).astype(np.int32),
    )


def sampler_rate(
    samples: list[LoadedSample], augmentation: AugmentationSettings, batches: int, repeats: int
) -> float:
    settings = DetectorTrainingSettings(patch_size=PATCH, batch_size=2, augmentation=augmentation)
    sampler = PairSampler(samples, settings, np.random.default_rng(0))
    sampler.batch()  # warm-up (TorchIO's first calls)
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(batches):
            sampler.batch()
        rates.append(batches * 2 / (time.perf_counter() - started))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, default=20, help="batches per repeat")
    parser.add_argument("--steps", type=int, default=3, help="training steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    samples = [synthetic_sample(seed) for seed in range(2)]
    defaults = AugmentationSettings(enabled=True)
    every = dataclasses.replace(defaults, **{f"{n}_probability": 1.0 for n in ARTEFACTS})
    rows = [
        (
            "sampler, augmentation off",
            sampler_rate(samples, AugmentationSettings(), args.batches, args.repeats),
        ),
        (
            "sampler, augmentation on (config defaults)",
            sampler_rate(samples, defaults, args.batches, args.repeats),
        ),
        (
            "sampler, every artefact on both time points (worst case)",
            sampler_rate(samples, every, max(2, args.batches // 4), args.repeats),
        ),
    ]
    for name in ARTEFACTS:
        alone = dataclasses.replace(
            defaults, **{f"{n}_probability": float(n == name) for n in ARTEFACTS}
        )
        rows.append(
            (
                f"sampler, only {name} (p = 1) + flips/rotation/misalignment",
                sampler_rate(samples, alone, max(2, args.batches // 4), args.repeats),
            )
        )

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from detector import ARCHITECTURES, time_training  # the same step as benchmarks/detector

    training = time_training(
        ARCHITECTURES["demo"],
        list(PATCH),
        torch.device("cpu"),
        bf16=False,
        steps=args.steps,
        repeats=args.repeats,
    )
    rows.append(("training step, demo network (fp32)", float(training["pairs_per_s"])))

    print(
        f"Patches {'x'.join(map(str, PATCH))}, batch 2, samples "
        f"{'x'.join(map(str, SHAPE))}, {args.threads} threads, median of {args.repeats}\n"
    )
    print("| what | pairs/s |")
    print("|---|---:|")
    for name, rate in rows:
        print(f"| {name} | {rate:.2f} |")


if __name__ == "__main__":
    main()
