"""The cohort preprocessing QC table: one row per pair, flagged rows logged as warnings."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from mschange.io import atomic_path
from mschange.layout import TIMEPOINTS
from mschange.preprocessing.pipeline import PER_TIMEPOINT_RULES
from mschange.qc import qc_table

log = logging.getLogger(__name__)


def read_benchmark_seconds(path: Path) -> float:
    """Wall time from a Snakemake benchmark TSV; NaN if the job was not benchmarked."""
    try:
        return float(pd.read_csv(path, sep="\t")["s"].iloc[-1])
    except (OSError, ValueError, KeyError, IndexError):
        return float("nan")


def step_seconds(benchmark_dir: Path, step: str, subject: str) -> float:
    """Wall time of one step for one pair (summed over time points)."""
    if step in PER_TIMEPOINT_RULES:  # once per time point; the others once per pair
        return sum(
            read_benchmark_seconds(benchmark_dir / step / f"sub-{subject}_tp-{tp}.tsv")
            for tp in TIMEPOINTS
        )
    return read_benchmark_seconds(benchmark_dir / step / f"sub-{subject}.tsv")


def write_cohort_qc_table(
    qc_jsons: Iterable[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    cohort: Sequence[Mapping[str, Any]],
    steps: Sequence[str],
    benchmark_dir: str | os.PathLike[str],
    min_similarity: float,
    max_contrast: float,
    min_brain_ml: float,
    max_brain_ml: float,
) -> pd.DataFrame:
    by_subject = {str(row["subject"]): row for row in cohort}
    rows = []
    for path in qc_jsons:
        row = json.loads(Path(path).read_text())
        info = by_subject.get(row["subject"], {})
        row["split"] = info.get("split", "")
        row["change"] = info.get("change", "")
        for step in steps:
            row[f"seconds_{step}"] = round(
                step_seconds(Path(benchmark_dir), step, row["subject"]), 1
            )
        row["seconds_total"] = round(sum(row[f"seconds_{s}"] for s in steps), 1)
        rows.append(row)
    table = qc_table(
        rows,
        min_similarity=min_similarity,
        max_contrast=max_contrast,
        min_brain_ml=min_brain_ml,
        max_brain_ml=max_brain_ml,
    )
    for row in table[table["flagged"]].itertuples():
        log.warning("QC flag for subject %r: %s", row.subject, row.flag_reason)
    log.info(
        "%d pairs, %d flagged (registration %d, contrast %d, brain volume %d)",
        len(table),
        int(table["flagged"].sum()),
        int(table["flag_registration"].sum()),
        int(table["flag_contrast"].sum()),
        int(table["flag_brain_volume"].sum()),
    )
    with atomic_path(output) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.4g")
    return table
