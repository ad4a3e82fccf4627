"""Benchmark: how long Snakemake takes to submit N jobs to SLURM, one sbatch per job
against SLURM job arrays (snakemake-executor-plugin-slurm's ``--slurm-array-jobs``).

Starts the project's single-node test cluster (tests/slurm/start_cluster.sh, as root,
with Debian's munge, slurm-wlm, slurmdbd and mariadb-server), drains its node so that
every job stays pending (sbatch accepts jobs for a drained node; nothing runs, so only
the submission is timed), and runs a throwaway workflow of one rule expanded to
``--jobs`` trivial jobs (``touch out/{i}.txt``) through profiles/slurm with ``--jobs N``:

* ``single`` (``--single-repeats`` times): the profile as is, one sbatch call per job.
  Plugin 2.6.1 sleeps 5 s before each such call, on 2 submission threads: about 2.5 s
  a job, 42 min for 1,000 (hence one run by default);
* ``array`` (``--repeats`` times): ``--slurm-array-jobs all --max-jobs-per-timespan N/1s``.

and once each, to show how array mode fails (not timed against the others):

* ``array_default_rate``: ``--slurm-array-jobs all`` alone. Snakemake hands the plugin
  at most 100 jobs a second (``--max-jobs-per-timespan`` 100/1s), and plugin 2.6.1
  silently drops every batch of a rule smaller than the rule's ready jobs (and than
  the array size limit) without submitting it (snakemake-executor-plugin-slurm issue
  #473): those jobs are never submitted and the run hangs;
* ``array_jobs_100``: as ``array`` but with the profile's ``--jobs 100``: the same drop.

A stalled run stops once the queue has not grown for ``--stall-seconds``.

Each run is a fresh Snakemake process in a fresh folder; it is timed from its start to
the moment ``squeue -r`` lists all N jobs (array tasks counted one by one; polled every
``--poll`` seconds), then killed and its jobs cancelled. ``sbatch_calls`` counts the
distinct SLURM job ids (an array is one). Finally the node is resumed and a small
workflow (``--e2e-jobs``) runs to completion with ``--slurm-array-jobs all``; its outputs
and sacct's states say whether array jobs work end to end with the profile.

    python benchmarks/slurm_arrays.py --jobs 1000 --repeats 3 --single-repeats 1 \\
        --out docs/benchmark_slurm_arrays.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

SNAKEFILE = """\
COUNT = int(config.get("count", 1000))

rule all:
    input: expand("out/{i}.txt", i=range(COUNT))
    localrule: True

rule touch:
    output: "out/{i}.txt"
    threads: 1
    resources: mem_mb=100, runtime=5
    shell: "touch {output}"
"""


def modes(jobs: int) -> dict[str, list[str]]:
    """Each mode's flags, after `--profile profiles/slurm --jobs N`."""
    array = ["--slurm-array-jobs", "all", "--max-jobs-per-timespan", f"{jobs}/1s"]
    return {
        "single": [],
        "array": array,
        "array_default_rate": ["--slurm-array-jobs", "all"],
        "array_jobs_100": [*array, "--jobs", "100"],
    }


def run(command: list[str], env: dict[str, str], **kwargs: Any) -> str:
    return subprocess.run(
        command, env=env, capture_output=True, text=True, check=True, timeout=120, **kwargs
    ).stdout


@contextmanager
def test_cluster(state: Path) -> Iterator[dict[str, str]]:
    """The single-node test cluster, started in `state` and stopped on leaving."""
    try:
        subprocess.run(
            [str(REPO / "tests" / "slurm" / "start_cluster.sh"), str(state)],
            check=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
        )
        yield {**os.environ, "SLURM_CONF": str(state / "etc" / "slurm.conf")}
    finally:
        subprocess.run([str(REPO / "tests" / "slurm" / "stop_cluster.sh"), str(state)], timeout=300)


def queued(env: dict[str, str]) -> list[str]:
    """The SLURM job id (an array's own id for each of its tasks) of every queued job or
    array task."""
    return run(["squeue", "-h", "-r", "-o", "%F"], env).split()


def cancel_all(env: dict[str, str]) -> None:
    run(["scancel", "--user", str(os.getuid())], env)
    end = time.monotonic() + 120
    while queued(env):
        if time.monotonic() > end:
            raise RuntimeError("jobs still queued 120 s after scancel")
        time.sleep(0.5)


def snakemake_command(folder: Path, jobs: int, extra: list[str]) -> list[str]:
    return [
        *SNAKEMAKE,
        "--snakefile",
        str(folder.parent / "Snakefile"),
        "--directory",
        str(folder),
        "--profile",
        str(REPO / "profiles" / "slurm"),
        "--jobs",
        str(jobs),
        "--config",
        f"count={jobs}",
        *extra,
    ]


def measure(
    folder: Path,
    jobs: int,
    extra: list[str],
    env: dict[str, str],
    poll: float,
    timeout: float,
    stall: float,
) -> dict[str, Any]:
    """Starts Snakemake and times until all its jobs are queued (or the queue stalls)."""
    if queued(env):
        raise RuntimeError("the queue is not empty")
    folder.mkdir()
    log = folder / "snakemake.log"
    with log.open("w") as handle:
        started = time.monotonic()
        process = subprocess.Popen(
            snakemake_command(folder, jobs, extra),
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        first = done = None
        count, last_growth, ids = 0, started, []
        try:
            while True:
                time.sleep(poll)
                now = time.monotonic()
                ids = queued(env)
                if len(ids) > count:
                    count, last_growth = len(ids), now
                if count and first is None:
                    first = now - started
                if count >= jobs:
                    done = now - started
                    break
                if now - started > timeout or now - last_growth > stall:
                    break
                if process.poll() is not None:
                    break
        finally:
            # Snakemake waits for its "running" jobs on SIGINT/SIGTERM: kill it.
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            cancel_all(env)
    text = log.read_text()
    return {
        "seconds_to_all_queued": None if done is None else round(done, 2),
        "seconds_to_first_queued": None if first is None else round(first, 2),
        "jobs_queued": count,
        "sbatch_calls": len(set(ids)),
        "array_submissions_logged": text.count("Submitted array job"),
        "single_submissions_logged": text.count("has been submitted with SLURM jobid"),
    }


def end_to_end(folder: Path, jobs: int, env: dict[str, str], node: str) -> dict[str, Any]:
    """A small workflow run to completion with --slurm-array-jobs all."""
    run(["scontrol", "update", f"nodename={node}", "state=resume"], env)
    folder.mkdir()
    started = time.monotonic()
    result = subprocess.run(
        [
            *snakemake_command(folder, jobs, ["--slurm-array-jobs", "all"]),
            "--slurm-init-seconds-before-status-checks",
            "1",
            "--latency-wait",
            "5",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    seconds = time.monotonic() - started
    (folder / "snakemake.log").write_text(result.stdout + result.stderr)
    # The plugin names every job of a run after the run's id.
    run_id = re.search(r"SLURM run ID: (\S+)", result.stderr)
    accounting = run(
        [
            "sacct",
            "--allusers",
            "--noheader",
            "--parsable2",
            "--allocations",
            "--starttime",
            "now-1days",
            "--name",
            run_id.group(1) if run_id else "-",
            "--format",
            "JobID,State,Partition",
        ],
        env,
    )
    rows = [line.split("|") for line in accounting.splitlines() if line]
    outputs = sum((folder / "out" / f"{i}.txt").exists() for i in range(jobs))
    return {
        "jobs": jobs,
        "returncode": result.returncode,
        "seconds": round(seconds, 1),
        "outputs_present": outputs,
        "slurm_tasks": len(rows),
        "sbatch_calls": len({job_id.split("_")[0] for job_id, _, _ in rows}),
        "states": sorted({state for _, state, _ in rows}),
        "partitions": sorted({partition for _, _, partition in rows}),
        "submitted_as_array": "Submitted array job" in result.stderr,
        "works": (
            result.returncode == 0
            and outputs == jobs
            and len(rows) == jobs
            and {state for _, state, _ in rows} == {"COMPLETED"}
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--jobs",
        type=int,
        default=1000,
        help="jobs to submit (at most the cluster's MaxArraySize - 1, "
        "1000 by default, for a single array)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs of array mode")
    parser.add_argument(
        "--single-repeats",
        type=int,
        default=1,
        help="runs of single-submission mode (about 2.5 s a job)",
    )
    parser.add_argument("--poll", type=float, default=0.5, help="squeue interval (s)")
    parser.add_argument(
        "--timeout", type=float, default=4 * 3600, help="give up on a run after this many seconds"
    )
    parser.add_argument(
        "--stall-seconds",
        type=float,
        default=30,
        help="stop a run once the queue has not grown for this long",
    )
    parser.add_argument(
        "--e2e-jobs", type=int, default=10, help="jobs of the end-to-end array run (0: skip it)"
    )
    parser.add_argument(
        "--out", type=Path, default=REPO / "results" / "benchmarks" / "slurm_arrays.json"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("the test cluster needs root")
    all_modes = modes(args.jobs)
    timed = ["single", "array"]
    repeats = {
        "single": args.single_repeats,
        "array": args.repeats,
        "array_default_rate": 1,
        "array_jobs_100": 1,
    }
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in all_modes}
    with tempfile.TemporaryDirectory(prefix="slurm_arrays_") as tmp:
        folder = Path(tmp)
        (folder / "Snakefile").write_text(SNAKEFILE)
        with test_cluster(folder / "cluster") as env:
            node = run(["sinfo", "-h", "-N", "-o", "%N"], env).split()[0]
            versions = {"slurm": run(["sbatch", "--version"], env).strip()}
            run(["scontrol", "update", f"nodename={node}", "state=drain", "reason=bench"], env)
            for repeat in range(max(repeats.values())):
                for mode in [m for m in all_modes if repeat < repeats[m]]:
                    result = measure(
                        folder / f"{mode}_{repeat}",
                        args.jobs,
                        all_modes[mode],
                        env,
                        args.poll,
                        args.timeout,
                        args.stall_seconds,
                    )
                    runs[mode].append(result)
                    print(mode, json.dumps(result), flush=True)
            e2e = end_to_end(folder / "e2e", args.e2e_jobs, env, node) if args.e2e_jobs else None
            print("end to end", json.dumps(e2e), flush=True)

    def median(mode: str) -> float | None:
        times = [r["seconds_to_all_queued"] for r in runs[mode]]
        return statistics.median(times) if times and None not in times else None

    medians = {mode: median(mode) for mode in timed}
    report: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            **versions,
            "snakemake": version("snakemake"),
            "snakemake-executor-plugin-slurm": version("snakemake-executor-plugin-slurm"),
        },
        "cluster": "tests/slurm single-node test cluster, node drained (jobs stay pending)",
        "jobs": args.jobs,
        "repeats": repeats,
        "command": "snakemake --profile profiles/slurm --jobs N <mode's flags>",
        "modes": {mode: " ".join(flags) for mode, flags in all_modes.items()},
        "median_seconds_to_all_queued": medians,
        "runs": runs,
        "end_to_end_array_run": e2e,
    }
    if medians["single"] and medians["array"]:
        report["ratio_single_to_array"] = round(medians["single"] / medians["array"], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
