"""Benchmark: wall time and peak memory of each preprocessing step on one real pair (CPU).

Each step runs in a fresh process (as a Snakemake job would), so its peak resident
memory is its own. Repeats the whole pair ``--repeats`` times and reports medians.

    python benchmarks/preprocess_pair.py --pair patient01 --repeats 3 --threads 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "open_ms_data"


def _run(queue: Any, call: Any) -> None:
    started = time.perf_counter()
    call.run()
    seconds = time.perf_counter() - started
    queue.put((seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0))


def run_call(call: Any) -> tuple[float, float]:
    """One step call in a fresh process, as a Snakemake job runs it: (seconds, peak MB)."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_run, args=(queue, call))
    process.start()
    result = queue.get()
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"{call.label} failed")
    return result


def preprocess_once(
    pair_dir: Path, work: Path, threads: int, registration_threads: int
) -> dict[str, tuple[float, float]]:
    """Every step of the pipeline's plan for the pair (the workflow's own steps, in order,
    with the default preprocessing settings); per step, the summed time and peak memory
    over its time points."""
    from mschange.config import section_defaults
    from mschange.preprocessing.pipeline import plan_pair

    plan = plan_pair(
        {
            "baseline": pair_dir / "study1_FLAIR.nii.gz",
            "followup": pair_dir / "study2_FLAIR.nii.gz",
        },
        subject="bench",
        settings=section_defaults("preprocessing", resolution_mm=1.0),
        folder=str(work),
        threads=threads,
        registration_threads=registration_threads,
    )
    record: dict[str, tuple[float, float]] = {}
    for call in plan:
        seconds, memory = run_call(call)
        total, peak = record.get(call.step.rule, (0.0, 0.0))
        record[call.step.rule] = (total + seconds, max(peak, memory))
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", default="patient01")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    # The workflow's default (preprocessing.registration.threads): ANTs reproduces its
    # result exactly only single-threaded.
    parser.add_argument("--registration-threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the medians here")
    args = parser.parse_args()
    runs = []
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as work:
            record = preprocess_once(
                DATA / "longitudinal" / args.pair,
                Path(work),
                args.threads,
                args.registration_threads,
            )
        runs.append(record)
        print(f"run {repeat + 1}: " + ", ".join(f"{k} {v[0]:.1f} s" for k, v in record.items()))
    summary = {
        step: {
            "median_seconds": statistics.median(r[step][0] for r in runs),
            "peak_memory_mb": max(r[step][1] for r in runs),
        }
        for step in runs[0]
    }
    total = statistics.median(sum(v[0] for v in r.values()) for r in runs)
    print(
        f"\n{args.pair}, {args.repeats} runs, {args.threads} threads "
        f"({args.registration_threads} for registration), "
        f"{platform.processor() or platform.machine()}"
    )
    print("| step | median wall time (s) | peak memory (MB) |\n|---|---|---|")
    for step, values in summary.items():
        print(f"| {step} | {values['median_seconds']:.1f} | {values['peak_memory_mb']:.0f} |")
    print(f"| **whole pair** | **{total:.1f}** | |")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"pair": args.pair, "steps": summary, "total_median_seconds": total}, indent=2
            )
        )


if __name__ == "__main__":
    main()
