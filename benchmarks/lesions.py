"""Benchmark: lesion-based synthesis (the bank, one painted sample) on real data.

Times building the lesion bank from every mask of a folder (e.g. open_ms_data's
``lesion_masks/raw``, 30 patients) and painting one sample into a preprocessed 1 mm
pair (the config's ``synthesis.lesions`` settings), median of ``--repeats`` runs.

    python benchmarks/lesions.py --bank-dir ../shared/data/open_ms_data/lesion_masks/raw \
        --pair RUN/results/preproc/sub-long-patient01-study2 --threads 2
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import yaml

from mschange.config import validate_config
from mschange.io import brain_intersection, load_float_image
from mschange.synthesis.lesions import (
    LesionBankSettings,
    build_lesion_bank,
    lesion_paint_settings,
    paint_pair,
    paint_seed,
    save_lesion_bank,
    slice_profile_from_raw,
)
from mschange.torchrun import cpu_threads

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_KEYS = ("samples_per_subject", "bank", "bank_min_volume_mm3", "bank_max_volume_mm3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bank-dir", type=Path, required=True)
    parser.add_argument(
        "--pair", type=Path, required=True, help="a results/preproc/sub-<id> folder of a 1 mm run"
    )
    parser.add_argument("--raw-followup", type=Path, help="for the slice profile")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    config = validate_config(yaml.safe_load((REPO / "config.yaml").read_text()))
    lesions = config["synthesis"]["lesions"]
    settings = lesion_paint_settings({k: v for k, v in lesions.items() if k not in WORKFLOW_KEYS})
    masks = sorted(str(p) for p in args.bank_dir.glob("*.nii*"))
    subject = args.pair.name
    prefix = args.pair / subject
    baseline, _ = load_float_image(f"{prefix}_tp-baseline_space-followup_desc-preproc_FLAIR.nii.gz")
    followup, image = load_float_image(
        f"{prefix}_tp-followup_space-followup_desc-preproc_FLAIR.nii.gz"
    )
    brain = brain_intersection(
        f"{prefix}_tp-baseline_space-followup_desc-brain_mask.nii.gz",
        f"{prefix}_tp-followup_desc-brain_mask.nii.gz",
    )
    thickness, axis = 1.0, 2
    if args.raw_followup is not None:
        thickness, axis = slice_profile_from_raw(nib.load(args.raw_followup).affine, image.affine)

    bank_times, paint_times, lesion_counts = [], [], []
    with cpu_threads(args.threads), tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):
            started = time.perf_counter()
            bank = build_lesion_bank(
                masks,
                LesionBankSettings(
                    min_volume_mm3=lesions["bank_min_volume_mm3"],
                    max_volume_mm3=lesions["bank_max_volume_mm3"],
                ),
            )
            save_lesion_bank(bank, Path(folder) / "bank.npz")
            bank_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            pair = paint_pair(
                baseline,
                followup,
                brain,
                bank,
                settings,
                paint_seed(0, subject, repeat),
                slice_thickness_mm=thickness,
                through_plane_axis=axis,
                affine=image.affine,
            )
            paint_times.append(time.perf_counter() - started)
            lesion_counts.append(len(pair.record["lesions"]))
        bank_size = (Path(folder) / "bank.npz").stat().st_size
    result = {
        "machine": platform.processor() or platform.machine(),
        "threads": args.threads,
        "masks": len(masks),
        "bank_lesions": len(bank),
        "bank_npz_mb": bank_size / 2**20,
        "bank_build_s": statistics.median(bank_times),
        "pair": subject,
        "grid": list(np.shape(followup)),
        "slice_profile": {"thickness_mm": thickness, "axis": axis},
        "paint_one_sample_s": statistics.median(paint_times),
        "lesions_painted": lesion_counts,
        "repeats": args.repeats,
    }
    print(json.dumps(result, indent=2))
    print(
        f"\n| lesion bank from {len(masks)} masks ({len(bank)} lesions) | "
        f"{result['bank_build_s']:.1f} s |\n| one painted sample ({subject}, "
        f"{lesion_counts} lesions) | {result['paint_one_sample_s']:.2f} s |"
    )


if __name__ == "__main__":
    main()
