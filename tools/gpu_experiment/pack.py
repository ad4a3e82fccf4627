"""Pack the real no-change training pairs and the two test pairs for the GPU machine.

Runs here (needs nibabel, SimpleITK, the workflow outputs in /work/realrun). Each
subject becomes one compressed npz in ``.gpu_data/`` (ignored by git):

* ``baseline``, ``followup``: uint8 (round(255 * clip(x, 0, 1))), RAS axis order,
  cropped to the bounding box of the two brain masks' intersection plus a margin;
* ``brain``: the intersection mask (bool), same box;
* train subjects: ``thickness_mm`` and ``axis`` (the raw follow-up's slice profile,
  the axis counted in the RAS-ordered arrays);
* test pairs: ``label`` (the change label resampled nearest onto the 1 mm grid, same
  box) and what puts a prediction back: ``box`` (RAS-order start/stop), ``ras_shape``,
  ``back`` (the orientation that undoes to_ras_axes), ``affine`` and ``shape`` of the
  1 mm grid.

Plus ``lesion_bank.npz`` (copied) and ``meta.json`` (paint and loss settings, seed).

    .venv/bin/python tools/gpu_experiment/pack.py
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pandas as pd
import yaml

from mschange.config import merge_config, validate_config
from mschange.imagespace import to_ras_axes
from mschange.preprocessing.resample import resample_to_grid
from mschange.synthesis.lesions import lesion_paint_settings, slice_profile_from_raw

REPO = Path(__file__).resolve().parents[2]
REALRUN = Path("/work/realrun")
BANK_KEYS = ("samples_per_subject", "bank", "bank_min_volume_mm3", "bank_max_volume_mm3")
LIMIT_MIB = 64.0


def preproc_paths(results: Path, subject: str) -> dict[str, Path]:
    folder = results / "preproc" / f"sub-{subject}"
    stem = f"sub-{subject}"
    return {
        "baseline": folder / f"{stem}_tp-baseline_space-followup_desc-preproc_FLAIR.nii.gz",
        "followup": folder / f"{stem}_tp-followup_space-followup_desc-preproc_FLAIR.nii.gz",
        "mask_baseline": folder / f"{stem}_tp-baseline_space-followup_desc-brain_mask.nii.gz",
        "mask_followup": folder / f"{stem}_tp-followup_desc-brain_mask.nii.gz",
    }


def to_uint8(data: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    return np.round(255.0 * np.clip(data, 0.0, 1.0)).astype(np.uint8)


def crop_box(mask: npt.NDArray[np.bool_], margin: int) -> tuple[slice, ...]:
    box = []
    for axis in range(3):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(
            slice(max(0, int(hits[0]) - margin), min(mask.shape[axis], int(hits[-1]) + 1 + margin))
        )
    return tuple(box)


def pack_subject(row: pd.Series, results: Path, out: Path, margin: int) -> dict[str, Any]:
    subject = str(row["subject"])
    paths = preproc_paths(results, subject)
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{subject}: missing {missing}")
    follow_image = nib.load(paths["followup"])
    affine = np.asarray(follow_image.affine, dtype=np.float64)
    follow = np.asarray(follow_image.dataobj, dtype=np.float32)
    base = np.asarray(nib.load(paths["baseline"]).dataobj, dtype=np.float32)
    brain = (np.asarray(nib.load(paths["mask_baseline"]).dataobj) > 0) & (
        np.asarray(nib.load(paths["mask_followup"]).dataobj) > 0
    )
    ras_brain, back = to_ras_axes(brain, affine)
    box = crop_box(ras_brain, margin)
    arrays: dict[str, Any] = {
        "baseline": to_uint8(to_ras_axes(base, affine)[0][box]),
        "followup": to_uint8(to_ras_axes(follow, affine)[0][box]),
        "brain": np.ascontiguousarray(ras_brain[box]),
        "box": np.array([[s.start, s.stop] for s in box], dtype=np.int64),
        "ras_shape": np.array(ras_brain.shape, dtype=np.int64),
        "back": np.asarray(back, dtype=np.float64),
        "affine": affine,
        "shape": np.array(brain.shape, dtype=np.int64),
    }
    info: dict[str, Any] = {
        "subject": subject,
        "split": row["split"],
        "box_shape": list(arrays["brain"].shape),
    }
    if row["split"] == "train":
        raw_affine = np.asarray(nib.load(str(row["followup"])).affine, dtype=np.float64)
        thickness, axis = slice_profile_from_raw(raw_affine, affine)
        # Preprocessed array axis ``axis`` becomes RAS axis ornt[axis, 0].
        ornt = nib.orientations.io_orientation(affine)
        ras_axis = int(ornt[axis, 0])
        arrays["thickness_mm"] = np.float64(thickness)
        arrays["axis"] = np.int64(ras_axis)
        info.update(thickness_mm=thickness, axis_preproc=axis, axis_ras=ras_axis)
    else:
        label_image = nib.load(str(row["label"]))
        label = np.asarray(label_image.dataobj) > 0
        on_grid = (
            resample_to_grid(
                label.astype(np.float32),
                label_image.affine,
                brain.shape,
                affine,
                order=0,
                antialias=False,
            )
            > 0.5
        )
        arrays["label"] = np.ascontiguousarray(to_ras_axes(on_grid, affine)[0][box])
        info.update(
            label_voxels_native=int(label.sum()),
            label_voxels_1mm=int(on_grid.sum()),
            label_voxels_box=int(arrays["label"].sum()),
        )
    target = out / f"{subject}.npz"
    np.savez_compressed(target, **arrays)
    info["bytes"] = target.stat().st_size
    return info


def load_config() -> dict[str, Any]:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    preset = yaml.safe_load((REPO / "presets" / "real_training.yaml").read_text())

    return validate_config(merge_config(config, preset))


def travelling_bytes() -> int:
    """Tracked plus untracked-not-ignored files of the repository, and the carried paths."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        .stdout.decode()
        .split("\0")
    )
    total = sum((REPO / p).stat().st_size for p in listed if p and (REPO / p).is_file())
    for carried in (".gpu_data", ".whl"):
        total += sum(f.stat().st_size for f in (REPO / carried).rglob("*") if f.is_file())
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--realrun", type=Path, default=REALRUN)
    parser.add_argument("--out", type=Path, default=REPO / ".gpu_data")
    parser.add_argument("--margin", type=int, default=8)
    parser.add_argument("--subjects", nargs="*", help="only these (default: train + test)")
    args = parser.parse_args(argv)

    cohort = pd.read_csv(args.realrun / "cohort.tsv", sep="\t", dtype=str, keep_default_na=False)
    rows = cohort.loc[cohort["split"].isin(["train", "test"])]
    if args.subjects:
        rows = rows.loc[rows["subject"].isin(args.subjects)]
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.realrun / "results"
    config = load_config()
    paint = {k: v for k, v in config["synthesis"]["lesions"].items() if k not in BANK_KEYS}
    lesion_paint_settings(paint)  # fails here, not on the device, if the keys are off
    shutil.copyfile(results / "lesions" / "lesion_bank.npz", args.out / "lesion_bank.npz")
    infos = []
    for _, row in rows.iterrows():
        try:
            info = pack_subject(row, results, args.out, args.margin)
        except FileNotFoundError as error:
            print(f"SKIPPED {error}", file=sys.stderr)
            continue
        infos.append(info)
        print(json.dumps(info), flush=True)
    meta = {
        "paint_settings": paint,
        "loss": config["detector"]["loss"],
        "augmentation": config["detector"]["training"]["augmentation"],
        "seed": int(config.get("seed", 0)),
        "margin": args.margin,
        "subjects": infos,
        "source": str(args.realrun),
    }
    (args.out / "meta.json").write_text(json.dumps(meta, indent=1))
    size = travelling_bytes() / 2**20
    print(f"travelling: {size:.1f} MiB (limit {LIMIT_MIB:.0f} MiB)")
    if size >= LIMIT_MIB - 2:
        print("TOO BIG: drop subjects (--subjects) or crop tighter", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
