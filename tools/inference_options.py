"""Measure inference options of a trained detector (and the subtraction baseline's
histogram matching) on a run's real development pairs and its validation set.

Every variant is a set of ``detector.inference`` overrides (harmonise, mirror_axes,
edge_margin_mm, ...). For each, the detector's probability maps are computed once per
pair and scored with the project's evaluation code at every threshold of ``--kappa``
and every blob size: the development pairs (cohort rows with a label) as the rule
``evaluate_pair`` scores them (on the label's grid), the validation set as the rule
``validate_method`` does. Writes one TSV of every row and prints Markdown summaries:

    python tools/inference_options.py --run /work/realrun \
        --model /work/realrun/results/detector/model-real-lesions/model.pt \
        --variant plain='{}' --variant matched='{"harmonise": true}' --out options.tsv
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from mschange.config import validate_config
from mschange.detection.inference import predict_probability
from mschange.detection.modelfile import load_detector
from mschange.detection.steps import inference_settings
from mschange.evaluation.baseline import subtraction_zmap
from mschange.evaluation.metrics import MetricSettings
from mschange.evaluation.steps import PairScorer, load_truth
from mschange.evaluation.validation import (
    lesion_f1,
    validation_pairs,
    validation_step,
    validation_summary,
)
from mschange.io import brain_intersection, load_float_image, read_file_table, voxel_sizes
from mschange.preprocessing.resample import resample_to_grid
from mschange.torchrun import cpu_threads, flush_denormals, resolve_device

REPO = Path(__file__).resolve().parents[1]
PREPROC = "results/preproc/sub-{s}/sub-{s}_tp-{tp}{space}_desc-{kind}.nii.gz"


def development_pair_files(subject: str) -> dict[str, str]:
    """The preprocessed files of one workflow pair (the workflow's file layout)."""
    return {
        "baseline": PREPROC.format(
            s=subject, tp="baseline", space="_space-followup", kind="preproc_FLAIR"
        ),
        "followup": PREPROC.format(
            s=subject, tp="followup", space="_space-followup", kind="preproc_FLAIR"
        ),
        "baseline_mask": PREPROC.format(
            s=subject, tp="baseline", space="_space-followup", kind="brain_mask"
        ),
        "followup_mask": PREPROC.format(s=subject, tp="followup", space="", kind="brain_mask"),
    }


def score_development_pair(
    score: np.ndarray,
    subject: str,
    row: pd.Series,
    method: str,
    thresholds: list[float],
    blobs: list[int],
    settings: MetricSettings,
) -> list[dict[str, Any]]:
    files = development_pair_files(subject)
    baseline, _ = load_float_image(files["baseline"])
    followup, image = load_float_image(files["followup"])
    brain = brain_intersection(files["baseline_mask"], files["followup_mask"])
    truth, label_affine = load_truth(str(row["label"]), str(row["followup"]), subject)
    difference = resample_to_grid(
        followup - baseline, image.affine, truth.shape, label_affine, order=1, antialias=False
    )
    rows = []
    for blob in blobs:
        scorer = PairScorer(
            np.where(brain, score, 0.0),
            image.affine,
            truth,
            label_affine,
            difference,
            min_blob_voxels=blob,
            settings=settings,
        )
        for threshold in thresholds:
            rows += [
                {
                    "pair": subject,
                    "subject": subject,
                    "kind": "development",
                    "method": method,
                    "min_blob_voxels": blob,
                    "threshold": threshold,
                    **metrics,
                }
                for metrics in scorer.rows(scorer.prediction(threshold))
            ]
    return rows


def detector_maps(
    models: list[Path], inference: dict[str, Any], subjects: list[str]
) -> dict[str, np.ndarray]:
    device = resolve_device("cpu")
    network = [load_detector(model, device)[0] for model in models]
    settings = inference_settings(inference)
    flush_denormals()
    maps = {}
    for subject in subjects:
        files = development_pair_files(subject)
        baseline, _ = load_float_image(files["baseline"])
        followup, image = load_float_image(files["followup"])
        brain = brain_intersection(files["baseline_mask"], files["followup_mask"])
        with cpu_threads(2, device):
            maps[subject] = predict_probability(
                network, baseline, followup, brain, image.affine, settings, device=device
            )
    return maps


def summary_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per method, threshold, blob size and direction: development-pair means (To et al.
    lesion F1 per pair, Dice, detections) and the validation set's painted-pair mean
    lesion F1 and false positives per no-change pair."""
    keys = ["method", "threshold", "min_blob_voxels", "direction"]
    development = rows.loc[rows["kind"] == "development"].copy()
    development["to_f1"] = [
        lesion_f1(a, b) for a, b in zip(development["to_ltpr"], development["to_ppv"], strict=True)
    ]
    grouped = development.groupby(keys)
    out = pd.DataFrame(
        {
            "dev_f1": grouped["to_f1"].mean(),
            "dev_ltpr": grouped["to_ltpr"].mean(),
            "dev_dice": grouped["msseg_dice"].mean(),
            "dev_detections": grouped["predicted_lesions"].mean(),
        }
    )
    validation = rows.loc[rows["kind"] != "development"]
    if len(validation):
        parts = []
        for threshold, frame in validation.groupby("threshold"):
            summary = validation_summary(frame, list(dict.fromkeys(frame["method"])))
            summary["threshold"] = threshold
            parts.append(summary)
        merged = pd.concat(parts).set_index(keys)
        out = out.join(
            merged[["to_f1", "msseg_dice", "fp_per_nochange_pair"]].rename(
                columns={
                    "to_f1": "val_f1",
                    "msseg_dice": "val_dice",
                    "fp_per_nochange_pair": "val_fp_nochange",
                }
            )
        )
    return out.reset_index()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument(
        "--model",
        type=Path,
        action="append",
        default=[],
        help="model file(s); several: every variant is run with each",
    )
    parser.add_argument(
        "--ensemble", action="store_true", help="the models as one ensemble (mean probability)"
    )
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=JSON")
    parser.add_argument("--kappa", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.3, 0.5])
    parser.add_argument("--k", type=float, nargs="+", default=[3.0, 4.0, 5.0])
    parser.add_argument("--blob", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--exclude-validation", nargs="*", default=[])
    parser.add_argument("--no-validation", action="store_true")
    parser.add_argument("--no-subtraction", action="store_true")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    config = validate_config(yaml.safe_load((REPO / "config.yaml").read_text()))
    metric_settings = MetricSettings.from_dict(config["evaluation"]["metrics"])
    out = args.out.absolute()
    models = [m.absolute() for m in args.model]
    os.chdir(args.run)  # the workflow's relative paths
    cohort = pd.read_csv("cohort.tsv", sep="\t", dtype=str, keep_default_na=False)
    development = cohort.loc[cohort["label"] != ""].set_index("subject")
    pairs = (
        []
        if args.no_validation
        else [
            p
            for p in validation_pairs(read_file_table("results/validation/pairs.tsv"))
            if p.subject not in args.exclude_validation
        ]
    )

    rows: list[dict[str, Any]] = []
    methods: list[tuple[str, dict[str, Any], list[Path] | None]] = []
    groups = [models] if args.ensemble else [[model] for model in models]
    for group in groups:
        for item in args.variant:
            name, text = item.split("=", 1)
            inference = {**config["detector"]["inference"], **json.loads(text)}
            label = name if len(groups) == 1 else f"{group[0].parent.name}:{name}"
            if args.ensemble:
                label = f"ensemble of {len(group)}:{name}"
            methods.append((label, inference, group))
    if not args.no_subtraction:
        for harmonise in (False, True):
            base = {**config["evaluation"]["baseline"], "harmonise": harmonise}
            methods.append((f"subtraction{' matched' if harmonise else ''}", base, None))

    for name, settings, group in methods:
        print(f"--- {name}", flush=True)
        if group is None:
            thresholds = args.k
            maps = {}
            for subject in development.index:
                files = development_pair_files(subject)
                baseline, _ = load_float_image(files["baseline"])
                followup, image = load_float_image(files["followup"])
                brain = brain_intersection(files["baseline_mask"], files["followup_mask"])
                maps[subject] = subtraction_zmap(
                    baseline,
                    followup,
                    brain,
                    voxel_sizes(image.affine),
                    float(settings["sigma_mm"]),
                    float(settings["erode_mm"]),
                    bool(settings["harmonise"]),
                )
        else:
            thresholds = args.kappa
            maps = detector_maps(group, settings, list(development.index))
        for subject, score in maps.items():
            rows += score_development_pair(
                score,
                subject,
                development.loc[subject],
                name,
                thresholds,
                args.blob,
                metric_settings,
            )
        if pairs:
            frame = validation_step(
                pairs,
                out.with_suffix(".validation.tsv"),
                method=name,
                threshold=thresholds[0],
                blob_sizes=args.blob,
                settings=metric_settings,
                model=group,
                inference=settings if group else None,
                baseline_settings=None if group else settings,
                threads=2,
                sweep=thresholds,
            )
            rows += frame.to_dict("records")
        pd.DataFrame(rows).to_csv(out, sep="\t", index=False, float_format="%.6g", na_rep="NaN")
    summary = summary_table(pd.DataFrame(rows))
    summary.to_csv(
        out.with_suffix(".summary.tsv"), sep="\t", index=False, float_format="%.4g", na_rep="NaN"
    )
    with pd.option_context("display.width", 200, "display.max_rows", 500):
        print(summary.loc[summary["min_blob_voxels"] == 20].round(3).to_string(index=False))


if __name__ == "__main__":
    main()
