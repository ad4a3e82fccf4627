"""Running the workflow from tests: the command, config overlays, job counts, the tiny cohort."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]


def snakemake(
    workdir: Path, *args: str, configfile: Path | None = None
) -> subprocess.CompletedProcess[str]:
    command = [*SNAKEMAKE, "--directory", str(workdir)]
    if configfile is not None:
        command += ["--configfile", str(configfile)]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=1800)


def planned_jobs(result: subprocess.CompletedProcess[str]) -> dict[str, int]:
    """Job counts per rule from `snakemake -n --quiet rules`."""
    assert result.returncode == 0, result.stderr + result.stdout
    counts = {}
    for line in (result.stdout + result.stderr).splitlines():
        match = re.fullmatch(r"\s*([a-z0-9_]+)\s+(\d+)\s*", line)
        if match and match.group(1) != "total":
            counts[match.group(1)] = int(match.group(2))
    return counts


def write_config(path: Path, **changes: dict) -> Path:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    for section, values in changes.items():
        if isinstance(values, dict):
            config.setdefault(section, {}).update(values)
        else:
            config[section] = values
    path.write_text(yaml.safe_dump(config))
    return path


TINY = {
    "demo": {"n_train": 1, "n_test": 1, "n_single": 1, "voxel_size_mm": 2.0},
    "preprocessing": {"resolution_mm": 2.0},
    "synthesis": {
        "vae": {
            "channels": [8, 16],
            "latent_channels": 4,
            "crop_size": [32, 32, 16],
            "iterations": 2,
            "crops_per_iteration": 4,
        },
        "supermix": {"samples_per_subject": 2, "n_segments": [50, 300], "tau": 0.9},
        "figures": {"n_segments": [50, 300], "deltas": [5.0]},
    },
    "detector": {
        "architecture": {"channels": [8, 16], "modules_per_block": 1},
        "training": {"iterations": 2, "pairs_per_iteration": 2, "patch_size": [16, 16, 16]},
        "inference": {"window": None, "min_blob_voxels": 3},
    },
    # Two models (the main one and the plain U-Net), each scored at two blob sizes.
    "experiments": {"compare": ["unet-ftl"], "min_blob_voxels": [3, 8]},
}


# The jobs that rerun whenever the main model's prediction changes: the evaluation's
# tables and report, the test pair's viewer and summary, and the BIDS derivatives dataset.
REPORT_JOBS = {
    "evaluation_tables": 1,
    "evaluation_report": 1,
    "pair_pages": 1,
    "bids_derivatives": 1,
}
