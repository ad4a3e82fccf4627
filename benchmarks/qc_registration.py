"""Benchmark: registration and contrast QC on pairs whose true alignment is known.

Which similarity tells a misregistered pair from a well registered one whose two
scans differ in contrast? This measures candidate similarities of the two
preprocessed time points inside the brain (the Pearson correlation the QC used
before, Pearson after matching the baseline's histogram to the follow-up's, the
Spearman rank correlation that the QC now uses (``registration_similarity``),
scikit-image's normalised mutual information, the correlation of gradient
magnitudes) and candidate contrast measures (the Wasserstein distance that the QC
now uses (``contrast_difference``) and the Kolmogorov-Smirnov statistic of the two
intensity distributions) on:

* real pairs as the pipeline registered them (``mschange predict``'s preprocessing),
  with the registration's error against the true transform: the two development
  pairs of open_ms_data (true transforms from the data's own co-registration),
  simulated rescans of two real single scans (true transform from the rescan's
  record) and two synthetic demo pairs (true transform from the demo's record);
* the same pairs with the registered baseline moved on purpose (shifts of 2, 4 and
  8 mm along each axis, rotations of 3 and 6 degrees about each axis through the
  brain's centre), with the mean displacement of the brain's voxels;
* contrast changes without misalignment: the follow-up against a gamma-changed copy
  of itself, the registered pair with its baseline gamma-changed, and the registered
  pair with a non-monotonic change of the baseline (CSF no longer suppressed, or as
  bright as tissue);
* both at once: a gamma-changed baseline that is also shifted by 4 mm.

It then applies the shipped QC (``mschange.qc``, thresholds from the config schema)
to every case and writes everything to one JSON file (default
docs/benchmark_qc_registration.json)::

    python benchmarks/qc_registration.py --data ../shared/data/open_ms_data \\
        --work /tmp/qc_pairs --threads 2

Preprocessed pairs are kept in ``--work`` and reused when they are already there.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
import scipy.ndimage as ndi
import scipy.stats
import SimpleITK as sitk
import yaml
from scipy.spatial.transform import Rotation
from skimage.exposure import match_histograms
from skimage.metrics import normalized_mutual_information

from mschange import cli
from mschange.config import schema_default
from mschange.demo import demo_subject_paths, make_demo_subject
from mschange.imagespace import RAS_TO_LPS, voxel_centres_mm
from mschange.preprocessing.register import registration_error_mm
from mschange.qc import (
    contrast_difference,
    qc_table,
    registration_correlation,
    registration_similarity,
)
from mschange.synthesis.rescan import RescanSettings, rigid_mm_transform, simulate_rescan

REPO = Path(__file__).resolve().parents[1]
SEED = int(yaml.safe_load((REPO / "config.yaml").read_text())["seed"])  # the demo's
F = npt.NDArray[Any]
Mapping = Callable[[F], F]


# --- the pairs and their true transforms ---------------------------------------------


def data_transform_truth(pair_dir: Path) -> Mapping:
    """Follow-up LPS points to true baseline LPS points, from the data's transforms
    (as tests/test_realdata.py)."""
    to_baseline = sitk.ReadTransform(str(pair_dir / "study1_FLAIR_to_common_space.txt"))
    from_followup = sitk.ReadTransform(
        str(pair_dir / "study2_FLAIR_to_common_space.txt")
    ).GetInverse()

    def mapping(points: F) -> F:
        return np.array(
            [
                to_baseline.TransformPoint(from_followup.TransformPoint(tuple(p)))
                for p in points.tolist()
            ]
        )

    return mapping


def matrix_truth(ras_follow_to_baseline: F) -> Mapping:
    flip = np.diag([*np.diag(RAS_TO_LPS), 1.0])
    lps = flip @ ras_follow_to_baseline @ flip

    def mapping(points: F) -> F:
        return (np.c_[points, np.ones(len(points))] @ lps.T)[:, :3]

    return mapping


def predict(baseline: Path, followup: Path, out: Path, subject: str, threads: int) -> None:
    """Preprocess a pair as `mschange predict` does (skipped when already done)."""
    if not (
        out / "preproc" / f"sub-{subject}_tp-baseline_space-followup_desc-preproc_FLAIR.nii.gz"
    ).is_file():
        code = cli.main(
            [
                "predict",
                "--baseline",
                str(baseline),
                "--followup",
                str(followup),
                "--out",
                str(out),
                "--subject",
                subject,
                "--threads",
                str(threads),
            ]
        )
        if code != 0:
            raise RuntimeError(f"mschange predict failed for {subject}")


def prepare_pairs(data: Path, work: Path, threads: int) -> list[dict[str, Any]]:
    pairs: list[dict[str, Any]] = []
    for name in ("patient01", "patient03"):
        pair_dir = data / "longitudinal" / name
        predict(
            pair_dir / "study1_FLAIR.nii.gz",
            pair_dir / "study2_FLAIR.nii.gz",
            work / name,
            name,
            threads,
        )
        pairs.append(
            {
                "name": name,
                "kind": "real pair (open_ms_data development pair)",
                "out": work / name,
                "truth": data_transform_truth(pair_dir),
            }
        )
    for name, seed in (("long_patient09_study2", 3), ("long_patient20_study2", 5)):
        subject = name.replace("_", "-")
        scan = data / "single" / f"{name}_FLAIR.nii.gz"
        rescan_path = work / f"{subject}_rescan_FLAIR.nii.gz"
        image = nib.load(scan)
        data_ = np.asarray(image.dataobj, dtype=np.float32)
        rescan, record = simulate_rescan(data_, image.affine, RescanSettings(), seed=seed)
        if not rescan_path.is_file():
            nib.save(nib.Nifti1Image(rescan.astype(np.float32), image.affine), rescan_path)
        predict(rescan_path, scan, work / subject, subject, threads)
        motion = record["motion"]
        # The rescan shows input point x at y = moved @ x: follow-up (input) to baseline.
        moved = rigid_mm_transform(
            tuple(motion["rotation_deg"]),
            tuple(motion["translation_mm"]),
            np.asarray(motion["centre_mm"]),
        )
        pairs.append(
            {
                "name": subject,
                "kind": "simulated rescan of a real scan "
                f"(gamma {record['contrast']['gamma']:.3f}, slices x"
                f"{record['slice_thickness']['factor']:.2f})",
                "out": work / subject,
                "truth": matrix_truth(moved),
            }
        )
    for subject, change in (("demo01", False), ("demo02", True)):
        paths = demo_subject_paths(work / "demo", subject)
        if not paths.params_json.is_file():
            make_demo_subject(subject, work / "demo", has_change=change, seed=SEED)
        predict(paths.baseline, paths.followup, work / subject, subject, threads)
        params = json.loads(paths.params_json.read_text())
        affine = nib.load(paths.followup).affine
        to_subject = {
            tp: np.asarray(params["timepoints"][tp]["voxel_to_subject"]) @ np.linalg.inv(affine)
            for tp in ("baseline", "followup")
        }
        gammas = [params["timepoints"][tp]["gamma"] for tp in ("baseline", "followup")]
        pairs.append(
            {
                "name": subject,
                "kind": f"synthetic demo pair (gamma {gammas[0]:.3f} and {gammas[1]:.3f})",
                "out": work / subject,
                "truth": matrix_truth(
                    np.linalg.inv(to_subject["baseline"]) @ to_subject["followup"]
                ),
            }
        )
    return pairs


# --- the measures ----------------------------------------------------------------------


def candidates(
    followup: F, baseline: F, mask: F, followup_mask: F, baseline_mask: F
) -> dict[str, float]:
    """Every candidate similarity (inside both masks) and contrast measure."""
    a = followup[mask].astype(np.float64)
    b = baseline[mask].astype(np.float64)
    grad_a = ndi.gaussian_gradient_magnitude(followup.astype(np.float64), 1.0)[mask]
    grad_b = ndi.gaussian_gradient_magnitude(baseline.astype(np.float64), 1.0)[mask]
    fu_values = followup[followup_mask].astype(np.float64)
    bl_values = baseline[baseline_mask].astype(np.float64)
    values = {
        "pearson": registration_correlation(followup, baseline, mask),
        "pearson_histogram_matched": float(np.corrcoef(a, match_histograms(b, a))[0, 1]),
        "nmi": float(normalized_mutual_information(a, b)),  # scikit-image: 100 bins
        "nmi_64_bins": float(normalized_mutual_information(a, b, bins=64)),
        "gradient_correlation": float(np.corrcoef(grad_a, grad_b)[0, 1]),
        "wasserstein": float(scipy.stats.wasserstein_distance(fu_values, bl_values)),
        "ks": float(scipy.stats.ks_2samp(fu_values, bl_values).statistic),
    }
    # The shipped functions, which the QC table uses (the similarity: Spearman's).
    values["registration_similarity"] = registration_similarity(followup, baseline, mask)
    values["contrast_difference"] = contrast_difference(
        followup, baseline, followup_mask, baseline_mask
    )
    return values


def rigid(
    volume: F,
    mask: F,
    centre: F,
    *,
    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0),
    shift_vox: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> tuple[F, F]:
    """Move an image and its mask by a rotation about ``centre`` and a shift (voxels):
    what was at voxel x shows at R (x - c) + c + t."""
    rotation = Rotation.from_euler("xyz", rotation_deg, degrees=True).as_matrix()
    inverse = rotation.T
    offset = centre - inverse @ (centre + np.asarray(shift_vox, dtype=np.float64))
    moved = ndi.affine_transform(volume, inverse, offset=offset, order=1)
    moved_mask = (
        ndi.affine_transform(mask.astype(np.float32), inverse, offset=offset, order=1) > 0.5
    )
    return moved, moved_mask


def mean_displacement_mm(
    mask: F,
    centre: F,
    voxel_mm: float,
    *,
    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0),
    shift_vox: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> float:
    rotation = Rotation.from_euler("xyz", rotation_deg, degrees=True).as_matrix()
    points = np.argwhere(mask)[::20].astype(np.float64)
    moved = (points - centre) @ rotation.T + centre + np.asarray(shift_vox)
    return float(np.linalg.norm(moved - points, axis=1).mean() * voxel_mm)


def csf_unsuppressed(image: F, mask: F) -> F:
    """A non-monotonic contrast change, as if CSF were no longer suppressed: the darkest
    10% of the brain's intensities (CSF in FLAIR) folded up above the 10th percentile."""
    fold = float(np.percentile(image[mask], 10))
    return np.where(image < fold, 2.0 * fold - image, image)


def csf_bright(image: F, mask: F) -> F:
    """A stronger non-monotonic change, T2-like: the darkest 10% of the brain's
    intensities inverted (1 - x), so that CSF is as bright as the brightest tissue."""
    fold = float(np.percentile(image[mask], 10))
    return np.where(image < fold, 1.0 - image, image)


def measure_pair(pair: dict[str, Any]) -> list[dict[str, Any]]:
    prefix = pair["out"] / "preproc" / f"sub-{pair['out'].name}_tp-"
    fu_image = nib.load(f"{prefix}followup_space-followup_desc-preproc_FLAIR.nii.gz")
    followup = fu_image.get_fdata(dtype=np.float32)
    baseline = nib.load(f"{prefix}baseline_space-followup_desc-preproc_FLAIR.nii.gz").get_fdata(
        dtype=np.float32
    )
    fu_mask = np.asarray(nib.load(f"{prefix}followup_desc-brain_mask.nii.gz").dataobj) > 0
    bl_mask = (
        np.asarray(nib.load(f"{prefix}baseline_space-followup_desc-brain_mask.nii.gz").dataobj) > 0
    )
    voxel = np.linalg.norm(fu_image.affine[:3, :3], axis=0)
    assert np.allclose(voxel, voxel[0], atol=1e-3), voxel
    voxel_mm = float(voxel[0])

    # The registration's error against the truth, over brain voxels (LPS mm).
    centres = voxel_centres_mm(fu_mask.shape, fu_image.affine)[fu_mask.ravel()][::7]
    points = centres @ RAS_TO_LPS.T
    xfm = next((pair["out"] / "preproc").glob("*_xfm.mat"))
    error = float(registration_error_mm(xfm, pair["truth"], points).mean())
    unregistered = float(np.linalg.norm(pair["truth"](points) - points, axis=1).mean())
    centre = np.argwhere(fu_mask).mean(axis=0)

    rows: list[dict[str, Any]] = []

    def add(
        case: str,
        group: str,
        bl: F,
        bl_m: F,
        fu: F = followup,
        fu_m: F = fu_mask,
        displacement_mm: float = 0.0,
    ) -> None:
        started = time.perf_counter()
        values = candidates(fu, bl, fu_m & bl_m, fu_m, bl_m)
        rows.append(
            {
                "pair": pair["name"],
                "case": case,
                "group": group,
                "added_displacement_mm": round(displacement_mm, 2),
                **{k: round(v, 4) for k, v in values.items()},
                "seconds": round(time.perf_counter() - started, 2),
            }
        )

    add("as registered", "good registration", baseline, bl_mask)
    rows[-1].update(
        registration_error_mm=round(error, 2), unregistered_error_mm=round(unregistered, 2)
    )
    for mm in (2.0, 4.0, 8.0):
        for axis in range(3):
            shift = [0.0, 0.0, 0.0]
            shift[axis] = mm / voxel_mm
            moved, moved_mask = rigid(baseline, bl_mask, centre, shift_vox=tuple(shift))
            add(
                f"shifted {mm:g} mm (axis {axis})",
                "misregistered",
                moved,
                moved_mask,
                displacement_mm=mean_displacement_mm(
                    fu_mask, centre, voxel_mm, shift_vox=tuple(shift)
                ),
            )
    for degrees in (3.0, 6.0):
        for axis in range(3):
            angles = [0.0, 0.0, 0.0]
            angles[axis] = degrees
            moved, moved_mask = rigid(baseline, bl_mask, centre, rotation_deg=tuple(angles))
            add(
                f"rotated {degrees:g} deg (axis {axis})",
                "misregistered",
                moved,
                moved_mask,
                displacement_mm=mean_displacement_mm(
                    fu_mask, centre, voxel_mm, rotation_deg=tuple(angles)
                ),
            )
    for gamma in (0.5, 0.67, 0.8, 0.9, 1.1, 1.25, 1.5, 2.0):
        # Gamma 0.9-1.1 is the simulated rescans' own range (a repeat scan's variation).
        group = "contrast change" if abs(np.log(gamma)) > np.log(1.4) else "small contrast change"
        add(
            f"follow-up vs its gamma {gamma:g} copy",
            group,
            np.clip(followup, 0.0, None) ** gamma,
            fu_mask,
        )
    for gamma in (0.5, 2.0):
        add(
            f"baseline gamma {gamma:g}",
            "contrast change",
            np.clip(baseline, 0.0, None) ** gamma,
            bl_mask,
        )
    add(
        "baseline with CSF not suppressed",
        "contrast change (non-monotonic)",
        csf_unsuppressed(baseline, bl_mask),
        bl_mask,
    )
    add(
        "baseline with CSF bright (T2-like)",
        "contrast change (non-monotonic)",
        csf_bright(baseline, bl_mask),
        bl_mask,
    )
    shifted, shifted_mask = rigid(
        np.clip(baseline, 0.0, None) ** 0.67, bl_mask, centre, shift_vox=(4.0 / voxel_mm, 0.0, 0.0)
    )
    add(
        "baseline gamma 0.67, shifted 4 mm (axis 0)",
        "misregistered and contrast change",
        shifted,
        shifted_mask,
        displacement_mm=4.0,
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=REPO.parent / "shared" / "data" / "open_ms_data"
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/qc_pairs"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--output", type=Path, default=REPO / "docs" / "benchmark_qc_registration.json"
    )
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    pairs = prepare_pairs(args.data, args.work, args.threads)
    rows = [row for pair in pairs for row in measure_pair(pair)]

    thresholds = {
        key: schema_default("qc", key)
        for key in (
            "min_registration_similarity",
            "max_contrast_difference",
            "min_brain_ml",
            "max_brain_ml",
        )
    }
    table = qc_table(
        [
            {
                "subject": f"{r['pair']}: {r['case']}",
                "brain_volume_ml_baseline": 1200.0,
                "brain_volume_ml_followup": 1200.0,
                "registration_correlation": r["pearson"],
                "registration_similarity": r["registration_similarity"],
                "contrast_difference": r["contrast_difference"],
            }
            for r in rows
        ],
        min_similarity=thresholds["min_registration_similarity"],
        max_contrast=thresholds["max_contrast_difference"],
        min_brain_ml=thresholds["min_brain_ml"],
        max_brain_ml=thresholds["max_brain_ml"],
    )
    for row, flags in zip(rows, table.itertuples(), strict=True):
        row["flag_registration"] = bool(flags.flag_registration)
        row["flag_contrast"] = bool(flags.flag_contrast)
        row["flag_reason"] = flags.flag_reason
        # The check this replaced: Pearson's correlation below 0.8.
        row["old_flag_registration"] = bool(not row["pearson"] >= 0.8)

    measures = [
        "pearson",
        "pearson_histogram_matched",
        "registration_similarity",
        "nmi",
        "nmi_64_bins",
        "gradient_correlation",
        "contrast_difference",
        "wasserstein",
        "ks",
    ]
    summary: dict[str, Any] = {}
    groups = sorted({r["group"] for r in rows})
    for measure in measures:
        summary[measure] = {
            group: [
                min(r[measure] for r in rows if r["group"] == group),
                max(r[measure] for r in rows if r["group"] == group),
            ]
            for group in groups
        }
        summary[measure]["misregistered >= 4 mm"] = [
            f(
                r[measure]
                for r in rows
                if r["group"].startswith("misregistered") and r["added_displacement_mm"] >= 3.5
            )
            for f in (min, max)
        ]
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads",
        "thresholds": thresholds,
        "old_check": "registration_correlation (pearson) < 0.8",
        "median_seconds_per_case": statistics.median(r["seconds"] for r in rows),
        "summary_min_max": summary,
        "cases": rows,
        "pairs": {p["name"]: p["kind"] for p in pairs},
    }
    args.output.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps({"thresholds": thresholds, "summary_min_max": summary}, indent=1))


if __name__ == "__main__":
    main()
