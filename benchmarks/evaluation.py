"""Benchmark: scoring one pair (all three metric families) and one whole evaluate_pair job.

``score_pair`` is timed on the demo pair's label grid (1 mm) against the detector's
prediction; ``evaluate_pair_step`` is the whole job of one method on one pair (loading,
thresholding, mapping onto the label grid, the three families for all/brighter/darker,
the threshold sweep and the overlay figure). Median of ``--repeats`` runs, in-process
(a Snakemake job adds a few seconds of Python start-up).

    python benchmarks/evaluation.py --subject demo04 --threads 2    # after `make demo`
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from mschange.detection.outputs import PREDICTION_SUFFIXES
from mschange.evaluation.metrics import MetricSettings, score_pair
from mschange.evaluation.outputs import evaluation_paths
from mschange.evaluation.steps import evaluate_pair_step

REPO = Path(__file__).resolve().parents[1]


def median_seconds(run: Callable[[], Any], repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times), times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subject", default="demo04")
    parser.add_argument("--results", type=Path, default=REPO / "results")
    parser.add_argument("--model", default="siamese-inc-ag-ms-ds")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--out", type=Path, default=REPO / "results" / "benchmarks" / "evaluation.json"
    )
    args = parser.parse_args()
    subject, results = args.subject, args.results
    preproc = results / "preproc" / f"sub-{subject}" / f"sub-{subject}"
    predict = results / "predict" / f"model-{args.model}" / f"sub-{subject}" / f"sub-{subject}"
    demo = results / "demo" / f"sub-{subject}" / f"sub-{subject}"
    label = Path(f"{demo}_tp-followup_desc-change_mask.nii.gz")
    native = Path(f"{demo}_tp-followup_FLAIR.nii.gz")
    truth_image = nib.load(label)
    truth = np.asarray(truth_image.dataobj) > 0
    prediction = np.asarray(nib.load(f"{predict}_space-native_desc-change_mask.nii.gz").dataobj) > 0
    voxel_volume = float(np.prod(truth_image.header.get_zooms()[:3]))
    report: dict[str, Any] = {
        "machine": platform.processor() or platform.machine(),
        "threads": args.threads,
        "subject": subject,
        "grid": list(truth.shape),
        "repeats": args.repeats,
    }
    # SciPy's ndimage runs on one thread: --threads is only recorded.
    seconds, runs = median_seconds(
        lambda: score_pair(truth, prediction, voxel_volume, MetricSettings()), args.repeats
    )
    report["score_pair_s"] = {"median": seconds, "runs": runs}
    with tempfile.TemporaryDirectory() as folder:

        def job() -> None:
            evaluate_pair_step(
                score=f"{predict}{PREDICTION_SUFFIXES['probability']}",
                baseline=f"{preproc}_tp-baseline_space-followup_desc-preproc_FLAIR.nii.gz",
                followup=f"{preproc}_tp-followup_space-followup_desc-preproc_FLAIR.nii.gz",
                masks=[
                    f"{preproc}_tp-baseline_space-followup_desc-brain_mask.nii.gz",
                    f"{preproc}_tp-followup_desc-brain_mask.nii.gz",
                ],
                native_followup=native,
                label=label,
                outputs=evaluation_paths(folder, subject),
                subject=subject,
                method=args.model,
                threshold=0.1,
                sweep_thresholds=[0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9],
                min_blob_voxels=20,
                settings=MetricSettings(),
            )

        seconds, runs = median_seconds(job, args.repeats)
        report["evaluate_pair_s"] = {"median": seconds, "runs": runs}
    report["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
