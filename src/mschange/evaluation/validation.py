"""The validation set: synthetic lesion changes painted into real scans no training uses.

Every ``split: validation`` scan of the cohort gives (a) its no-change pair (the scan and
its simulated rescan, preprocessed like any pair) and (b) ``validation.samples_per_subject``
pairs with lesion-based changes painted in with fixed seeds
(:mod:`mschange.synthesis.lesions`). Each method (a trained detector, or the
subtraction baseline) is scored on all of them on the 1 mm follow-up grid with the same
code as the test pairs (:class:`mschange.evaluation.steps.PairScorer`: all three metric
families, for all, brighter and darker changes), at the method's operating threshold
and every blob size. The no-change pairs count false positives on real acquisition
differences; the painted ones measure what is found.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from mschange.evaluation.baseline import subtraction_zmap
from mschange.evaluation.metrics import METRIC_COLUMNS, MetricSettings
from mschange.evaluation.steps import PairScorer
from mschange.io import atomic_path, brain_intersection, load_float_image, voxel_sizes

log = logging.getLogger(__name__)
PathLike = str | os.PathLike[str]

PAINTED, NO_CHANGE = "painted", "no-change"
ID_COLUMNS = ["pair", "subject", "kind", "method", "min_blob_voxels", "threshold", "direction"]
# The headline columns of the validation summary, by direction.
SUMMARY_METRICS = {
    "to_ltpr": "LTPR",
    "to_ppv": "PPV",
    "to_f1": "lesion F1 (To)",
    "msseg_sensitivity": "sensitivity (MSSEG-2)",
    "msseg_ppv": "PPV (MSSEG-2)",
    "msseg_f1": "lesion F1 (MSSEG-2)",
    "krueger_sensitivity": "sensitivity (Krüger)",
    "krueger_fp_count": "FP (Krüger)",
    "msseg_dice": "Dice",
    "predicted_lesions": "detections",
}


@dataclass(frozen=True)
class ValidationPair:
    """One validation pair on the 1 mm follow-up grid; ``label`` None: nothing changed."""

    pair: str
    subject: str
    baseline: str
    followup: str
    masks: tuple[str, ...]
    label: str | None

    @property
    def kind(self) -> str:
        return NO_CHANGE if self.label is None else PAINTED


def validation_pairs(columns: Mapping[str, Sequence[str]]) -> list[ValidationPair]:
    """Pairs from a file table (:func:`mschange.io.read_file_table`) with columns pair,
    subject, baseline, followup, baseline_mask, followup_mask and label (empty for the
    no-change pairs)."""
    return [
        ValidationPair(
            pair=pair,
            subject=subject,
            baseline=baseline,
            followup=followup,
            masks=(baseline_mask, followup_mask),
            label=label or None,
        )
        for pair, subject, baseline, followup, baseline_mask, followup_mask, label in zip(
            columns["pair"],
            columns["subject"],
            columns["baseline"],
            columns["followup"],
            columns["baseline_mask"],
            columns["followup_mask"],
            columns["label"],
            strict=True,
        )
    ]


def score_map_rows(
    score: npt.NDArray[Any],
    baseline: npt.NDArray[Any],
    followup: npt.NDArray[Any],
    truth: npt.NDArray[np.bool_],
    affine: npt.NDArray[np.floating[Any]],
    *,
    threshold: float,
    blob_sizes: Sequence[int],
    settings: MetricSettings,
    sweep: Sequence[float] = (),
) -> list[dict[str, Any]]:
    """Metric rows (per blob size, threshold and direction) of one score map on its own
    grid: at ``threshold``, then at every other threshold of ``sweep``."""
    difference = np.asarray(followup, np.float32) - np.asarray(baseline, np.float32)
    rows = []
    for blob in blob_sizes:
        scorer = PairScorer(
            score, affine, truth, affine, difference, min_blob_voxels=int(blob), settings=settings
        )
        for value in [threshold, *sorted(set(sweep) - {threshold})]:
            rows += [
                {"min_blob_voxels": int(blob), "threshold": value, **row}
                for row in scorer.rows(scorer.prediction(value))
            ]
    return rows


def validation_step(
    pairs: Sequence[ValidationPair],
    output: PathLike,
    *,
    method: str,
    threshold: float,
    blob_sizes: Sequence[int],
    settings: MetricSettings,
    model: PathLike | Sequence[PathLike] | None = None,
    inference: Mapping[str, Any] | None = None,
    baseline_settings: Mapping[str, Any] | None = None,
    device: str = "cpu",
    threads: int | None = None,
    sweep: Sequence[float] = (),
) -> pd.DataFrame:
    """Score one method on every validation pair; writes one TSV row per pair, blob size
    and direction (and threshold of ``sweep``, beside the operating ``threshold``). A
    detector needs ``model`` (several: an ensemble) and ``inference`` (its config
    section); the subtraction baseline ``baseline_settings`` (sigma_mm, erode_mm,
    harmonise)."""
    network = None
    if model is not None:
        # Only a detector needs torch: the baseline's job stays light.
        from mschange.detection.inference import predict_probability
        from mschange.detection.modelfile import load_detector
        from mschange.detection.steps import inference_settings
        from mschange.torchrun import cpu_threads, flush_denormals, resolve_device

        torch_device = resolve_device(device)
        files = [model] if isinstance(model, str | os.PathLike) else list(model)
        network = [load_detector(path, torch_device)[0] for path in files]
        infer = inference_settings(inference or {})
        if torch_device.type == "cpu":
            flush_denormals()  # activations in the empty background decay to denormals
    rows: list[dict[str, Any]] = []
    for pair in pairs:
        baseline, _ = load_float_image(pair.baseline)
        followup, image = load_float_image(pair.followup)
        brain = brain_intersection(*pair.masks)
        truth = (
            load_float_image(pair.label)[0] > 0
            if pair.label is not None
            else np.zeros(brain.shape, dtype=bool)
        )
        if network is not None:
            with cpu_threads(threads, torch_device):
                score = predict_probability(
                    network, baseline, followup, brain, image.affine, infer, device=torch_device
                )
        else:
            if baseline_settings is None:
                raise ValueError(
                    f"{method}: the subtraction baseline needs its settings "
                    "(evaluation.baseline), or give a model"
                )
            score = subtraction_zmap(
                baseline,
                followup,
                brain,
                voxel_sizes(image.affine),
                float(baseline_settings["sigma_mm"]),
                float(baseline_settings["erode_mm"]),
                bool(baseline_settings.get("harmonise", False)),
            )
        score = np.where(brain, score, 0.0)
        pair_rows = score_map_rows(
            score,
            baseline,
            followup,
            truth,
            image.affine,
            threshold=threshold,
            blob_sizes=blob_sizes,
            settings=settings,
            sweep=sweep,
        )
        rows += [
            {"pair": pair.pair, "subject": pair.subject, "kind": pair.kind, "method": method, **row}
            for row in pair_rows
        ]
        headline = pair_rows[0]
        log.info(
            "%s (%s), %s: %d true and %d predicted lesions, LTPR %.2f, PPV %.2f",
            pair.pair,
            pair.kind,
            method,
            int(headline["truth_lesions"]),
            int(headline["predicted_lesions"]),
            headline["to_ltpr"],
            headline["to_ppv"],
        )
    table = pd.DataFrame(rows)[ID_COLUMNS + METRIC_COLUMNS]
    with atomic_path(output) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.6g", na_rep="NaN")
    return table


def lesion_f1(ltpr: Any, ppv: Any) -> float:
    """Harmonic mean of To et al.'s LTPR and PPV. 0 when no true lesion was found (also
    when nothing was predicted, where PPV is undefined); NaN without true lesions."""
    ltpr, ppv = float(ltpr), float(ppv)
    if not np.isfinite(ltpr):
        return float("nan")
    if ltpr == 0:
        return 0.0
    return 2 * ltpr * ppv / (ltpr + ppv)


SUMMARY_KEYS = ["method", "min_blob_voxels", "direction"]


def mean_scores(
    scores: pd.DataFrame, methods: Sequence[str], *, pair: str = "pair"
) -> pd.DataFrame:
    """Means of :data:`SUMMARY_METRICS` per method, blob size and direction, over the
    pairs (column ``pair``) that have a value; To et al.'s lesion F1 per pair first.
    Rows in the order of ``methods``, then blob size, then all/brighter/darker."""
    scores = scores.copy()
    scores["to_f1"] = [
        lesion_f1(a, b) for a, b in zip(scores["to_ltpr"], scores["to_ppv"], strict=True)
    ]
    grouped = scores.groupby(SUMMARY_KEYS, sort=False)
    summary = grouped[list(SUMMARY_METRICS)].mean()
    summary["pairs"] = grouped[pair].nunique()
    summary = summary.reset_index()
    order = {name: k for k, name in enumerate(methods)}
    directions = {"all": 0, "brighter": 1, "darker": 2}
    summary = summary.sort_values(
        SUMMARY_KEYS,
        key=lambda column: (
            column.map(order)
            if column.name == "method"
            else (column.map(directions) if column.name == "direction" else column)
        ),
    )
    return summary.reset_index(drop=True)


def validation_summary(scores: pd.DataFrame, methods: Sequence[str]) -> pd.DataFrame:
    """Per method, blob size and direction: means over the painted pairs (LTPR, PPV,
    their F1, MSSEG-2 F1, Dice, detections) and false positives per no-change pair."""
    summary = mean_scores(scores.loc[scores["kind"] == PAINTED], methods).rename(
        columns={"pairs": "painted_pairs"}
    )
    nochange = scores.loc[scores["kind"] == NO_CHANGE].groupby(SUMMARY_KEYS, sort=False)
    false_positives = pd.DataFrame(
        {
            "fp_per_nochange_pair": nochange["predicted_lesions"].mean(),
            "nochange_pairs": nochange["pair"].nunique(),
        }
    ).reset_index()
    return summary.merge(false_positives, on=SUMMARY_KEYS, how="left")


def markdown_table(
    frame: pd.DataFrame,
    columns: Sequence[str],
    names: Sequence[str] | None = None,
    *,
    decimals: int = 3,
) -> str:
    """Columns of ``frame`` as a Markdown table: floats to ``decimals``, NaN as an en dash."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "–" if np.isnan(value) else f"{value:.{decimals}f}"
        return str(value)

    header = list(names or columns)
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += [
        "| " + " | ".join(cell(v) for v in row) + " |"
        for row in frame[list(columns)].itertuples(index=False)
    ]
    return "\n".join(lines) + "\n"


def validation_markdown(summary: pd.DataFrame) -> str:
    """The summary as a Markdown table (3 decimals)."""
    return markdown_table(
        summary,
        ["method", "min_blob_voxels", "direction", *SUMMARY_METRICS, "fp_per_nochange_pair"],
        ["method", "blob", "direction", *SUMMARY_METRICS.values(), "FP per no-change pair"],
    )


def validation_tables_step(
    score_files: Sequence[PathLike],
    *,
    methods: Sequence[str],
    summary_tsv: PathLike,
    summary_md: PathLike,
) -> pd.DataFrame:
    """Rule validation_tables: the validation summary of every method."""
    scores = pd.concat([pd.read_csv(path, sep="\t") for path in score_files], ignore_index=True)
    summary = validation_summary(scores, methods)
    with atomic_path(summary_tsv) as tmp:
        summary.to_csv(tmp, sep="\t", index=False, float_format="%.6g", na_rep="NaN")
    with atomic_path(summary_md) as tmp:
        tmp.write_text(validation_markdown(summary))
    return summary


class TrainingValidation:
    """The validation set scored during training (nnU-Net-style model selection).

    Called with the network after an iteration, it predicts every validation pair with
    ``inference`` and scores it with the evaluation code at every threshold of
    ``kappas`` (and ``inference.min_blob_voxels``), all changes together. Counts are
    pooled over the pairs, so the no-change pairs' detections count as false positives:
    LTPR = found true lesions / true lesions, PPV = true detections / detections (To et
    al.'s criterion), F1 their harmonic mean. Returns the best threshold's scores
    (``val_*``); the first threshold wins a tie. The pairs are read once and kept.
    """

    def __init__(
        self,
        pairs: Sequence[ValidationPair],
        inference: Any,
        settings: MetricSettings,
        kappas: Sequence[float],
    ) -> None:
        if not pairs:
            raise ValueError("validation during training needs at least one validation pair")
        self.pairs = list(pairs)
        self.inference = inference
        self.settings = settings
        self.kappas = sorted(set(float(k) for k in kappas) | {float(inference.kappa)})
        self._loaded: list[tuple[Any, ...]] | None = None

    def _load(self) -> list[tuple[Any, ...]]:
        if self._loaded is None:
            self._loaded = []
            for pair in self.pairs:
                baseline, _ = load_float_image(pair.baseline)
                followup, image = load_float_image(pair.followup)
                brain = brain_intersection(*pair.masks)
                truth = (
                    load_float_image(pair.label)[0] > 0
                    if pair.label is not None
                    else np.zeros(brain.shape, dtype=bool)
                )
                self._loaded.append((pair, baseline, followup, brain, truth, image.affine))
        return self._loaded

    def __call__(self, network: Any, device: Any) -> dict[str, float]:
        from mschange.detection.inference import predict_probability

        rows = []
        for pair, baseline, followup, brain, truth, affine in self._load():
            probability = predict_probability(
                network, baseline, followup, brain, affine, self.inference, device=device
            )
            rows += [
                {"kind": pair.kind, **row}
                for row in score_map_rows(
                    probability,
                    baseline,
                    followup,
                    truth,
                    affine,
                    threshold=self.kappas[0],
                    blob_sizes=[self.inference.min_blob_voxels],
                    settings=self.settings,
                    sweep=self.kappas,
                )
                if row["direction"] == "all"
            ]
        return best_pooled_scores(pd.DataFrame(rows))


def best_pooled_scores(rows: pd.DataFrame) -> dict[str, float]:
    """Pooled To et al. LTPR, PPV and F1 per threshold of metric ``rows`` (one
    direction, one blob size; column ``kind`` tells no-change pairs); the best F1's."""
    best: dict[str, float] = {}
    for threshold, frame in rows.groupby("threshold", sort=True):
        truth = float(np.nansum(frame["to_truth_blobs"]))
        predicted = float(np.nansum(frame["to_predicted_blobs"]))
        ltpr = float(np.nansum(frame["to_tp_truth"])) / truth if truth else float("nan")
        ppv = float(np.nansum(frame["to_tp_predicted"])) / predicted if predicted else 0.0
        nochange = frame.loc[frame["kind"] == NO_CHANGE, "predicted_lesions"]
        scores = {
            "val_f1": lesion_f1(ltpr, ppv),
            "val_ltpr": ltpr,
            "val_ppv": ppv,
            "val_kappa": float(threshold),
            "val_fp_nochange": float(nochange.mean()) if len(nochange) else float("nan"),
        }
        if not best or scores["val_f1"] > best["val_f1"]:
            best = scores
    return best
