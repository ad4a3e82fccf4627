"""Lesion-based change synthesis: the lesion bank, painting, the label rule and replay."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from mschange.synthesis.lesions import (
    LesionBank,
    LesionBankSettings,
    LesionPaintSettings,
    build_lesion_bank,
    load_lesion_bank,
    paint_lesions_step,
    paint_pair,
    paint_seed,
    replay_painted,
    save_lesion_bank,
    slice_profile_from_raw,
)

from .conftest import OPEN_MS_DATA

LESION_MASKS = OPEN_MS_DATA / "lesion_masks" / "raw"

# Mask grid: array axis 0 runs inferior->superior in 2 mm steps, axis 1 right->left
# (0.5 mm), axis 2 posterior->anterior (0.8 mm), so a wrong RAS reordering or a wrong
# voxel size per axis changes the recovered extents and volumes.
MASK_AFFINE = np.array(
    [[0.0, -0.5, 0.0, 10.0], [0.0, 0.0, 0.8, -20.0], [2.0, 0.0, 0.0, 5.0], [0.0, 0.0, 0.0, 1.0]]
)
CUBE = (slice(2, 4), slice(4, 12), slice(4, 9))  # 4 x 4 x 4 mm: 64 mm3
SLAB = (slice(6, 9), slice(16, 36), slice(14, 19))  # S 6 x R 10 x A 4 mm: 240 mm3


@pytest.fixture(scope="module")
def mask_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    mask = np.zeros((12, 40, 30), dtype=np.uint8)
    mask[CUBE] = 1
    mask[SLAB] = 1
    mask[10, 2, 26] = 1  # 0.8 mm3: below the minimum volume
    path = tmp_path_factory.mktemp("masks") / "two_blobs.nii.gz"
    nib.save(nib.Nifti1Image(mask, MASK_AFFINE), path)
    return path


@pytest.fixture(scope="module")
def bank(mask_file: Path) -> LesionBank:
    return build_lesion_bank([mask_file])


def test_bank_recovers_the_blobs_with_their_volumes_and_1mm_extents_in_ras_order(bank):
    assert len(bank) == 2
    order = np.argsort(bank.volumes_mm3)
    assert bank.volumes_mm3[order].tolist() == pytest.approx([64.0, 240.0])
    # Extents along R, A, S (mm): the cube is 4 x 4 x 4, the slab 10 x 4 x 6.
    for index, extents in zip(order, [(4, 4, 4), (10, 4, 6)], strict=True):
        fraction = bank.fraction(int(index))
        assert fraction.min() >= 0 and fraction.max() <= 1
        # Partial-volume fractions keep the raw volume (to uint8 rounding).
        assert fraction.sum() == pytest.approx(bank.volumes_mm3[index], rel=0.01)
        centre = [n // 2 for n in fraction.shape]
        for axis, extent in enumerate(extents):
            line = list(centre)
            line[axis] = slice(None)  # type: ignore[call-overload]
            # The central line crosses the lesion fully covered: its sum is the extent.
            assert fraction[tuple(line)].sum() == pytest.approx(extent, abs=0.05)
        assert bank.source(int(index)) == "two_blobs.nii.gz"


def test_bank_volume_limits_round_trip_and_summary(bank, mask_file, tmp_path):
    assert len(build_lesion_bank([mask_file], LesionBankSettings(max_volume_mm3=100.0))) == 1
    assert len(build_lesion_bank([mask_file], LesionBankSettings(min_volume_mm3=0.5))) == 3
    path = save_lesion_bank(bank, tmp_path / "bank.npz")
    loaded = load_lesion_bank(path)
    assert loaded.fingerprint() == bank.fingerprint()
    assert np.array_equal(loaded.fraction(1), bank.fraction(1))
    summary = json.loads(json.dumps(loaded.summary()))
    assert summary["n_lesions"] == 2
    assert summary["sources"] == {"two_blobs.nii.gz": 2}
    assert summary["volume_quantiles_mm3"]["q100"] == pytest.approx(240.0)


# ------------------------------------------------------------------ painting

SHAPE = (40, 40, 40)
NAWM = 0.5


def phantom(bright_blob: bool = False, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A sphere 'brain' (radius 18): white matter 0.5 inside radius 15, grey matter 0.6
    around it, a little noise, one voxel at 1.0 (the clipped top of a preprocessed scan,
    which caps painted values); optionally an existing bright lesion (1.0)."""
    grid = np.indices(SHAPE, dtype=np.float64) - (np.array(SHAPE)[:, None, None, None] - 1) / 2
    radius = np.sqrt((grid**2).sum(axis=0))
    brain = radius <= 18
    image = np.where(radius <= 15, NAWM, 0.6) + np.random.default_rng(seed).normal(
        0.0, 0.005, SHAPE
    )
    image[19, 19, 3] = 1.0
    if bright_blob:
        image[
            np.sqrt(((grid - np.array([5, 0, 0])[:, None, None, None]) ** 2).sum(axis=0)) <= 3
        ] = 1.0
    return (np.clip(image, 0, 1) * brain).astype(np.float32), brain


def settings(kind: str, **overrides: object) -> LesionPaintSettings:
    values: dict[str, object] = dict(
        kinds=((kind, 1.0),),
        lesions_per_sample=(1, 1),
        contrast=(1.5, 1.5),
        contrast_cap_percentile=100.0,
        border_sigma_mm=(0.3, 0.3),
        edge_margin_mm=6.0,
        white_matter_percentiles=(5.0, 55.0),
        augment=False,
    )
    values.update(overrides)
    return LesionPaintSettings(**values)  # type: ignore[arg-type]


def test_new_lesion_changes_only_the_followup_inside_the_brain_by_the_contrast(bank):
    baseline, brain = phantom(seed=1)
    followup, _ = phantom(seed=2)
    pair = paint_pair(baseline, followup, brain, bank, settings("new"), [1])
    (lesion,) = pair.record["lesions"]
    assert lesion["kind"] == "new" and lesion["painted_timepoint"] == "followup"
    assert np.array_equal(pair.baseline, baseline)
    changed = pair.followup != followup
    assert changed.any() and not (changed & ~brain).any()
    label = pair.label.astype(bool)
    assert pair.label.dtype == np.uint8 and label.sum() == lesion["labelled_voxels"] >= 3
    assert not (label & ~changed).any()
    # Lesion cores take the target intensity, contrast x NAWM median.
    assert lesion["target"] == pytest.approx(
        1.5 * pair.record["derived"]["followup"]["nawm_median"]
    )
    assert np.median(pair.followup[label]) == pytest.approx(1.5 * NAWM, rel=0.05)
    # The centre is in white matter, at least edge_margin_mm inside the brain.
    centre = np.array(lesion["centre"], dtype=float)
    assert np.linalg.norm(centre - (np.array(SHAPE) - 1) / 2) <= 18 - 6


def test_shrinking_lesion_is_painted_into_the_baseline_only(bank):
    baseline, brain = phantom(seed=1)
    followup, _ = phantom(seed=2)
    pair = paint_pair(baseline, followup, brain, bank, settings("shrinking"), [2])
    assert pair.record["lesions"][0]["painted_timepoint"] == "baseline"
    assert np.array_equal(pair.followup, followup)
    label = pair.label.astype(bool)
    assert label.any() and (pair.baseline[label] > baseline[label] + 0.1).all()


def test_enlarging_labels_only_the_grown_part_next_to_the_existing_lesion(bank):
    baseline, brain = phantom(bright_blob=True, seed=1)
    followup, _ = phantom(bright_blob=True, seed=2)
    pair = paint_pair(baseline, followup, brain, bank, settings("enlarging"), [3])
    (lesion,) = pair.record["lesions"]
    assert lesion["kind"] == "enlarging" and lesion["fallback"] is None
    existing = followup >= 1.0
    existing[19, 19, 3] = False  # the lone top voxel is no lesion
    label = pair.label.astype(bool)
    assert label.any() and not (label & existing).any()
    # Grown from the blob's border: the label touches the existing lesion.
    assert (ndimage.binary_dilation(existing) & label).any()
    # Every labelled voxel visibly brightened (min_label_increase of the lesion contrast).
    least = 0.25 * (lesion["target"] - pair.record["derived"]["followup"]["nawm_median"])
    assert ((pair.followup - followup)[label] >= least - 1e-6).all()
    assert lesion["grown_from"]["component_voxels"] == int(existing.sum())
    assert np.array_equal(pair.baseline, baseline)
    # Painting never darkens: the existing lesion keeps its intensity.
    assert np.array_equal(pair.followup[existing], followup[existing])


def test_enlarging_without_an_existing_lesion_falls_back_to_new(bank):
    baseline, brain = phantom(seed=1)
    pair = paint_pair(baseline, baseline, brain, bank, settings("enlarging"), [4])
    (lesion,) = pair.record["lesions"]
    assert lesion["kind"] == "new" and lesion["drawn_kind"] == "enlarging"
    assert "no hyperintensity" in lesion["fallback"]


def _extents(changed: np.ndarray) -> list[int]:
    return [
        int(np.ptp(np.flatnonzero(changed.any(axis=tuple(b for b in range(3) if b != a))))) + 1
        for a in range(3)
    ]


def test_slice_profile_spreads_the_lesion_along_the_through_plane_axis(bank):
    baseline, brain = phantom(seed=1)
    paint = settings("new")
    thin = paint_pair(baseline, baseline, brain, bank, paint, [5])
    thick = paint_pair(
        baseline, baseline, brain, bank, paint, [5], slice_thickness_mm=6.0, through_plane_axis=1
    )
    assert thin.record["lesions"][0]["centre"] == thick.record["lesions"][0]["centre"]
    thin_extent = _extents(thin.followup != baseline)
    thick_extent = _extents(thick.followup != baseline)
    assert thick_extent[1] >= thin_extent[1] + 6 - 1
    assert thick_extent[0] == thin_extent[0] and thick_extent[2] == thin_extent[2]
    # A 4 mm lesion seen through 6 mm slices is dimmer (partial volume): at most 4/6 of
    # the contrast, and its label (alpha >= 0.5) is no longer than the lesion.
    thin_peak = float((thin.followup - baseline).max())
    thick_peak = float((thick.followup - baseline).max())
    assert thick_peak <= thin_peak * (4 / 6 + 0.02)
    assert 1 <= _extents(thick.label.astype(bool))[1] <= _extents(thin.label.astype(bool))[1]
    assert thick.record["slice_profile"] == {"thickness_mm": 6.0, "through_plane_axis": 1}


def test_same_entropy_same_pair_and_replay_from_json_is_identical(bank, mask_file):
    baseline, brain = phantom(bright_blob=True, seed=1)
    followup, _ = phantom(bright_blob=True, seed=2)
    mixed = LesionPaintSettings(
        lesions_per_sample=(3, 4),
        border_sigma_mm=(0.3, 1.0),
        edge_margin_mm=4.0,
        white_matter_percentiles=(5.0, 55.0),
    )
    entropy = paint_seed(7, "sub01", 0)
    first = paint_pair(
        baseline,
        followup,
        brain,
        bank,
        mixed,
        entropy,
        slice_thickness_mm=3.0,
        through_plane_axis=2,
    )
    again = paint_pair(
        baseline,
        followup,
        brain,
        bank,
        mixed,
        entropy,
        slice_thickness_mm=3.0,
        through_plane_axis=2,
    )
    other = paint_pair(
        baseline,
        followup,
        brain,
        bank,
        mixed,
        paint_seed(7, "sub01", 1),
        slice_thickness_mm=3.0,
        through_plane_axis=2,
    )
    for name in ("baseline", "followup", "label"):
        assert np.array_equal(getattr(first, name), getattr(again, name))
    assert not np.array_equal(first.label, other.label)
    assert len(first.record["lesions"]) >= 2
    assert first.record["label_voxels"] == sum(
        lesion["labelled_voxels"] for lesion in first.record["lesions"]
    )

    record = json.loads(json.dumps(first.record))
    replayed = replay_painted(record, baseline, followup, brain, bank)
    for name in ("baseline", "followup", "label"):
        assert np.array_equal(getattr(first, name), getattr(replayed, name))

    other_bank = build_lesion_bank([mask_file], LesionBankSettings(max_volume_mm3=100.0))
    with pytest.raises(ValueError, match="lesion bank differs"):
        replay_painted(record, baseline, followup, brain, other_bank)
    with pytest.raises(ValueError, match="differs from the one"):
        replay_painted(record, baseline * 0.9, followup, brain, bank)


def test_paint_seed_streams_differ_from_supermix():
    from mschange.synthesis.supermix import sample_seed

    assert paint_seed(1, "a", 0) != sample_seed(1, "a", 0)
    assert paint_seed(1, "a", 0) == paint_seed(1, "a", 0) != paint_seed(1, "a", 1)


def test_settings_from_plain_config_and_validation():
    plain = LesionPaintSettings().to_dict()
    assert json.loads(json.dumps(plain)) == plain
    assert LesionPaintSettings.from_config({**plain, "enabled": True}) == LesionPaintSettings()
    custom = LesionPaintSettings.from_config(
        {"kinds": {"new": 1, "shrinking": 0}, "contrast": [1.3, 1.6]}
    )
    assert custom.kinds == (("new", 1.0), ("shrinking", 0.0))
    assert custom.contrast == (1.3, 1.6)
    with pytest.raises(ValueError, match="unknown"):
        LesionPaintSettings.from_config({"contrasts": [1, 2]})
    with pytest.raises(ValueError, match="kinds"):
        LesionPaintSettings(kinds=(("bigger", 1.0),))
    with pytest.raises(ValueError, match="contrast"):
        dataclasses.replace(LesionPaintSettings(), contrast=(2.0, 1.5))


def test_slice_profile_is_read_from_the_raw_followup_grid():
    # Raw: array axis 0 is the 4 mm slice axis, along scanner z; preprocessed: RAS 1 mm.
    raw = np.array(
        [[0.0, -0.7, 0.0, 0.0], [0.0, 0.0, 0.7, 0.0], [4.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
    )
    assert slice_profile_from_raw(raw, np.eye(4)) == (4.0, 2)
    permuted = np.eye(4)[:, [2, 0, 1, 3]]  # preprocessed axis 0 along z
    assert slice_profile_from_raw(raw, permuted) == (4.0, 0)


def test_step_writes_samples_and_cli_replays_them(bank, tmp_path):
    from mschange.cli import main

    affine = np.diag([-1.0, 1.0, 1.0, 1.0])  # LAS: lesions must be reoriented
    baseline, brain = phantom(bright_blob=True, seed=1)
    followup, _ = phantom(bright_blob=True, seed=2)
    paths = {}
    for name, data in (
        ("baseline", baseline),
        ("followup", followup),
        ("mask", brain.astype(np.uint8)),
    ):
        paths[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(data, affine), paths[name])
    raw = tmp_path / "raw_followup.nii.gz"
    raw_affine = np.diag([-0.7, 0.7, 3.0, 1.0])
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), raw_affine), raw)
    bank_npz = save_lesion_bank(bank, tmp_path / "bank.npz")
    out = tmp_path / "samples"
    outputs = {
        kind: [out / f"sub-01_sample-{i}_desc-{kind}.nii.gz" for i in range(2)]
        for kind in ("baseline", "followup", "label")
    }
    outputs["record"] = [out / f"sub-01_sample-{i}_desc-lesions.json" for i in range(2)]
    paint = dataclasses.replace(settings("new"), lesions_per_sample=(2, 2))
    paint_lesions_step(
        {"baseline": paths["baseline"], "followup": paths["followup"]},
        [paths["mask"]],
        bank_npz,
        outputs,
        subject="01",
        seed=3,
        settings=paint,
        raw_followup=raw,
    )
    record = json.loads(outputs["record"][1].read_text())
    assert record["slice_profile"] == {"thickness_mm": 3.0, "through_plane_axis": 2}
    assert record["lesion_bank"]["path"] == str(bank_npz)

    assert (
        main(["replay-lesions", str(outputs["record"][1]), "--out", str(tmp_path / "replay")]) == 0
    )
    for kind, desc in (
        ("baseline", "baseline_FLAIR"),
        ("followup", "followup_FLAIR"),
        ("label", "change_mask"),
    ):
        replayed = tmp_path / "replay" / f"sub-01_sample-1_desc-{desc}.nii.gz"
        assert np.array_equal(
            np.asarray(nib.load(replayed).dataobj), np.asarray(nib.load(outputs[kind][1]).dataobj)
        )

    save_lesion_bank(build_lesion_bank([tmp_path / "mask.nii.gz"]), bank_npz)  # rebuilt
    assert (
        main(["replay-lesions", str(outputs["record"][1]), "--out", str(tmp_path / "again")]) == 2
    )


@pytest.mark.realdata
@pytest.mark.skipif(not LESION_MASKS.is_dir(), reason=f"no lesion masks at {LESION_MASKS}")
def test_bank_from_real_lesion_masks():
    paths = sorted(LESION_MASKS.glob("cross_patient*_lesions.nii.gz"))[:2]
    real = build_lesion_bank(paths)
    summary = real.summary()
    assert set(summary["sources"]) == {p.name for p in paths}
    assert all(5 <= n <= 500 for n in summary["sources"].values())
    assert (real.volumes_mm3 >= 10.0).all() and (real.volumes_mm3 <= 20000.0).all()
    sums = np.array([real.fraction(i).sum() for i in range(len(real))])
    assert sums == pytest.approx(real.volumes_mm3, rel=0.02)
    assert (real.shapes >= 2).all() and (real.shapes <= 200).all()


def test_a_scan_whose_brain_is_mostly_zero_is_refused_with_a_reason():
    from mschange.synthesis.lesions import LesionPaintSettings, scan_statistics

    brain = np.zeros((20, 20, 20), dtype=bool)
    brain[2:18, 2:18, 2:18] = True
    image = np.zeros(brain.shape, dtype=np.float32)
    image[2:18, 2:18, 2:5] = 1.0  # brain mostly 0: the median is 0
    with pytest.raises(ValueError, match="median intensity is 0"):
        scan_statistics(image, brain, brain, LesionPaintSettings())
