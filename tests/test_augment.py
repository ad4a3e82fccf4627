"""On-the-fly MR-artefact augmentation of the detector's training patches."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch
from scipy import ndimage

from mschange.config import load_schema
from mschange.detection.augment import (
    AugmentationSettings,
    augment_patch,
    augmentation_settings,
    rigid_patch,
)
from mschange.detection.modelfile import load_detector
from mschange.detection.training import DetectorTrainingSettings, LoadedSample, PairSampler

SHAPE = (24, 24, 24)
ARTEFACTS = [
    "bias_field",
    "gamma",
    "slice_thickness",
    "anisotropy",
    "blur",
    "edge",
    "motion",
    "ghosting",
    "spike",
    "noise",
]
# Everything off but "enabled": each test switches on what it checks.
OFF = AugmentationSettings(
    enabled=True,
    flip_probability=0.0,
    rotation_probability=0.0,
    misalignment_probability=0.0,
    **{f"{name}_probability": 0.0 for name in ARTEFACTS},
)


def only(**changes: Any) -> AugmentationSettings:
    return dataclasses.replace(OFF, **changes)


def brain_patch(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A textured ball (background 0 outside) with an asymmetric bright L as the change."""
    rng = np.random.default_rng(seed)
    grid = np.indices(SHAPE) - (np.array(SHAPE)[:, None, None, None] - 1) / 2
    ball = (grid**2).sum(axis=0) < 10.5**2
    texture = ndimage.gaussian_filter(rng.uniform(0.3, 0.7, SHAPE), 1.0)
    baseline = np.where(ball, texture, 0.0).astype(np.float32)
    label = np.zeros(SHAPE, np.uint8)
    label[7:13, 8:11, 9:12] = 1  # the L: a bar along axis 0 ...
    label[7:10, 11:16, 9:12] = 1  # ... and a foot along axis 1
    followup = np.where(label > 0, 0.95, baseline).astype(np.float32)
    return baseline, followup, label


def centroid(image: np.ndarray) -> np.ndarray:
    weights = np.clip(image, 0.0, None)
    return np.array(
        [(np.indices(image.shape)[a] * weights).sum() / weights.sum() for a in range(3)]
    )


def test_disabled_returns_the_inputs():
    baseline, followup, label = brain_patch()
    out = augment_patch(baseline, followup, label, AugmentationSettings(), np.random.default_rng(0))
    assert all(o is i for o, i in zip(out, (baseline, followup, label), strict=True))
    # enabled with every probability 0 changes nothing either
    out = augment_patch(baseline, followup, label, OFF, np.random.default_rng(0))
    for o, i in zip(out, (baseline, followup, label), strict=True):
        np.testing.assert_array_equal(o, i)


@pytest.mark.parametrize("name", ARTEFACTS)
def test_each_artefact_alone_changes_the_image_and_keeps_background(name):
    baseline, followup, label = brain_patch()
    settings = only(**{f"{name}_probability": 1.0})
    out_base, out_follow, out_label = augment_patch(
        baseline, followup, label, settings, np.random.default_rng(1)
    )
    background = (baseline == 0) & (followup == 0)
    for before, after in ((baseline, out_base), (followup, out_follow)):
        assert after.shape == before.shape and after.dtype == np.float32
        assert np.isfinite(after).all() and after.min() >= 0.0 and after.max() <= 1.0
        assert np.abs(after - before)[~background].mean() > 1e-3
        assert (after[background] == 0).all()
    np.testing.assert_array_equal(out_label, label)
    # Per time point: drawn independently, so the two scans are altered differently.
    assert not np.allclose(out_base - baseline, out_follow - followup)


def test_flips_and_rotation_move_both_scans_and_the_label_together():
    baseline, followup, label = brain_patch()
    settings = only(flip_probability=1.0, rotation_probability=1.0, max_rotation_deg=10.0)
    same = augment_patch(followup, followup, label, settings, np.random.default_rng(3))
    np.testing.assert_array_equal(same[0], same[1])  # same spatial transform
    out_base, out_follow, out_label = augment_patch(
        baseline, followup, label, settings, np.random.default_rng(3)
    )
    assert out_label.dtype == np.uint8 and set(np.unique(out_label)) <= {0, 1}
    bright = out_follow > 0.8
    dice = 2 * (bright & (out_label > 0)).sum() / (bright.sum() + out_label.sum())
    assert dice > 0.85
    # the L really moved: all three axes flipped puts it far from where it was
    assert (out_label & label).sum() < 0.2 * label.sum()
    # the baseline got the same transform: the follow-up differs from it only at the label
    outside = ndimage.binary_dilation(out_label > 0, iterations=2) == 0
    np.testing.assert_allclose(out_follow[outside], out_base[outside], atol=1e-5)


def test_misalignment_moves_only_the_baseline_by_about_the_drawn_amount():
    _, followup, label = brain_patch()
    blob = np.zeros(SHAPE, np.float32)
    blob[9:14, 10:15, 8:13] = 1.0
    blob = ndimage.gaussian_filter(blob, 1.0)
    settings = only(
        misalignment_probability=1.0, misalignment_translation_mm=1.0, misalignment_rotation_deg=1.0
    )
    shifts = []
    for seed in range(5):
        out_base, out_follow, out_label = augment_patch(
            blob, followup, label, settings, np.random.default_rng(seed)
        )
        np.testing.assert_array_equal(out_follow, followup)
        np.testing.assert_array_equal(out_label, label)
        shifts.append(centroid(out_base) - centroid(blob))
    shifts_array = np.abs(np.array(shifts))
    # 1 mm per axis plus what 1 degree moves a blob ~2 voxels from the centre
    assert shifts_array.max() < 1.1 and shifts_array.max() > 0.2


def test_rigid_patch_translation_moves_the_centroid_by_it():
    blob = np.zeros(SHAPE, np.float32)
    blob[9:14, 10:15, 8:13] = 1.0
    moved = rigid_patch(blob, (0.0, 0.0, 0.0), (0.7, -0.4, 1.0))
    np.testing.assert_allclose(centroid(moved) - centroid(blob), [0.7, -0.4, 1.0], atol=0.05)
    nearest = rigid_patch(blob, (0.0, 0.0, 5.0), (1.0, 0.0, 0.0), order=0)
    assert set(np.unique(nearest)) <= {0.0, 1.0}


def every_effect() -> AugmentationSettings:
    return dataclasses.replace(
        AugmentationSettings(enabled=True), **{f"{name}_probability": 0.5 for name in ARTEFACTS}
    )


def test_same_seed_same_patch_other_seed_differs_and_torch_rng_is_untouched():
    baseline, followup, label = brain_patch()
    torch.manual_seed(123)
    first = augment_patch(baseline, followup, label, every_effect(), np.random.default_rng(7))
    after = torch.rand(3)
    torch.manual_seed(123)
    again = augment_patch(baseline, followup, label, every_effect(), np.random.default_rng(7))
    assert torch.equal(torch.rand(3), after)  # the global torch RNG did not move
    other = augment_patch(baseline, followup, label, every_effect(), np.random.default_rng(8))
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])
    for out in (first, other):
        assert set(np.unique(out[2])) <= {0, 1} and out[2].dtype == np.uint8


def test_settings_from_config_and_schema_defaults_agree():
    assert augmentation_settings(None) == AugmentationSettings()
    settings = augmentation_settings(
        {"enabled": True, "noise_std": [0.01, 0.02], "ghosting_count": [2, 3]}
    )
    assert settings.enabled and settings.noise_std == (0.01, 0.02)
    assert settings.ghosting_count == (2, 3)
    assert augmentation_settings(settings.as_dict()) == settings
    with pytest.raises(ValueError, match="unknown"):
        augmentation_settings({"blurr_probability": 0.1})
    with pytest.raises(ValueError, match="blur_probability"):
        augmentation_settings({"blur_probability": 1.5})
    schema = load_schema("config")["properties"]["detector"]["properties"]["training"]
    properties = schema["properties"]["augmentation"]["properties"]
    assert {
        key: value["default"] for key, value in properties.items()
    } == AugmentationSettings().as_dict()


def sampler(seed: int, enabled: bool) -> PairSampler:
    samples = []
    for k in range(2):
        baseline, followup, label = brain_patch(seed=k)
        samples.append(
            LoadedSample(
                baseline=baseline.astype(np.float16),
                followup=followup.astype(np.float16),
                label=label,
                changed=np.argwhere(label).astype(np.int32),
            )
        )
    settings = DetectorTrainingSettings(
        patch_size=(16, 16, 16),
        batch_size=2,
        augmentation=dataclasses.replace(every_effect(), enabled=enabled),
    )
    return PairSampler(samples, settings, np.random.default_rng(seed))


def test_sampler_with_augmentation_batches_and_reproducibility():
    first, again, plain = sampler(4, True), sampler(4, True), sampler(4, False)
    for _ in range(2):
        batch, batch_again, batch_plain = first.batch(), again.batch(), plain.batch()
        for tensor in batch:
            assert tensor.shape == (2, 1, 16, 16, 16) and tensor.dtype == torch.float32
        for a, b in zip(batch, batch_again, strict=True):
            assert torch.equal(a, b)
        assert set(torch.unique(batch[2]).tolist()) <= {0.0, 1.0}
        assert not torch.equal(batch[0], batch_plain[0])


def test_interrupted_augmented_training_resumes_to_the_same_weights(tmp_path):
    # The augmentation draws from the sampler's checkpointed generator, so a resumed run
    # sees the same augmented patches as an uninterrupted one.
    from .test_detection import RESUME_SETTINGS, Killed, _samples
    from .test_training_loop import _run_detector

    settings = dataclasses.replace(RESUME_SETTINGS, iterations=2, augmentation=every_effect())
    samples = _samples(tmp_path)

    def train(name, on_step=None):
        return _run_detector(tmp_path / name, samples, settings, on_step)

    def kill_at_step_3(step, loss):
        if step == 3:
            raise Killed

    train("straight")
    with pytest.raises(Killed):
        train("resumed", on_step=kill_at_step_3)
    resumed = train("resumed")
    assert resumed["resumed_from_step"] == 2
    assert resumed["settings"]["augmentation"]["enabled"] is True
    first, _ = load_detector(tmp_path / "straight" / "model.pt")
    again, _ = load_detector(tmp_path / "resumed" / "model.pt")
    for key, value in first.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key


def test_gallery_shows_each_effect_alone_and_leaves_the_input_alone(tmp_path):
    from mschange.detection.augment import (
        GALLERY_EFFECTS,
        gallery_patches,
        plot_augmentation_gallery,
    )

    rng = np.random.default_rng(2)
    brain = np.zeros((32, 32, 16), dtype=bool)
    brain[4:28, 4:28, 2:14] = True
    followup = np.where(brain, 0.5 + 0.05 * rng.standard_normal(brain.shape), 0.0)
    followup = followup.astype(np.float32)
    untouched = followup.copy()
    names = plot_augmentation_gallery(
        followup, followup, AugmentationSettings(), tmp_path / "gallery.png", seed=3
    )
    assert names == ["original", *GALLERY_EFFECTS]
    assert np.array_equal(followup, untouched)
    patches = gallery_patches(followup, followup, AugmentationSettings(), seed=3)
    assert np.array_equal(patches["original"], followup)
    for name in GALLERY_EFFECTS:
        if "misalignment" in name:  # |BL - FU| of two copies: zero only without a shift
            assert patches[name].max() > 0.05
        else:
            assert not np.allclose(patches[name], followup, atol=1e-4), name
    assert (tmp_path / "gallery.png").stat().st_size > 10_000
