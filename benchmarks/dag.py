"""Benchmark: how long Snakemake takes to plan the workflow (a dry run) for a large cohort.

Writes a cohort sheet of ``--pairs`` pairs (half no-change training pairs, half test
pairs; tiny placeholder images, since a dry run reads only their headers), then times
``snakemake -n --quiet`` (parsing, input checks, building the job graph) over
``--repeats`` runs in fresh processes, and reports the median and the job count.

    python benchmarks/dag.py --pairs 1000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]


def write_cohort(folder: Path, pairs: int) -> Path:
    image = nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4))
    (folder / "images").mkdir()
    rows = []
    for index in range(pairs):
        subject = f"p{index:05d}"
        for tp in ("baseline", "followup"):
            nib.save(image, folder / "images" / f"{subject}_{tp}.nii.gz")
        training = index < pairs // 2
        rows.append({"subject": subject, "baseline": f"images/{subject}_baseline.nii.gz",
                     "followup": f"images/{subject}_followup.nii.gz",
                     "split": "train" if training else "test",
                     "change": "no" if training else "unknown"})
    pd.DataFrame(rows).to_csv(folder / "cohort.tsv", sep="\t", index=False)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["cohort"] = {"source": "sheet", "sheet": "cohort.tsv"}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path,
                        default=REPO / "results" / "benchmarks" / "dag.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = write_cohort(folder, args.pairs)
        command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
                   "--directory", str(folder), "--configfile", str(config), "-n",
                   "--quiet", "rules"]
        times, jobs = [], 0
        for _ in range(args.repeats):
            started = time.perf_counter()
            result = subprocess.run(command, capture_output=True, text=True, check=True)
            times.append(time.perf_counter() - started)
            total = re.search(r"^total\s+(\d+)", result.stdout + result.stderr, re.MULTILINE)
            jobs = int(total.group(1)) if total else 0
    report = {"pairs": args.pairs, "jobs": jobs, "median_s": statistics.median(times),
              "runs_s": times}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
