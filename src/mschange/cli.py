"""The `mschange` command: cohort utilities usable outside Snakemake."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from mschange import __version__
from mschange.cohort import CohortError, check_cohort_images, cohort_from_bids, read_cohort_sheet
from mschange.io import atomic_path


def _check(args: argparse.Namespace) -> int:
    cohort = read_cohort_sheet(args.sheet)
    warnings = check_cohort_images(cohort, check_voxels=not args.headers_only)
    for warning in warnings:
        print(f"mschange: warning: {warning}", file=sys.stderr)
    counts = cohort.groupby(["split", "change"]).size()
    checked = "headers readable (voxels not read)" if args.headers_only else "all inputs readable"
    print(
        f"{args.sheet}: {len(cohort)} pairs, {checked}"
        + (f", {len(warnings)} warning(s)" if warnings else "")
    )
    for (split, change), n in counts.items():
        print(f"  split={split} change={change}: {n}")
    return 0


def _bids_to_sheet(args: argparse.Namespace) -> int:
    cohort = cohort_from_bids(args.bids_dir, split=args.split, change=args.change)
    with atomic_path(args.output) as tmp:
        cohort.to_csv(tmp, sep="\t", index=False)
    print(f"wrote {len(cohort)} pairs to {args.output}")
    return 0


def _write_imported(cohort: pd.DataFrame, output: Path) -> None:
    with atomic_path(output) as tmp:
        cohort.to_csv(tmp, sep="\t", index=False)
    counts = cohort.groupby(["split", "change"]).size()
    labelled = int((cohort["label"] != "").sum())
    print(
        f"wrote {len(cohort)} rows to {output}: "
        + ", ".join(f"{n} {split}/{change}" for (split, change), n in counts.items())
        + f"; {labelled} with a label"
    )


def _import_open_ms_data(args: argparse.Namespace) -> int:
    from mschange.importers import open_ms_data_cohort

    label_dir = None
    if not args.no_labels:
        # Beside the sheet by default, so the sheet and its labels move together.
        label_dir = args.label_dir or args.output.parent / f"{args.output.stem}_labels"
    cohort = open_ms_data_cohort(
        args.data_dir,
        label_dir=label_dir,
        extra_single=args.extra_single or args.all_single,
        longitudinal_as_single=args.longitudinal_as_single or args.all_single,
        isbi_dir=args.isbi_dir,
        validation=args.validation,
    )
    _write_imported(cohort, args.output)
    if label_dir is not None:
        print(f"labels (ground truth mapped onto each follow-up grid) in {label_dir}")
    return 0


def _import_msseg2(args: argparse.Namespace) -> int:
    from mschange.importers import msseg2_cohort

    cohort = msseg2_cohort(args.data_dir, ground_truth=args.ground_truth)
    _write_imported(cohort, args.output)
    return 0


def _replay_supermix(args: argparse.Namespace) -> int:
    from mschange.synthesis.steps import replay_step

    stem = Path(args.record).name.removesuffix(".json").removesuffix("_desc-supermix")
    args.out.mkdir(parents=True, exist_ok=True)
    synthesised = args.out / f"{stem}_desc-synthesised_FLAIR.nii.gz"
    label = args.out / f"{stem}_desc-change_mask.nii.gz"
    record = replay_step(args.record, synthesised, label, device=args.device)
    print(f"replayed {record['subject']} sample {record['sample']}: {synthesised}, {label}")
    return 0


def _replay_lesions(args: argparse.Namespace) -> int:
    from mschange.synthesis.lesions import replay_lesions_step

    record = replay_lesions_step(args.record, args.out)
    print(
        f"replayed {record['subject']} sample {record['sample']}: "
        + ", ".join(record["written"].values())
    )
    return 0


def _ship_model(args: argparse.Namespace) -> int:
    import yaml

    from mschange.config import merge_config, validate_config
    from mschange.pretrained import ship_model

    config: dict = {}
    for path in args.configfile:
        config = merge_config(config, yaml.safe_load(Path(path).read_text()) or {})
    config = validate_config(config)
    name = args.name or config["detector"]["name"]
    trained = Path(args.results) / "detector" / f"model-{config['detector']['name']}"
    extra = [Path(args.results) / "lesions" / "lesion_bank.npz"]
    path = ship_model(
        trained,
        name,
        inference=config["detector"]["inference"],
        extra_data=[p for p in extra if p.is_file()],
        models=args.models_dir,
    )
    print(f"shipped {trained} as {path}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from mschange.torchrun import flush_denormals

    flush_denormals()  # first: before any torch work creates CPU worker threads
    from mschange.detection.pair import Interrupted, Progress, interrupt_on_signals, predict_pair

    overrides = {
        key: value
        for key, value in (
            ("kappa", args.kappa),
            ("min_blob_voxels", args.min_blob_voxels),
            ("mirror_axes", args.mirror_axes),
        )
        if value is not None
    }
    progress = Progress()
    try:
        with interrupt_on_signals():
            record = predict_pair(
                args.baseline,
                args.followup,
                args.model or None,
                args.out,
                subject=args.subject,
                device=args.device,
                threads=args.threads,
                overrides=overrides,
                progress=progress,
                label=args.label,
            )
    except (Interrupted, KeyboardInterrupt) as stop:
        number = stop.signal_number if isinstance(stop, Interrupted) else signal.SIGINT
        print(
            f"mschange predict: stopped by {signal.Signals(number).name} during "
            f"{progress.current}; {args.out} was not changed (it holds what it held "
            "before, if anything) and this run's partial results were removed",
            file=sys.stderr,
        )
        return 128 + int(number)
    print(
        f"{record['subject']}: {record['changes']} change(s): "
        f"{record['brighter_at_followup']} brighter at follow-up (new or enlarging), "
        f"{record['darker_at_followup']} darker (shrinking or resolving), "
        f"{record['changed_volume_mm3']:.0f} mm3 in all"
    )
    print(
        f"results in {args.out}/, a BIDS derivatives dataset (lesion table: "
        f"{record['outputs']['lesions']}; maps on the follow-up's own grid: *_res-native_*)"
    )
    qc = record["qc"]
    print(
        f"open in a browser (no network needed): {record['pages']['summary_html']} "
        f"(summary), {record['pages']['viewer']} (viewer); QC: "
        + (f"flagged: {qc['flag_reason']}" if qc["flagged"] else "passed")
    )
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _inference_option(key: str) -> Callable[[str], Any]:
    """An option parsed and checked by the config schema's rule for
    ``detector.inference.<key>``: the workflow and ``predict`` accept the same values."""
    from mschange.config import check_setting, setting_schema

    integer = setting_schema("detector", "inference", key)["type"] == "integer"

    def parse(text: str) -> Any:
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'a whole number' if integer else 'a number'}"
            ) from None
        problem = check_setting(value, "detector", "inference", key)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = key  # argparse names the type in its messages
    return parse


def _inference_default(key: str) -> Any:
    from mschange.config import schema_default

    return schema_default("detector", "inference", key)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mschange", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mschange {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    check = commands.add_parser("check-cohort", help="check a cohort sheet and all its images")
    check.add_argument("sheet", type=Path)
    check.add_argument(
        "--headers-only",
        action="store_true",
        help="read only each file's header, not its voxels (no NaN/Inf, "
        "truncation, blank-scan, label-value or identical-scan check)",
    )
    check.set_defaults(run=_check)

    bids = commands.add_parser(
        "bids-to-sheet", help="write a cohort sheet pairing consecutive BIDS sessions"
    )
    bids.add_argument("bids_dir", type=Path)
    bids.add_argument("output", type=Path)
    bids.add_argument("--split", choices=["train", "test"], default="test")
    bids.add_argument("--change", choices=["yes", "no", "unknown"], default="unknown")
    bids.set_defaults(run=_bids_to_sheet)

    open_ms = commands.add_parser(
        "import-open-ms-data",
        help="write a cohort sheet for the open_ms_data subset (pairs with their ground truth "
        "on the follow-up grid, and single scans)",
    )
    open_ms.add_argument("data_dir", type=Path, help="the open_ms_data folder")
    open_ms.add_argument("output", type=Path, help="the cohort sheet to write (TSV)")
    open_ms_labels = open_ms.add_mutually_exclusive_group()
    open_ms_labels.add_argument(
        "--label-dir",
        type=Path,
        help="where to write the ground truth mapped onto each follow-up grid "
        "(default: beside the sheet, e.g. cohort_labels/ for cohort.tsv)",
    )
    open_ms_labels.add_argument(
        "--no-labels",
        action="store_true",
        help="leave the label column empty (write no label files)",
    )
    open_ms.add_argument(
        "--extra-single",
        action="store_true",
        help="also take extra_single/*FLAIR*.nii.gz as single scans",
    )
    open_ms.add_argument(
        "--longitudinal-as-single",
        action="store_true",
        help="also take both studies of every longitudinal pair as single "
        "scans (images only; their labels are never used for training)",
    )
    open_ms.add_argument(
        "--all-single", action="store_true", help="--extra-single and --longitudinal-as-single"
    )
    open_ms.add_argument(
        "--isbi-dir",
        type=Path,
        help="also take the ISBI 2015 FLAIRs in this folder as single scans",
    )
    open_ms.add_argument(
        "--validation",
        nargs="+",
        default=[],
        metavar="SUBJECT",
        help="single scans held out of training for the validation set (split: validation)",
    )
    open_ms.set_defaults(run=_import_open_ms_data)

    msseg2 = commands.add_parser(
        "import-msseg2",
        help="write a cohort sheet for the MSSEG-2 training data (one test pair per case)",
    )
    msseg2.add_argument("data_dir", type=Path, help="the folder holding one folder per case")
    msseg2.add_argument("output", type=Path, help="the cohort sheet to write (TSV)")
    msseg2.add_argument(
        "--ground-truth",
        default="consensus",
        choices=["consensus", "expert1", "expert2", "expert3", "expert4"],
        help="which ground truth becomes the label (default: consensus)",
    )
    msseg2.set_defaults(run=_import_msseg2)

    replay = commands.add_parser(
        "replay-supermix", help="rebuild a SuperMix sample from its JSON record (identical voxels)"
    )
    replay.add_argument("record", type=Path, help="a results/supermix/.../*_desc-supermix.json")
    replay.add_argument("--out", type=Path, required=True, help="folder for the NIfTI files")
    replay.add_argument("--device", default="cpu")
    replay.set_defaults(run=_replay_supermix)

    replay_lesions = commands.add_parser(
        "replay-lesions",
        help="rebuild a lesion-painted sample from its JSON record (identical voxels)",
    )
    replay_lesions.add_argument("record", type=Path, help="a painted sample's *_desc-lesions.json")
    replay_lesions.add_argument(
        "--out", type=Path, required=True, help="folder for the NIfTI files"
    )
    replay_lesions.set_defaults(run=_replay_lesions)

    predict = commands.add_parser(
        "predict", help="preprocess one raw pair and detect its changes with a trained model"
    )
    predict.add_argument("--baseline", type=Path, required=True, help="baseline FLAIR (NIfTI)")
    predict.add_argument("--followup", type=Path, required=True, help="follow-up FLAIR (NIfTI)")
    predict.add_argument(
        "--model",
        action="append",
        metavar="MODEL",
        help="a model file (e.g. results/detector/model-*/model.pt) or the "
        "name of a shipped model; give it again for an ensemble "
        "(default: the shipped flair-lesions-v1)",
    )
    predict.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output folder, made a BIDS derivatives dataset (docs/bids.md)",
    )
    predict.add_argument(
        "--subject",
        help="id used in file names (default: from --followup; a BIDS follow-up's subject "
        "and session carry over)",
    )
    predict.add_argument(
        "--label",
        help="ground-truth change mask on the follow-up's grid, shown in the viewer as a "
        "toggle (checked like a cohort sheet's label; nothing is scored)",
    )
    predict.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    predict.add_argument(
        "--threads", type=_positive_int, help="CPU threads (default: all available)"
    )
    predict.add_argument(
        "--kappa",
        type=_inference_option("kappa"),
        help="change where the probability exceeds this, from 0 to 1 "
        "(default: the model's, chosen on the validation set; else "
        f"{_inference_default('kappa')})",
    )
    predict.add_argument(
        "--min-blob-voxels",
        type=_inference_option("min_blob_voxels"),
        help="smallest change kept, in 1 mm voxels (default: the model's; "
        f"else {_inference_default('min_blob_voxels')})",
    )
    predict.add_argument(
        "--mirror-axes",
        type=int,
        nargs="*",
        choices=(0, 1, 2),
        help="test-time mirroring over these RAS axes (0 left-right); "
        "2^n network passes (default: the model's)",
    )
    predict.set_defaults(run=_predict)

    ship = commands.add_parser(
        "ship-model",
        help="copy a workflow-trained detector into the package's models/ "
        "with its inference settings and data fingerprints",
    )
    ship.add_argument(
        "--configfile",
        nargs="+",
        required=True,
        type=Path,
        help="the run's config files, in the order given to Snakemake",
    )
    ship.add_argument(
        "--results",
        type=Path,
        default=Path("results"),
        help="the run's results folder (run from its working folder)",
    )
    ship.add_argument("--name", help="shipped name (default: detector.name)")
    ship.add_argument(
        "--models-dir", type=Path, help="where models/<name>/ goes (default: the package's models/)"
    )
    ship.set_defaults(run=_ship_model)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (CohortError, ValueError, OSError, RuntimeError) as error:
        print(f"mschange: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
