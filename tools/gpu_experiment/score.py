"""Score the GPU run's probability maps and the subtraction baseline on the test pairs.

Runs here. Each returned probability map (``prob_<subject>.npz``, RAS-ordered crop of
the 1 mm follow-up grid) is put back onto the full 1 mm grid and scored as the
workflow's ``evaluate_pair`` rule does (:class:`mschange.evaluation.steps.PairScorer`,
on the raw follow-up's grid against the cohort's label): thresholded, 26-connected
components under the minimum blob size dropped, all / brighter / darker changes. The
subtraction baseline (|z| of the smoothed difference) is scored the same way.

    .venv/bin/python tools/gpu_experiment/score.py --returned /work/.device/... \
        [--results-md tools/gpu_experiment/RESULTS.md]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from mschange.evaluation.baseline import subtraction_zmap
from mschange.evaluation.metrics import MetricSettings
from mschange.evaluation.steps import PairScorer, load_truth
from mschange.imagespace import from_ras_axes
from mschange.io import brain_intersection, load_float_image, voxel_sizes
from mschange.preprocessing.resample import resample_to_grid

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pack import REALRUN, REPO, load_config, preproc_paths

COLUMNS = {
    "truth_lesions": "truth",
    "predicted_lesions": "pred",
    "msseg_dice": "Dice",
    "msseg_f1": "MSSEG-2 F1",
    "to_ltpr": "LTPR",
    "to_ppv": "PPV",
    "krueger_sensitivity": "Krueger sens.",
    "krueger_fp_count": "Krueger FP",
}


def full_grid_probability(packed: Path, returned: Path) -> npt.NDArray[np.float32]:
    """The returned crop put back onto the subject's whole 1 mm follow-up grid."""
    with np.load(packed) as stored:
        box = tuple(slice(int(a), int(b)) for a, b in stored["box"])
        ras_shape = tuple(int(n) for n in stored["ras_shape"])
        back = stored["back"]
        shape = tuple(int(n) for n in stored["shape"])
    with np.load(returned) as stored:
        crop = stored["probability"].astype(np.float32) / np.float32(255.0)
    ras = np.zeros(ras_shape, dtype=np.float32)
    ras[box] = crop
    full = np.ascontiguousarray(from_ras_axes(ras, back), dtype=np.float32)
    if full.shape != shape:
        raise ValueError(f"{returned}: back on a grid of {full.shape}, expected {shape}")
    return full


def score_subject(
    subject: str,
    row: pd.Series,
    returned: Path,
    data: Path,
    config: dict[str, Any],
    kappas: list[float],
    ks: list[float],
    blobs: list[int],
) -> list[dict[str, Any]]:
    paths = preproc_paths(REALRUN / "results", subject)
    baseline, _ = load_float_image(paths["baseline"])
    followup, image = load_float_image(paths["followup"])
    affine = np.asarray(image.affine, dtype=np.float64)
    brain = brain_intersection(paths["mask_baseline"], paths["mask_followup"])
    truth, label_affine = load_truth(str(row["label"]), str(row["followup"]), subject)
    difference = resample_to_grid(
        followup - baseline, affine, truth.shape, label_affine, order=1, antialias=False
    )
    settings = MetricSettings.from_dict(config["evaluation"]["metrics"])
    base = config["evaluation"]["baseline"]
    scores: dict[str, tuple[npt.NDArray[np.float32], list[float]]] = {
        "subtraction": (
            subtraction_zmap(
                baseline,
                followup,
                brain,
                voxel_sizes(affine),
                float(base["sigma_mm"]),
                float(base["erode_mm"]),
            ),
            ks,
        )
    }
    prob_file = returned / f"prob_{subject}.npz"
    if prob_file.exists():
        probability = full_grid_probability(data / f"{subject}.npz", prob_file)
        scores["detector-gpu"] = (np.where(brain, probability, 0.0).astype(np.float32), kappas)
    else:
        print(f"no {prob_file}: detector not scored", file=sys.stderr)
    rows = []
    for method, (score, thresholds) in scores.items():
        for blob in blobs:
            scorer = PairScorer(
                score,
                affine,
                truth,
                label_affine,
                difference,
                min_blob_voxels=blob,
                settings=settings,
            )
            for threshold in thresholds:
                for metrics in scorer.rows(scorer.prediction(threshold)):
                    rows.append(
                        {
                            "pair": subject,
                            "method": method,
                            "threshold": threshold,
                            "blob": blob,
                            **metrics,
                        }
                    )
    return rows


def markdown(table: pd.DataFrame) -> str:
    head = ["pair", "method", "threshold", "blob", "direction", *COLUMNS.values()]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in table.iterrows():
        cells = [
            str(r["pair"]),
            str(r["method"]),
            f"{r['threshold']:g}",
            str(r["blob"]),
            str(r["direction"]),
        ]
        for key in COLUMNS:
            value = r[key]
            if key in ("truth_lesions", "predicted_lesions", "krueger_fp_count"):
                cells.append("n/a" if pd.isna(value) else str(int(value)))
            else:
                cells.append("n/a" if pd.isna(value) else f"{float(value):.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_description(returned: Path) -> str:
    summary_file = returned / "summary.json"
    if not summary_file.exists():
        return "(no summary.json returned)"
    summary = json.loads(summary_file.read_text())
    args, training, painting = summary["args"], summary["training"], summary["painting"]
    kinds = {k: painting[k] for k in ("new", "enlarging", "shrinking") if k in painting}
    return "\n".join(
        [
            f"- device: {summary.get('device_name', summary['device'])}; script total "
            f"{summary['total_seconds']:.0f} s",
            f"- painting: {painting['samples']} lesion-painted samples in "
            f"{painting['seconds']:.0f} s on {painting['workers']} workers, from "
            f"{len(summary['train_subjects'])} train no-change pairs ({painting['lesions']} "
            f"lesions: {kinds}; {painting['samples_without_label']} samples without label)",
            f"- training: {training['steps']} steps in {training['train_seconds'] / 60:.1f} min "
            f"({training['steps_per_second']:.2f} steps/s), batch {args['batch']}, patch "
            f"{args['patch']}^3, foreground share {args['foreground_share']}, Adam lr "
            f"{args['lr']:g} cosine to {args['lr_min']:g} over the time budget, bf16 autocast, "
            f"peak GPU memory {summary.get('max_memory_gib', float('nan')):.1f} GiB",
            f"- architecture: {training['architecture']} ({training['parameters'] / 1e6:.2f} M "
            "parameters)",
            f"- last logged loss window (step, s, lr, loss, final, deep, l2, fg voxels): "
            f"`{training['final_loss_window']}`",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--returned",
        type=Path,
        required=True,
        help="folder with prob_<subject>.npz and summary.json",
    )
    parser.add_argument("--data", type=Path, default=REPO / ".gpu_data")
    parser.add_argument("--kappa", type=float, nargs="+", default=[0.1, 0.3, 0.5])
    parser.add_argument("--k", type=float, nargs="+", default=[3.0])
    parser.add_argument("--blob", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--results-md", type=Path, default=None)
    parser.add_argument("--tsv", type=Path, default=None)
    args = parser.parse_args(argv)

    config = load_config()
    cohort = pd.read_csv(REALRUN / "cohort.tsv", sep="\t", dtype=str, keep_default_na=False)
    rows: list[dict[str, Any]] = []
    for _, row in cohort.loc[cohort["split"] == "test"].iterrows():
        rows += score_subject(
            str(row["subject"]),
            row,
            args.returned,
            args.data,
            config,
            args.kappa,
            args.k,
            args.blob,
        )
    table = pd.DataFrame(rows)
    if args.tsv:
        table.to_csv(args.tsv, sep="\t", index=False, float_format="%.6g", na_rep="NaN")
    text = markdown(table)
    print(text)
    if args.results_md:
        args.results_md.write_text(
            "# GPU experiment: detector trained on lesion-painted real pairs\n\n"
            "Exploratory, one run. **patient01 and patient03 (the only two real pairs "
            "with change labels) were looked at while developing the method; they are "
            "development pairs, not an independent test set.** The four scans behind them "
            "(long-patient01/03, study1 and study2) are also among the train subjects as "
            "single scans (simulated-rescan no-change pairs, images only, no change labels), "
            "as the real_training preset has it.\n\n"
            "## What was run\n\n" + run_description(args.returned) + "\n\n"
            "## Results\n\n"
            "Scored as the workflow's evaluate_pair rule (PairScorer, on the raw follow-up "
            "grid). detector-gpu: threshold = kappa on the probability; subtraction: "
            "threshold = k on |z| (sigma 1 mm, erode 6 mm). blob = minimum component size "
            "(1 mm voxels). Dice = MSSEG-2 Dice; LTPR/PPV = To et al.\n\n" + text + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
