"""The evaluation tables: per pair, per method, the Table 1 analogue and the tests.

Input is every pair's metrics (one row per pair, method, blob size and direction, from
``evaluate_pair``); output is a set of named tables, each written as TSV (numbers, for
analysis) and Markdown (mean ± sd, for reading).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from mschange.evaluation.html import table_markdown
from mschange.evaluation.statistics import paired_wilcoxon, summarise
from mschange.io import atomic_path

PathLike = str | os.PathLike[str]

# Column -> short label, for the three metric families (docs/metrics.md).
MSSEG_METRICS = {
    "msseg_dice": "Dice",
    "msseg_f1": "lesion F1",
    "msseg_sensitivity": "lesion sensitivity",
    "msseg_ppv": "lesion PPV",
    "msseg_fp_count": "FP lesions (no-change pairs)",
    "msseg_fp_volume_mm3": "FP volume mm³ (no-change pairs)",
}
TO_METRICS = {"to_ltpr": "LTPR", "to_lfpr": "LFPR", "to_ppv": "PPV"}
KRUEGER_METRICS = {
    "krueger_sensitivity": "sensitivity",
    "krueger_fp_count": "FP count",
    "krueger_fpr": "FPR",
    "krueger_dice": "Dice (overlapping lesions)",
}
FAMILIES = {"MSSEG-2": MSSEG_METRICS, "To et al.": TO_METRICS, "Krueger et al.": KRUEGER_METRICS}
ALL_METRICS = {**MSSEG_METRICS, **TO_METRICS, **KRUEGER_METRICS}
# Compared between methods with paired Wilcoxon tests.
TESTED_METRICS = [
    "msseg_dice",
    "msseg_f1",
    "to_ltpr",
    "to_ppv",
    "krueger_sensitivity",
    "krueger_fp_count",
]
COUNT_COLUMNS = ["truth_lesions", "predicted_lesions"]


def read_tables(paths: Sequence[PathLike]) -> pd.DataFrame:
    """Concatenate per-pair TSVs (metrics or sweeps); NaN stays NaN."""
    if not paths:
        raise ValueError("no evaluation files to collect")
    frames = [pd.read_csv(p, sep="\t", dtype={"subject": str}) for p in paths]
    return pd.concat(frames, ignore_index=True)


def mean_sd(row: Mapping[str, Any], metric: str) -> str:
    """'0.49 ± 0.10 (n=2)' from a summarise() row; '–' without values."""
    n = int(row.get(f"{metric}_n", 0) or 0)
    if n == 0:
        return "–"
    mean, sd = float(row[f"{metric}_mean"]), float(row[f"{metric}_sd"])
    text = f"{mean:.3f}" if np.isnan(sd) else f"{mean:.3f} ± {sd:.3f}"
    return f"{text} (n={n})"


def _ordered(frame: pd.DataFrame, methods: Sequence[str]) -> pd.DataFrame:
    order = {m: i for i, m in enumerate(methods)}
    return frame.sort_values(
        ["method", "min_blob_voxels"],
        key=lambda c: c.map(order) if c.name == "method" else c,
        kind="stable",
    ).reset_index(drop=True)


def build_tables(
    metrics: pd.DataFrame,
    sweep: pd.DataFrame,
    *,
    methods: Sequence[str],
    headline_blob: int,
    descriptions: Mapping[str, Mapping[str, str]],
) -> dict[str, pd.DataFrame]:
    """Every report table, numeric (TSV). ``descriptions``: method -> Table 1 columns."""
    metric_names = list(ALL_METRICS)
    everything = summarise(
        metrics, by=["method", "min_blob_voxels", "direction"], metrics=metric_names
    )
    overall = _ordered(everything.loc[everything["direction"] == "all"], methods)
    pair_counts = (
        metrics.loc[metrics["direction"] == "all"]
        .groupby(["method", "min_blob_voxels"])["subject"]
        .nunique()
        .rename("pairs")
        .reset_index()
    )
    summary = overall.merge(pair_counts, on=["method", "min_blob_voxels"]).drop(columns="direction")

    table1_rows = []
    for _, row in overall.iterrows():
        method = str(row["method"])
        table1_rows.append(
            {
                "method": method,
                **descriptions.get(method, {}),
                "blob": int(row["min_blob_voxels"]),
                **{label: row[f"{m}_mean"] for m, label in TO_METRICS.items()},
            }
        )
    table1 = pd.DataFrame(table1_rows)

    directed = everything.loc[
        (everything["direction"] != "all") & (everything["min_blob_voxels"] == headline_blob)
    ]
    directions = _ordered(directed, methods)[
        [
            "method",
            "min_blob_voxels",
            "direction",
            *[
                f"{m}_{s}"
                for m in (
                    "msseg_dice",
                    "msseg_f1",
                    "to_ltpr",
                    "to_ppv",
                    "krueger_sensitivity",
                    "krueger_fp_count",
                )
                for s in ("mean", "sd", "n")
            ],
        ]
    ]

    per_pair = metrics.loc[
        metrics["direction"] == "all",
        ["subject", "method", "min_blob_voxels", *COUNT_COLUMNS, *metric_names],
    ]
    per_pair = (
        _ordered(per_pair, methods)
        .sort_values(["subject", "min_blob_voxels"], kind="stable")
        .reset_index(drop=True)
    )

    headline = metrics.loc[
        (metrics["direction"] == "all") & (metrics["min_blob_voxels"] == headline_blob)
    ]
    wilcoxon = paired_wilcoxon(headline, method="method", pair="subject", metrics=TESTED_METRICS)

    curves = sweep.groupby(["method", "min_blob_voxels", "direction", "threshold"], as_index=False)[
        ["to_ltpr", "to_ppv", "msseg_f1", "msseg_dice"]
    ].mean()
    curves = _ordered(curves, methods).rename(columns={"to_ltpr": "ltpr", "to_ppv": "ppv"})
    return {
        "summary": summary,
        "table1": table1,
        "directions": directions,
        "per_pair": per_pair,
        "wilcoxon": wilcoxon,
        "threshold_sweep": curves,
    }


def readable_summary(summary: pd.DataFrame, metrics: Mapping[str, str]) -> pd.DataFrame:
    """One row per method and blob size, each metric as 'mean ± sd (n)'."""
    rows = []
    for _, row in summary.iterrows():
        rows.append(
            {
                "method": row["method"],
                "blob": int(row["min_blob_voxels"]),
                **{label: mean_sd(row, m) for m, label in metrics.items()},
            }
        )
    return pd.DataFrame(rows)


def readable_directions(directions: pd.DataFrame) -> pd.DataFrame:
    labels = {
        "msseg_dice": "Dice",
        "msseg_f1": "lesion F1",
        "to_ltpr": "LTPR",
        "to_ppv": "PPV",
        "krueger_sensitivity": "Krueger sensitivity",
        "krueger_fp_count": "Krueger FP count",
    }
    rows = []
    for _, row in directions.iterrows():
        rows.append(
            {
                "method": row["method"],
                "changes": {
                    "brighter": "brighter at follow-up (new/enlarging)",
                    "darker": "darker at follow-up (shrinking)",
                }.get(str(row["direction"]), str(row["direction"])),
                **{label: mean_sd(row, m) for m, label in labels.items()},
            }
        )
    return pd.DataFrame(rows)


def readable_tables(tables: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The tables as people read them (Markdown, HTML): mean ± sd strings."""
    readable = dict(tables)
    readable["summary"] = readable_summary(
        tables["summary"],
        {
            **{m: f"MSSEG-2 {label}" for m, label in MSSEG_METRICS.items()},
            **{m: f"To et al. {label}" for m, label in TO_METRICS.items()},
            **{m: f"Krueger {label}" for m, label in KRUEGER_METRICS.items()},
        },
    )
    readable["directions"] = readable_directions(tables["directions"])
    return readable


def write_tables(tables: Mapping[str, pd.DataFrame], folder: PathLike) -> list[str]:
    """``<name>.tsv`` (numbers) and ``<name>.md`` (readable) for every table."""
    os.makedirs(folder, exist_ok=True)
    written = []
    readable = readable_tables(tables)
    for name, frame in tables.items():
        tsv = os.path.join(folder, f"{name}.tsv")
        with atomic_path(tsv) as tmp:
            frame.to_csv(tmp, sep="\t", index=False, float_format="%.6g", na_rep="NaN")
        markdown = os.path.join(folder, f"{name}.md")
        with atomic_path(markdown) as tmp:
            tmp.write_text(table_markdown(readable[name]) + "\n")
        written += [tsv, markdown]
    return written
