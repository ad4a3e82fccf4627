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


def _run(queue: Any, step: str, kwargs: dict[str, Any]) -> None:
    from mschange.preprocessing import steps

    started = time.perf_counter()
    getattr(steps, step)(**kwargs)
    seconds = time.perf_counter() - started
    queue.put((seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0))


def run_step(step: str, **kwargs: Any) -> tuple[float, float]:
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_run, args=(queue, step, kwargs))
    process.start()
    result = queue.get()
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"{step} failed")
    return result


def preprocess_once(pair_dir: Path, work: Path, threads: int, registration_threads: int
                    ) -> dict[str, tuple[float, float]]:
    s = "bench"
    p = {name: str(work / f"{name}.nii.gz") for name in [
        "bl_res", "fu_res", "bl_brain", "bl_mask", "fu_brain", "fu_mask", "bl_moved",
        "bl_moved_mask", "bl_n4", "fu_n4", "bl_norm", "fu_norm"]}
    xfm = str(work / "xfm.mat")
    record: dict[str, tuple[float, float]] = {}

    def add(name: str, result: tuple[float, float]) -> None:
        seconds, mem = record.get(name, (0.0, 0.0))
        record[name] = (seconds + result[0], max(mem, result[1]))

    for tp, scan in (("bl", "study1_FLAIR.nii.gz"), ("fu", "study2_FLAIR.nii.gz")):
        add("resample_isotropic", run_step("resample_step", scan=pair_dir / scan,
                                           output=p[f"{tp}_res"], subject=s, resolution_mm=1.0))
        add("skullstrip_hdbet", run_step("skullstrip_step", scan=p[f"{tp}_res"],
                                         brain_output=p[f"{tp}_brain"],
                                         mask_output=p[f"{tp}_mask"], subject=s,
                                         threads=threads))
    add("register_baseline_to_followup", run_step(
        "register_step", followup_brain=p["fu_brain"], baseline_brain=p["bl_brain"],
        baseline_mask=p["bl_mask"], transform_output=xfm, moved_brain_output=p["bl_moved"],
        moved_mask_output=p["bl_moved_mask"], subject=s, threads=registration_threads))
    for tp, brain, mask in (("bl", "bl_moved", "bl_moved_mask"), ("fu", "fu_brain", "fu_mask")):
        add("correct_bias_n4", run_step("n4_step", brain=p[brain], mask=p[mask],
                                        output=p[f"{tp}_n4"], subject=s, threads=threads))
        add("normalize_intensity", run_step("normalize_step", brain=p[f"{tp}_n4"],
                                            mask=p[mask], output=p[f"{tp}_norm"], subject=s))
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
            record = preprocess_once(DATA / "longitudinal" / args.pair, Path(work), args.threads,
                                     args.registration_threads)
        runs.append(record)
        print(f"run {repeat + 1}: " + ", ".join(f"{k} {v[0]:.1f} s" for k, v in record.items()))
    summary = {step: {"median_seconds": statistics.median(r[step][0] for r in runs),
                      "peak_memory_mb": max(r[step][1] for r in runs)} for step in runs[0]}
    total = statistics.median(sum(v[0] for v in r.values()) for r in runs)
    print(f"\n{args.pair}, {args.repeats} runs, {args.threads} threads "
          f"({args.registration_threads} for registration), "
          f"{platform.processor() or platform.machine()}")
    print("| step | median wall time (s) | peak memory (MB) |\n|---|---|---|")
    for step, values in summary.items():
        print(f"| {step} | {values['median_seconds']:.1f} | {values['peak_memory_mb']:.0f} |")
    print(f"| **whole pair** | **{total:.1f}** | |")
    if args.json:
        args.json.write_text(json.dumps({"pair": args.pair, "steps": summary,
                                         "total_median_seconds": total}, indent=2))


if __name__ == "__main__":
    main()
