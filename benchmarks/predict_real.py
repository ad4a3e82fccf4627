"""Benchmark: `mschange predict` with the shipped detector on a real pair.

End to end (``mschange predict`` in a fresh process as a user runs it: start-up,
resampling, HD-BET, ANTs, N4, normalisation, the network, the outputs on both grids;
each stage's time from its progress line) and the network alone
(``predict_probability`` on the preprocessed pair that run wrote), each the median of
``--repeats`` runs, plus the network with mirroring test-time augmentation and as an
ensemble with a second model. Prints one JSON object.

    python benchmarks/predict_real.py \\
        --baseline ../shared/data/open_ms_data/longitudinal/patient01/study1_FLAIR.nii.gz \\
        --followup ../shared/data/open_ms_data/longitudinal/patient01/study2_FLAIR.nii.gz \\
        --second-model /path/to/results/detector/model-real-lesions/model.pt --threads 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mschange.detection.inference import predict_probability
from mschange.detection.modelfile import load_detector
from mschange.io import brain_intersection, load_float_image
from mschange.pretrained import DEFAULT_MODEL, inference_for, resolve_model
from mschange.torchrun import cpu_threads, flush_denormals


def median_seconds(run: Any, repeats: int) -> dict[str, Any]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return {"median_s": statistics.median(times), "runs_s": times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True)
    parser.add_argument("--followup", type=Path, required=True)
    parser.add_argument("--second-model", type=Path, help="a second model for the ensemble")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--end-to-end-only", action="store_true", help="skip the network-only variants"
    )
    args = parser.parse_args()
    flush_denormals()
    torch.set_num_threads(args.threads)
    model = resolve_model(None)
    network, metadata = load_detector(model)
    settings = inference_for(metadata)
    results: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads",
        "model": DEFAULT_MODEL,
        "settings": settings.as_dict(),
    }
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)

        stage_runs: list[dict[str, float]] = []

        def end_to_end() -> None:
            # As a user runs it: a fresh process, start-up included.
            finished = subprocess.run(
                [
                    str(Path(sys.executable).with_name("mschange")),
                    "predict",
                    "--baseline",
                    str(args.baseline),
                    "--followup",
                    str(args.followup),
                    "--out",
                    str(out),
                    "--subject",
                    "bench",
                    "--threads",
                    str(args.threads),
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            stage_runs.append(
                {
                    match[1]: float(match[2])
                    for match in re.finditer(
                        r"^\[\d+/\d+\] (.+): done in ([\d.]+) s$", finished.stderr, re.MULTILINE
                    )
                }
            )

        results["end_to_end"] = median_seconds(end_to_end, args.repeats)
        results["stages_median_s"] = {
            stage: statistics.median(run[stage] for run in stage_runs) for stage in stage_runs[0]
        }
        results["predict_max_rss_mb"] = (
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        )
        work = out / "preproc"
        baseline, _ = load_float_image(
            work / "sub-bench_tp-baseline_space-followup_desc-preproc_FLAIR.nii.gz"
        )
        followup, image = load_float_image(
            work / "sub-bench_tp-followup_space-followup_desc-preproc_FLAIR.nii.gz"
        )
        brain = brain_intersection(
            work / "sub-bench_tp-baseline_space-followup_desc-brain_mask.nii.gz",
            work / "sub-bench_tp-followup_desc-brain_mask.nii.gz",
        )
        variants: dict[str, tuple[Any, Any]] = {
            "network": ([network], settings),
            "network_mirror_lr": ([network], dataclasses.replace(settings, mirror_axes=(0,))),
            "network_mirror_all": ([network], dataclasses.replace(settings, mirror_axes=(0, 1, 2))),
        }
        if args.second_model:
            variants["network_ensemble_of_2"] = (
                [network, load_detector(args.second_model)[0]],
                settings,
            )
        if args.end_to_end_only:
            variants = {}
        with cpu_threads(args.threads, torch.device("cpu")):
            for name, (networks, variant) in variants.items():
                results[name] = median_seconds(
                    lambda n=networks, v=variant: predict_probability(
                        n, baseline, followup, brain, image.affine, v
                    ),
                    args.repeats,
                )
    results["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
