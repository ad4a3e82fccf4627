"""Benchmark: how long Snakemake takes to plan the workflow (a dry run) for large cohorts.

For each size in ``--pairs`` writes a cohort sheet of that many pairs (half no-change
training pairs, half test pairs; tiny placeholder images, since a dry run reads only
their headers), then runs ``snakemake -n --quiet rules`` (parsing, input checks,
building the job graph) ``--repeats`` times in fresh processes, and reports per size the
median wall time, the peak memory (maximum resident set size) of the Snakemake process
and the job count; with several sizes also the growth order: the slope of log(time) and
log(memory) against log(pairs) between consecutive sizes and fitted over all of them
(1: linear, 2: quadratic).

    python benchmarks/dag.py --pairs 1000 --repeats 3
    python benchmarks/dag.py --pairs 1000 2000 5000 --repeats 3 --max-seconds 900

The first run of a size checks every image (the check's cache is then warm, as in a
folder a user plans again); ``--max-seconds`` stops repeating a size once another run
would take its runs past that many seconds (at least one run each).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from itertools import pairwise
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]


def write_cohort(folder: Path, pairs: int, workflow: Path = REPO) -> Path:
    # 16 voxels of 6 mm (96 mm) per axis, not blank, different at the two time points: the
    # smallest images the input checks accept as a pair's scans.
    ramp = np.arange(16**3, dtype=np.float32).reshape(16, 16, 16)
    affine = np.diag([6.0, 6.0, 6.0, 1.0])
    images = {
        "baseline": nib.Nifti1Image(ramp, affine),
        "followup": nib.Nifti1Image(ramp + 1, affine),
    }
    (folder / "images").mkdir()
    rows = []
    for index in range(pairs):
        subject = f"p{index:05d}"
        for tp, image in images.items():
            nib.save(image, folder / "images" / f"{subject}_{tp}.nii.gz")
        training = index < pairs // 2
        rows.append(
            {
                "subject": subject,
                "baseline": f"images/{subject}_baseline.nii.gz",
                "followup": f"images/{subject}_followup.nii.gz",
                "split": "train" if training else "test",
                "change": "no" if training else "unknown",
            }
        )
    pd.DataFrame(rows).to_csv(folder / "cohort.tsv", sep="\t", index=False)
    config = yaml.safe_load((workflow / "config.yaml").read_text())
    config["cohort"] = {"source": "sheet", "sheet": "cohort.tsv"}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_measured(command: list[str], log: Path) -> tuple[float, int, str]:
    """Run ``command`` to its end; its wall time (s), its peak resident memory (KiB, that
    process alone, from wait4) and its output. Raises CalledProcessError on failure."""
    with log.open("w+") as out:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if process.returncode != 0:
        raise subprocess.CalledProcessError(process.returncode, command, text)
    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    peak_kib = usage.ru_maxrss // 1024 if sys.platform == "darwin" else usage.ru_maxrss
    return elapsed, peak_kib, text


def measure_size(
    pairs: int, repeats: int, max_seconds: float | None, workflow: Path = REPO
) -> dict[str, Any]:
    """Time ``repeats`` dry runs of a cohort of ``pairs`` pairs in fresh processes."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = write_cohort(folder, pairs, workflow)
        command = [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(workflow / "Snakefile"),
            "--directory",
            str(folder),
            "--configfile",
            str(config),
            "-n",
            "--quiet",
            "rules",
        ]
        times: list[float] = []
        memory_mib: list[float] = []
        jobs = 0
        for _ in range(repeats):
            if times and max_seconds is not None and sum(times) + max(times) > max_seconds:
                break
            elapsed, peak_kib, text = run_measured(command, folder / "snakemake.log")
            times.append(elapsed)
            memory_mib.append(peak_kib / 1024)
            total = re.search(r"^total\s+(\d+)", text, re.MULTILINE)
            jobs = int(total.group(1)) if total else 0
    median_s = statistics.median(times)
    return {
        "pairs": pairs,
        "jobs": jobs,
        "repeats": len(times),
        "median_s": median_s,
        "runs_s": times,
        "ms_per_job": 1000 * median_s / jobs if jobs else None,
        "peak_memory_mib": statistics.median(memory_mib),
        "runs_peak_memory_mib": memory_mib,
    }


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(y) against log(x): the growth order."""
    lx = [math.log(x) for x in xs]
    ly = [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum(
        (a - mx) ** 2 for a in lx
    )


def growth(sizes: list[dict[str, Any]]) -> dict[str, Any]:
    """Growth orders of time and memory, per step between sizes and over all sizes."""
    pairs = [s["pairs"] for s in sizes]
    result: dict[str, Any] = {"steps": []}
    for a, b in pairwise(sizes):
        result["steps"].append(
            {
                "pairs": [a["pairs"], b["pairs"]],
                "time_order": slope([a["pairs"], b["pairs"]], [a["median_s"], b["median_s"]]),
                "memory_order": slope(
                    [a["pairs"], b["pairs"]], [a["peak_memory_mib"], b["peak_memory_mib"]]
                ),
                "jobs_order": slope([a["pairs"], b["pairs"]], [a["jobs"], b["jobs"]]),
            }
        )
    result["time_order"] = slope(pairs, [s["median_s"] for s in sizes])
    result["memory_order"] = slope(pairs, [s["peak_memory_mib"] for s in sizes])
    result["jobs_order"] = slope(pairs, [s["jobs"] for s in sizes])
    first, last = sizes[0], sizes[-1]
    # Time and memory above the first size's, per extra job: what each job costs once
    # the fixed part (starting Python and Snakemake, parsing the workflow) is paid.
    result["ms_per_extra_job"] = (
        1000 * (last["median_s"] - first["median_s"]) / (last["jobs"] - first["jobs"])
        if last["jobs"] > first["jobs"]
        else None
    )
    result["memory_mib_per_1000_jobs"] = (
        1000 * (last["peak_memory_mib"] - first["peak_memory_mib"]) / (last["jobs"] - first["jobs"])
        if last["jobs"] > first["jobs"]
        else None
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pairs",
        type=int,
        nargs="+",
        default=[1000],
        help="cohort sizes (pairs), each measured in its own folder",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="stop repeating a size once another run would take its "
        "runs past this many seconds (at least one run)",
    )
    parser.add_argument(
        "--workflow",
        type=Path,
        default=REPO,
        help="the checkout whose workflow is planned (default: this one), "
        "e.g. an older commit's, to compare",
    )
    parser.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks" / "dag.json")
    args = parser.parse_args()
    sizes = []
    for pairs in sorted(set(args.pairs)):
        sizes.append(measure_size(pairs, args.repeats, args.max_seconds, args.workflow.resolve()))
        print(json.dumps(sizes[-1]), flush=True)
    report: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "snakemake": version("snakemake"),
        },
        "workflow": str(args.workflow.resolve()),
        "command": "snakemake -n --quiet rules (fresh process per run)",
        "sizes": sizes,
    }
    if len(sizes) > 1:
        report["growth"] = growth(sizes)
    else:  # the single-size report's keys, as before
        report.update({key: sizes[0][key] for key in ("pairs", "jobs", "median_s", "runs_s")})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
