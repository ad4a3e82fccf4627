"""Aggregating per-pair metrics over pairs, and comparing methods pair by pair.

Each family averages over its own set of pairs (MSSEG-2 Dice and F1 over pairs with
new lesions, its false-positive count and volume over pairs without; Krueger et al.'s
sensitivity, FPR and Dice over pairs with lesions). The per-pair table marks the
pairs a value is undefined for with NaN, so every statistic here drops NaN metric by
metric and says how many pairs it used.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Hashable, Iterable
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import stats

NAN = float("nan")
SUMMARY_STATISTICS = ("mean", "sd", "median", "n")
WILCOXON_COLUMNS = [
    "method_a",
    "method_b",
    "metric",
    "n_pairs",
    "median_difference",
    "statistic",
    "p_value",
]


def _require(per_pair: pd.DataFrame, columns: Iterable[str]) -> None:
    missing = [column for column in columns if column not in per_pair.columns]
    if missing:
        raise ValueError(f"per-pair table has no column(s) {', '.join(missing)}")


def _values(column: pd.Series) -> npt.NDArray[np.float64]:
    """The non-NaN values of a metric column as floats (None counts as NaN)."""
    values = pd.to_numeric(column).to_numpy(dtype=np.float64, na_value=np.nan)
    return values[~np.isnan(values)]


def summarise(per_pair: pd.DataFrame, by: list[str], metrics: list[str]) -> pd.DataFrame:
    """One row per group of ``by`` (all rows when empty): mean, sd, median, n per metric.

    Columns ``<by...>, m_mean, m_sd, m_median, m_n`` for every metric ``m``. NaN values
    are left out per metric, so ``m_n`` is the number of pairs the metric is defined
    for; ``m_sd`` is the sample standard deviation (ddof=1), NaN under two values.
    Groups are sorted by their keys; a NaN key forms its own group.
    """
    _require(per_pair, [*by, *metrics])
    columns = [
        *by,
        *(f"{metric}_{statistic}" for metric in metrics for statistic in SUMMARY_STATISTICS),
    ]
    if per_pair.empty:
        return pd.DataFrame(columns=columns)
    groups: Iterable[tuple[Any, pd.DataFrame]] = (
        per_pair.groupby(by, sort=True, dropna=False) if by else [((), per_pair)]
    )
    rows = []
    for key, group in groups:
        row: dict[str, Any] = dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True))
        for metric in metrics:
            values = _values(group[metric])
            row[f"{metric}_mean"] = float(values.mean()) if values.size else NAN
            row[f"{metric}_sd"] = float(values.std(ddof=1)) if values.size >= 2 else NAN
            row[f"{metric}_median"] = float(np.median(values)) if values.size else NAN
            row[f"{metric}_n"] = int(values.size)
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def _sorted_names(values: Iterable[Hashable]) -> list[Hashable]:
    names = list(values)
    try:
        return sorted(names)  # type: ignore[type-var]
    except TypeError:  # mixed types: order by their text
        return sorted(names, key=str)


def _wilcoxon(
    first: npt.NDArray[np.float64], second: npt.NDArray[np.float64]
) -> tuple[float, float]:
    """Two-sided signed-rank statistic and p-value; NaN where the test is undefined."""
    if first.size < 1 or not np.any(first != second):
        return NAN, NAN  # scipy raises or warns without a non-zero difference
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small-sample and tie warnings
        try:
            result = stats.wilcoxon(first, second, alternative="two-sided")
        except ValueError:
            return NAN, NAN
    return float(result.statistic), float(result.pvalue)


def paired_wilcoxon(
    per_pair: pd.DataFrame, *, method: str, pair: str, metrics: list[str]
) -> pd.DataFrame:
    """Wilcoxon signed-rank test of every two methods on every metric, pair by pair.

    For each unordered pair of values (a, b) of column ``method`` (sorted, a < b) and
    each metric in the given order, the pairs (rows keyed by column ``pair``) where
    both methods have a non-NaN value are compared: ``n_pairs``, the median of a - b
    and scipy's two-sided test. With no such pair, or only zero differences, the
    statistic and p-value are NaN. A method with two rows for one pair is an error.
    """
    _require(per_pair, [method, pair, *metrics])
    table = per_pair.dropna(subset=[method, pair])
    repeated = table.duplicated(subset=[method, pair], keep=False)
    if repeated.any():
        examples = table.loc[repeated, [method, pair]].drop_duplicates().head(3)
        raise ValueError(
            f"more than one row per ({method}, {pair}), e.g. {examples.to_dict('records')}"
        )
    by_method = {name: rows.set_index(pair) for name, rows in table.groupby(method)}
    rows = []
    for first, second in itertools.combinations(_sorted_names(by_method), 2):
        for metric in metrics:
            values = (
                pd.concat(
                    [
                        pd.to_numeric(by_method[first][metric]).rename("a"),
                        pd.to_numeric(by_method[second][metric]).rename("b"),
                    ],
                    axis=1,
                    join="inner",
                )
                .astype(np.float64)
                .dropna()
                .sort_index()
            )
            a = values["a"].to_numpy(dtype=np.float64)
            b = values["b"].to_numpy(dtype=np.float64)
            statistic, p_value = _wilcoxon(a, b)
            rows.append(
                {
                    "method_a": first,
                    "method_b": second,
                    "metric": metric,
                    "n_pairs": int(a.size),
                    "median_difference": float(np.median(a - b)) if a.size else NAN,
                    "statistic": statistic,
                    "p_value": p_value,
                }
            )
    return pd.DataFrame(rows, columns=WILCOXON_COLUMNS)
