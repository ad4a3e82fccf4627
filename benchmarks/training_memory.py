"""Benchmark: peak memory of the training samplers against the number of subjects.

Writes placeholder subjects (a textured ellipsoid 'brain' of realistic 1 mm size, its
mask, a follow-up with a few changed blobs and their label, as ``.nii.gz``), then, in a
fresh process per measurement, builds the VAE's crop sampler or the detector's pair
sampler over N of them as training does, draws ``--batches`` batches and reports the
process's peak resident memory (``ru_maxrss``). One run per N: peak memory does not
vary between runs as times do.

Two paths: ``disk`` is what training uses (each scan decoded once into the scan cache,
crops read from it: :mod:`mschange.scancache`); ``memory`` holds every scan in memory,
as training did before (``load_training_scans`` + ``CropSampler(volumes, masks)``,
``load_sample`` + ``PairSampler``). ``--memory-src`` runs the memory path on another
checkout's ``src`` (e.g. a worktree of the commit before the scan cache), so "before"
is measured on the old code itself.

Only ``--distinct`` subjects are generated; the others are hard links to them under
their own paths, which the samplers decode (or cache) separately all the same.

    python benchmarks/training_memory.py --subjects 10 200 --memory-subjects 10 40
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

KINDS = ("vae", "detector")
FILES = ("image", "mask", "followup", "label")


def write_subjects(folder: Path, shape: tuple[int, int, int], distinct: int, total: int) -> None:
    """``total`` subject folders, ``distinct`` of them generated, the rest hard links."""
    import nibabel as nib
    from scipy import ndimage

    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    grid = np.indices(shape, dtype=np.float32)
    centre = (np.array(shape, dtype=np.float32) - 1) / 2
    radii = np.array(shape, dtype=np.float32) / 2 - 8
    inside = sum(((grid[a] - centre[a]) / radii[a]) ** 2 for a in range(3)) < 1.0
    del grid
    for index in range(distinct):
        rng = np.random.default_rng(index)
        texture = ndimage.gaussian_filter(rng.uniform(0.2, 0.8, shape).astype(np.float32), 2.0)
        image = np.where(inside, texture, 0.0).astype(np.float32)
        label = np.zeros(shape, np.uint8)
        for _ in range(8):
            corner = [int(rng.integers(n // 3, 2 * n // 3)) for n in shape]
            label[tuple(slice(c, c + 6) for c in corner)] = 1
        followup = np.where(label > 0, 0.95, image).astype(np.float32)
        subject = folder / f"sub-{index:04d}"
        subject.mkdir(parents=True, exist_ok=True)
        for name, data in zip(
            FILES, (image, inside.astype(np.uint8), followup, label), strict=True
        ):
            nib.save(nib.Nifti1Image(data, affine), subject / f"{name}.nii.gz")
    for index in range(distinct, total):
        subject = folder / f"sub-{index:04d}"
        subject.mkdir(parents=True, exist_ok=True)
        source = folder / f"sub-{index % distinct:04d}"
        for name in FILES:
            target = subject / f"{name}.nii.gz"
            if not target.exists():
                try:
                    os.link(source / f"{name}.nii.gz", target)
                except OSError:
                    shutil.copyfile(source / f"{name}.nii.gz", target)


def child(
    kind: str,
    path: str,
    data: Path,
    subjects: int,
    cache_dir: Path,
    batches: int,
    crop: tuple[int, int, int],
    patch: tuple[int, int, int] | None,
) -> dict[str, float]:
    """Build one sampler over ``subjects`` subjects and draw ``batches``; runs in a child."""
    import torch

    import mschange.detection.training
    import mschange.synthesis.vae_training  # noqa: F401  (what a training job imports)

    torch.set_num_threads(1)
    imports_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    folders = [data / f"sub-{index:04d}" for index in range(subjects)]
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    keep: list[object] = []  # what training keeps referenced while it samples
    cache_gb = 0.0
    if kind == "vae":
        from mschange.synthesis.vae_training import CropSampler, load_training_scans

        images = [str(f / "image.nii.gz") for f in folders]
        masks = [str(f / "mask.nii.gz") for f in folders]
        if path == "disk":
            from mschange.scancache import ScanCache

            cache = ScanCache(cache_dir)
            sampler = CropSampler.from_files(images, masks, crop, rng, cache)
            cache_gb = cache.size_bytes() / 1e9
        else:
            volumes, brains = load_training_scans(images, masks)
            keep += [volumes, brains]
            sampler = CropSampler(volumes, brains, crop, rng)
        ready = time.perf_counter()
        for _ in range(batches):
            sampler.crop_batch(2)
    else:
        from mschange.detection.training import (
            DetectorTrainingSettings,
            PairSampler,
            TrainingSample,
            load_sample,
        )

        samples = [
            TrainingSample(
                str(f / "image.nii.gz"), str(f / "followup.nii.gz"), str(f / "label.nii.gz")
            )
            for f in folders
        ]
        if path == "disk":
            from mschange.detection.training import cached_sample
            from mschange.scancache import ScanCache

            cache = ScanCache(cache_dir)
            loaded = [cached_sample(s, cache) for s in samples]
            cache_gb = cache.size_bytes() / 1e9
        else:
            loaded = [load_sample(s) for s in samples]
        settings = DetectorTrainingSettings(patch_size=patch, batch_size=2)
        pairs = PairSampler(loaded, settings, rng)
        ready = time.perf_counter()
        for _ in range(batches):
            pairs.batch()
    done = time.perf_counter()
    return {
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "imports_rss_mb": imports_mb,
        "setup_s": ready - started,
        "batch_s": (done - ready) / batches,
        "cache_gb": cache_gb,
    }


def measure(
    args: argparse.Namespace, kind: str, path: str, subjects: int, data: Path
) -> dict[str, float]:
    cache_dir = data.parent / f"cache-{kind}-{subjects}"
    command = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--path",
        path,
        "--data",
        str(data),
        "--n",
        str(subjects),
        "--cache",
        str(cache_dir),
        "--batches",
        str(args.batches),
        "--crop",
        *map(str, args.crop),
        "--patch",
        *(map(str, args.patch) if args.patch else ["none"]),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if path == "memory" and args.memory_src:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(Path(args.memory_src).resolve()), env.get("PYTHONPATH", "")]
        )
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if result.returncode:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
        values: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
        return values
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--subjects",
        type=int,
        nargs="+",
        default=[10, 200],
        help="subject counts measured on the disk path",
    )
    parser.add_argument(
        "--memory-subjects",
        type=int,
        nargs="*",
        default=[10, 40],
        help="subject counts measured on the in-memory path (it needs "
        "about 50 MB per subject for the VAE)",
    )
    parser.add_argument("--memory-src", help="run the in-memory path on this src folder")
    parser.add_argument("--shape", type=int, nargs=3, default=[160, 200, 170])
    parser.add_argument("--distinct", type=int, default=10, help="subjects generated")
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument(
        "--crop", type=int, nargs=3, default=[192, 192, 16], help="VAE crop (the paper's)"
    )
    parser.add_argument(
        "--patch",
        nargs="+",
        default=["none"],
        help="detector patch, or none: whole brain boxes (the paper's)",
    )
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument(
        "--workdir",
        help="where the subjects are written (default: a temporary folder, removed at the end)",
    )
    parser.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--path", choices=("disk", "memory"), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.patch = None if args.patch == ["none"] else [int(p) for p in args.patch]
    if args.child:
        values = child(
            args.child,
            args.path,
            Path(args.data),
            args.n,
            Path(args.cache),
            args.batches,
            tuple(args.crop),
            None if args.patch is None else tuple(args.patch),
        )
        print(json.dumps(values))
        return

    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="trainmem-"))
    data = root / "subjects"
    try:
        total = max([*args.subjects, *args.memory_subjects])
        started = time.perf_counter()
        write_subjects(data, tuple(args.shape), min(args.distinct, total), total)
        print(
            f"{total} placeholder subjects ({args.distinct} distinct) of "
            f"{'x'.join(map(str, args.shape))} voxels written in "
            f"{time.perf_counter() - started:.0f} s",
            file=sys.stderr,
        )
        rows = []
        for kind in args.kinds:
            for path, counts in (("memory", args.memory_subjects), ("disk", args.subjects)):
                for subjects in counts:
                    values = measure(args, kind, path, subjects, data)
                    print(kind, path, subjects, values, file=sys.stderr)
                    rows.append((kind, path, subjects, values))
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)

    patch = "whole brain boxes" if args.patch is None else "x".join(map(str, args.patch))
    print(
        f"\nVolumes {'x'.join(map(str, args.shape))} (1 mm), {args.batches} batches of 2; "
        f"VAE crops {'x'.join(map(str, args.crop))}, detector {patch}; one run per "
        f"row, 1 thread\n"
    )
    print(
        "| sampler | scans | subjects | peak RSS (MB) | RSS after imports (MB) | "
        "setup (s) | per batch (s) | cache on disk (GB) |"
    )
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for kind, path, subjects, values in rows:
        where = "read from the scan cache" if path == "disk" else "all in memory"
        print(
            f"| {kind} | {where} | {subjects} | {values['peak_rss_mb']:.0f} | "
            f"{values['imports_rss_mb']:.0f} | {values['setup_s']:.1f} | "
            f"{values['batch_s']:.3f} | {values['cache_gb']:.2f} |"
        )


if __name__ == "__main__":
    main()
