"""Rule evaluate_pair: one method's changes on one pair, scored against the label.

Every method leaves a change score on the 1 mm follow-up grid: the detector's
probability, or the subtraction baseline's z-map. Here it is thresholded
(|score| > threshold), split into 26-connected components, components under the
minimum blob size dropped (as To et al. post-process), and the result mapped onto the
label's grid (the follow-up scan's own grid), where all three metric families are
computed: for all changes, then for brighter (new or enlarging lesions) and darker
(shrinking) ones separately. The same is repeated over a sweep of thresholds for the
LTPR-versus-PPV curves.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pandas as pd

from mschange.changemap import NearestGrid, changes_to_grid, find_changes
from mschange.evaluation.figures import (
    plot_change_overlay,
    plot_metric_boxplots,
    plot_threshold_curves,
)
from mschange.evaluation.metrics import (
    METRIC_COLUMNS,
    MetricSettings,
    direction_masks,
    score_pair,
)
from mschange.evaluation.tables import build_tables, read_tables, write_tables
from mschange.io import (
    atomic_path,
    brain_intersection,
    load_checked_image,
    load_float_image,
    save_nifti,
    voxel_sizes,
)
from mschange.preprocessing.resample import resample_to_grid

log = logging.getLogger(__name__)
PathLike = str | os.PathLike[str]

DIRECTIONS = ("all", "brighter", "darker")
ID_COLUMNS = ["subject", "method", "min_blob_voxels", "threshold", "direction"]
BOXPLOT_METRICS = {
    "msseg_dice": "Dice (MSSEG-2)",
    "msseg_f1": "lesion F1 (MSSEG-2)",
    "to_ltpr": "LTPR (To et al.)",
    "to_ppv": "PPV (To et al.)",
    "krueger_sensitivity": "sensitivity (Krueger)",
    "krueger_fp_count": "FP count (Krueger)",
}


class PairScorer:
    """Thresholds one score map at any threshold and scores the result on the label grid."""

    def __init__(
        self,
        score: npt.NDArray[Any],
        affine: npt.NDArray[np.floating[Any]],
        truth: npt.NDArray[np.bool_],
        label_affine: npt.NDArray[np.floating[Any]],
        difference: npt.NDArray[Any],
        *,
        min_blob_voxels: int,
        settings: MetricSettings,
    ) -> None:
        self.score = np.abs(np.asarray(score, dtype=np.float32))
        self.affine = np.asarray(affine, dtype=np.float64)
        self.label_affine = np.asarray(label_affine, dtype=np.float64)
        self.voxel_volume = float(np.prod(voxel_sizes(self.label_affine)))
        self.min_blob_voxels = min_blob_voxels
        native_shape = (int(truth.shape[0]), int(truth.shape[1]), int(truth.shape[2]))
        self.grid = NearestGrid(self.score.shape, self.affine, native_shape, self.label_affine)
        self.settings = settings
        # Follow-up minus baseline on the label grid: the direction of every component.
        self.difference = np.asarray(difference, dtype=np.float32)
        self.truth_by_direction = dict(
            zip(DIRECTIONS, (truth, *direction_masks(truth, self.difference)), strict=True)
        )

    def prediction(self, threshold: float) -> npt.NDArray[np.bool_]:
        changes = find_changes(self.score, threshold, self.min_blob_voxels)
        return (
            changes_to_grid(
                changes, self.affine, self.grid.target_shape, self.label_affine, grid=self.grid
            )
            > 0
        )

    def rows(self, prediction: npt.NDArray[np.bool_]) -> list[dict[str, float]]:
        """One row of metrics per direction for a prediction on the label grid."""
        predicted = dict(
            zip(
                DIRECTIONS, (prediction, *direction_masks(prediction, self.difference)), strict=True
            )
        )
        return [
            {
                "direction": direction,  # type: ignore[dict-item]
                **score_pair(
                    self.truth_by_direction[direction],
                    predicted[direction],
                    self.voxel_volume,
                    self.settings,
                ),
            }
            for direction in DIRECTIONS
        ]


def load_truth(
    label: PathLike | None, native_followup: PathLike, subject: str
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
    """The label on the follow-up grid; an all-background one for a no-change pair."""
    if label:
        image = load_checked_image(label, subject)
        return np.asarray(image.dataobj) > 0, np.asarray(image.affine, dtype=np.float64)
    native = load_checked_image(native_followup, subject, check_values=False)
    shape = tuple(int(n) for n in native.shape[:3])
    return np.zeros(shape, dtype=bool), np.asarray(native.affine, dtype=np.float64)


def evaluate_pair_step(
    *,
    score: PathLike,
    baseline: PathLike,
    followup: PathLike,
    masks: Sequence[PathLike],
    native_followup: PathLike,
    label: PathLike | None,
    outputs: Mapping[str, PathLike],
    subject: str,
    method: str,
    threshold: float,
    sweep_thresholds: Sequence[float],
    min_blob_voxels: int,
    settings: MetricSettings,
    max_slices: int = 12,
) -> pd.DataFrame:
    """Score one method on one pair; writes ``outputs`` (keys of EVALUATION_SUFFIXES)."""
    score_data, score_image = load_float_image(score)
    baseline_data, _ = load_float_image(baseline)
    followup_data, _ = load_float_image(followup)
    score_data = np.where(brain_intersection(*masks), score_data, 0.0)
    truth, label_affine = load_truth(label, native_followup, subject)
    difference = resample_to_grid(
        followup_data - baseline_data,
        score_image.affine,
        truth.shape,
        label_affine,
        order=1,
        antialias=False,
    )
    scorer = PairScorer(
        score_data,
        score_image.affine,
        truth,
        label_affine,
        difference,
        min_blob_voxels=min_blob_voxels,
        settings=settings,
    )
    common = {"subject": subject, "method": method, "min_blob_voxels": min_blob_voxels}

    # The sweep includes the operating threshold: its rows are the pair's metrics.
    rows = []
    for t in sorted(set(sweep_thresholds) | {threshold}):
        mask = scorer.prediction(t)
        if t == threshold:
            prediction = mask
        rows += [{**common, "threshold": t, **row} for row in scorer.rows(mask)]
    sweep = pd.DataFrame(rows)[ID_COLUMNS + METRIC_COLUMNS]
    metrics = sweep.loc[sweep["threshold"] == threshold].reset_index(drop=True)

    save_nifti(prediction.astype(np.uint8), label_affine, outputs["mask"], dtype=np.uint8)
    for key, table in (("metrics", metrics), ("sweep", sweep)):
        with atomic_path(outputs[key]) as tmp:
            table.to_csv(tmp, sep="\t", index=False, float_format="%.6g", na_rep="NaN")
    if "figure" in outputs:
        native = nib.as_closest_canonical(
            nib.Nifti1Image(
                load_checked_image(native_followup, subject, check_values=False).get_fdata(
                    dtype=np.float32
                ),
                label_affine,
            )
        )

        def canonical(mask: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
            image = nib.as_closest_canonical(nib.Nifti1Image(mask.astype(np.uint8), label_affine))
            return np.asarray(image.dataobj) > 0

        headline = metrics.loc[metrics["direction"] == "all"].iloc[0]
        zooms = tuple(float(z) for z in native.header.get_zooms()[:3])
        plot_change_overlay(
            np.asarray(native.dataobj, dtype=np.float32),
            canonical(truth),
            canonical(prediction),
            (zooms[0], zooms[1], zooms[2]),
            outputs["figure"],
            title=(
                f"{subject}, {method} (blob >= {min_blob_voxels}): truth blue, prediction "
                f"red; Dice {_fmt(headline['msseg_dice'])}, lesion F1 "
                f"{_fmt(headline['msseg_f1'])}, LTPR {_fmt(headline['to_ltpr'])}"
            ),
            max_slices=max_slices,
        )
    row = metrics.iloc[0]
    log.info(
        "%s, %s (blob >= %d, threshold %g): %d true and %d predicted lesions, Dice %s, "
        "F1 %s, LTPR %s, PPV %s",
        subject,
        method,
        min_blob_voxels,
        threshold,
        int(row["truth_lesions"]),
        int(row["predicted_lesions"]),
        _fmt(row["msseg_dice"]),
        _fmt(row["msseg_f1"]),
        _fmt(row["to_ltpr"]),
        _fmt(row["to_ppv"]),
    )
    return metrics


def _fmt(value: Any) -> str:
    return "n/a" if value is None or not np.isfinite(float(value)) else f"{float(value):.2f}"


def tables_step(
    metric_files: Sequence[PathLike],
    sweep_files: Sequence[PathLike],
    *,
    table_dir: PathLike,
    boxplots: PathLike,
    threshold_curves: PathLike,
    methods: Sequence[str],
    headline_blob: int,
    descriptions: Mapping[str, Mapping[str, str]],
) -> dict[str, pd.DataFrame]:
    """Rule evaluation_tables: every table (TSV and Markdown) and the summary figures."""
    metrics = read_tables(metric_files)
    sweep = read_tables(sweep_files)
    tables = build_tables(
        metrics, sweep, methods=methods, headline_blob=headline_blob, descriptions=descriptions
    )
    write_tables(tables, table_dir)
    headline = metrics.loc[
        (metrics["direction"] == "all") & (metrics["min_blob_voxels"] == headline_blob)
    ]
    plot_metric_boxplots(
        headline, [(m, BOXPLOT_METRICS[m]) for m in BOXPLOT_METRICS], boxplots, method="method"
    )
    curves = tables["threshold_sweep"]
    plot_threshold_curves(
        curves.loc[(curves["direction"] == "all") & (curves["min_blob_voxels"] == headline_blob)],
        threshold_curves,
        method="method",
        threshold="threshold",
        x="ppv",
        y="ltpr",
    )
    log.info(
        "tables of %d pairs x %d methods written to %s",
        metrics["subject"].nunique(),
        metrics["method"].nunique(),
        table_dir,
    )
    return tables
