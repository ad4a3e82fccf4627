"""The workflow on a real SLURM cluster, through the project's profile (profiles/slurm).

A single-node cluster (Debian's slurm-wlm, slurmdbd, munge and MariaDB, on localhost)
is started for these tests by tests/slurm/start_cluster.sh; the tiny demo cohort then
runs through snakemake-executor-plugin-slurm, and its outputs are compared with the
local run's. Needs root and the packages (.ci/run installs them); skipped otherwise.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time

import pandas as pd
import pytest

from .conftest import REPO
from .workflow_comparison import compare_results
from .workflow_runs import SNAKEMAKE, planned_jobs, snakemake

CLUSTER_TOOLS = ["munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd", "sbatch", "sacct"]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.geteuid() != 0 or not all(shutil.which(tool) for tool in CLUSTER_TOOLS),
        reason="needs root and Debian's munge, slurm-wlm, slurmdbd and mariadb-server "
        "(.ci/run installs them)",
    ),
]


def local_rules() -> set[str]:
    """Rules marked `localrule: True` (they run in the Snakemake process, never as cluster
    jobs), and `all`."""
    found = {"all"}
    for path in (REPO / "rules").glob("*.smk"):
        for name, body in re.findall(
            r"^rule (\w+):\n(.*?)(?=^\S|\Z)", path.read_text(), re.M | re.S
        ):
            if re.search(r"^\s+localrule: True", body, re.M):
                found.add(name)
    return found


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    state = tmp_path_factory.mktemp("slurm")
    started = subprocess.run(
        [str(REPO / "tests" / "slurm" / "start_cluster.sh"), str(state)],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert started.returncode == 0, started.stderr
        yield {**os.environ, "SLURM_CONF": str(state / "etc" / "slurm.conf")}
    finally:
        subprocess.run(
            [str(REPO / "tests" / "slurm" / "stop_cluster.sh"), str(state)],
            capture_output=True,
            timeout=300,
        )


@pytest.fixture(scope="module")
def slurm_run(slurm_cluster, tiny_run, tmp_path_factory):
    """The tiny demo cohort run again, from nothing, through SLURM with profiles/slurm."""
    local, config = tiny_run
    workdir = tmp_path_factory.mktemp("tiny_slurm")
    planned = planned_jobs(snakemake(workdir, "-n", "--quiet", "rules", configfile=config))
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    # The profile as a user has it, with what suits a 2-core test node: two cores per
    # job at most, and status checks from the first second.
    result = subprocess.run(
        [
            *SNAKEMAKE,
            "--directory",
            str(workdir),
            "--configfile",
            str(config),
            "--profile",
            str(REPO / "profiles" / "slurm"),
            "--jobs",
            "4",
            "--cores",
            "2",
            "--max-threads",
            "2",
            "--slurm-init-seconds-before-status-checks",
            "1",
            "--latency-wait",
            "5",
        ],
        env=slurm_cluster,
        capture_output=True,
        text=True,
        timeout=2400,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    accounting = subprocess.run(
        [
            "sacct",
            "--allusers",
            "--noheader",
            "--parsable2",
            "--allocations",
            "--starttime",
            started,
            "--format",
            "JobID,Partition,State,Comment%300",
        ],
        env=slurm_cluster,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    jobs = pd.DataFrame(
        [line.split("|") for line in accounting.stdout.splitlines()],
        columns=["job", "partition", "state", "comment"],
    )
    return local, workdir, planned, jobs, result


def rules_of_jobs(jobs: pd.DataFrame) -> tuple[dict[str, int], list[str]]:
    """Jobs per rule, and the subjects of the preprocessing group jobs, from the SLURM
    comments (`rule_<rule>[_wildcards_<values>]`, `rule_preprocess_<subject>_<rules>`)."""
    grouped = jobs["comment"].str.startswith("rule_preprocess_")
    rules = jobs.loc[~grouped, "comment"].str.extract(r"^rule_(\w+?)(?:_wildcards_|$)")[0]
    subjects = jobs.loc[grouped, "comment"].str.extract(r"^rule_preprocess_([A-Za-z0-9]+)_")[0]
    return rules.value_counts().to_dict(), sorted(subjects)


def test_every_cluster_job_went_through_slurm_and_completed(slurm_run):
    _, _, planned, jobs, result = slurm_run
    assert (jobs["state"] == "COMPLETED").all(), jobs
    per_rule, grouped_subjects = rules_of_jobs(jobs)
    preprocessing = {
        "resample_isotropic",
        "skullstrip_hdbet",
        "register_baseline_to_followup",
        "correct_bias_n4",
        "normalize_intensity",
        "simulate_rescan",
    }
    assert per_rule == {
        rule: n for rule, n in planned.items() if rule not in local_rules() | preprocessing
    }
    # One job per subject for its whole preprocessing (group preprocess_<subject>).
    assert grouped_subjects == ["demo01", "demo02", "demo03"]
    # device: cpu, so no job asks for a GPU: partitions.yaml sends all to `cpu`.
    assert set(jobs["partition"]) == {"cpu"}
    assert "Auto-selected partition 'cpu' for job train_detector" in result.stderr


def test_slurm_outputs_equal_the_local_run(slurm_run):
    local, workdir, _, _, _ = slurm_run
    compared = compare_results(local / "results", workdir / "results")
    assert compared > 50


def test_status_table_after_the_slurm_run(slurm_run):
    _, workdir, _, _, _ = slurm_run
    status = pd.read_csv(
        workdir / "results" / "status" / "cohort_status.tsv", sep="\t", keep_default_na=False
    )
    assert status["state"].tolist() == ["complete"] * 3
    assert status["stage_reached"].tolist() == ["synthesised", "evaluated", "synthesised"]


def test_a_rerun_after_the_slurm_run_has_nothing_to_do(slurm_run):
    local, workdir, _, _, _ = slurm_run
    result = snakemake(workdir, "-n", configfile=local / "config.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Nothing to be done" in result.stdout + result.stderr
