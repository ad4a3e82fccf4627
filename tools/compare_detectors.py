"""Detectors trained in different runs, side by side on the same pairs (docs/real-data.md).

Reads each run's evaluation of the real test pairs
(``results/evaluation/model-<m>_minblob-<n>/sub-*/*_desc-evaluation_metrics.tsv``) and
the validation set of the first run (``results/validation/pairs.tsv`` and its
``method-*/scores.tsv``); a model of another run is scored on that validation set here,
with the same code as the rule ``validate_method``. Prints Markdown tables of means over
the pairs (To et al.'s lesion F1 per pair, then the mean):

    python tools/compare_detectors.py --run new=/work/realrun --run old=/work/oldrun \
        --validate old:open-ms-data
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pandas as pd
import yaml

from mschange.config import validate_config
from mschange.evaluation.metrics import MetricSettings
from mschange.evaluation.validation import (
    SUMMARY_METRICS,
    markdown_table,
    mean_scores,
    validation_pairs,
    validation_step,
    validation_summary,
)
from mschange.io import read_file_table

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ["method", "min_blob_voxels", "direction", *SUMMARY_METRICS]


def test_pair_scores(run: Path, label: str) -> pd.DataFrame:
    files = sorted(
        run.glob("results/evaluation/model-*_minblob-*/sub-*/*_desc-evaluation_metrics.tsv")
    )
    scores = pd.concat([pd.read_csv(f, sep="\t") for f in files], ignore_index=True)
    scores["method"] = [m if m == "subtraction" else f"{m} ({label})" for m in scores["method"]]
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, metavar="LABEL=DIR")
    parser.add_argument(
        "--validate",
        action="append",
        default=[],
        metavar="LABEL:MODEL",
        help="score this run's model on the first run's validation set",
    )
    parser.add_argument(
        "--exclude-validation",
        nargs="*",
        default=[],
        metavar="SUBJECT",
        help="validation subjects to leave out (e.g. seen in training)",
    )
    parser.add_argument(
        "--keep",
        nargs="*",
        metavar="METHOD",
        help="the methods to show, in this order, as labelled in the tables "
        "(e.g. 'subtraction' 'finetuned (loo1)'); default: all",
    )
    parser.add_argument(
        "--rename",
        action="append",
        default=[],
        metavar="OLD=NEW",
        help="relabel a method (two runs' methods renamed alike pool: e.g. "
        "the two folds of a leave-one-out)",
    )
    args = parser.parse_args()
    runs = dict(item.split("=", 1) for item in args.run)
    first_label, first_run = next(iter(runs.items()))

    scores = pd.concat(
        [test_pair_scores(Path(run), label) for label, run in runs.items()], ignore_index=True
    )
    scores["method"] = scores["method"].replace(dict(r.split("=", 1) for r in args.rename))
    scores = scores.drop_duplicates(subset=["subject", "method", "min_blob_voxels", "direction"])
    methods = list(dict.fromkeys(scores["method"]))
    if args.keep:
        unknown = sorted(set(args.keep) - set(methods))
        if unknown:
            parser.error(f"--keep: no method {unknown}; the runs have {methods}")
        methods = list(args.keep)
        scores = scores.loc[scores["method"].isin(methods)]
    print("## Real development pairs (means over patient01 and patient03)\n")
    print(markdown_table(mean_scores(scores, methods, pair="subject"), COLUMNS, decimals=2))
    print("\n## Per pair, blob 20\n")
    per_pair = scores.loc[scores["min_blob_voxels"] == 20].copy()
    print(
        markdown_table(
            per_pair.sort_values(["subject", "direction"]),
            [
                "subject",
                "method",
                "direction",
                "truth_lesions",
                "predicted_lesions",
                "to_ltpr",
                "to_ppv",
                "msseg_f1",
                "msseg_dice",
            ],
            decimals=2,
        )
    )

    config = validate_config(yaml.safe_load((REPO / "config.yaml").read_text()))
    runs = {label: str(Path(run).absolute()) for label, run in runs.items()}
    first_run = runs[first_label]
    os.chdir(first_run)  # the pair table's paths are relative to its workflow folder
    table = Path(first_run) / "results" / "validation" / "pairs.tsv"
    pairs = [
        p
        for p in validation_pairs(read_file_table(table))
        if p.subject not in args.exclude_validation
    ]
    validation = []
    for path in sorted(Path(first_run).glob("results/validation/method-*/scores.tsv")):
        frame = pd.read_csv(path, sep="\t")
        frame = frame.loc[~frame["subject"].isin(args.exclude_validation)]
        frame["method"] = [
            m if m == "subtraction" else f"{m} ({first_label})" for m in frame["method"]
        ]
        validation.append(frame)
    for item in args.validate:
        label, model = item.split(":", 1)
        model_file = Path(runs[label]) / "results" / "detector" / f"model-{model}" / "model.pt"
        validation.append(
            validation_step(
                pairs,
                Path(runs[label]) / "results" / "validation_of_other_run.tsv",
                method=f"{model} ({label})",
                threshold=config["detector"]["inference"]["kappa"],
                blob_sizes=config["experiments"]["min_blob_voxels"],
                settings=MetricSettings.from_dict(config["evaluation"]["metrics"]),
                model=model_file,
                inference=config["detector"]["inference"],
                threads=2,
            )
        )
    if validation:
        scores = pd.concat(validation, ignore_index=True)
        summary = validation_summary(scores, list(dict.fromkeys(scores["method"])))
        print(
            f"\n## Validation set ({scores['pair'].nunique()} pairs of "
            f"{scores['subject'].nunique()} held-out scans)\n"
        )
        print(markdown_table(summary, [*COLUMNS, "fp_per_nochange_pair"], decimals=2))


if __name__ == "__main__":
    main()
