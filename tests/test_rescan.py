"""Simulated rescans: grid, reproducibility, and each acquisition effect on its own."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pytest
from scipy import ndimage

from mschange.artefacts import add_rician_noise_inplace, draw_rigid_motion
from mschange.synthesis.rescan import (
    RescanSettings,
    apply_gamma,
    apply_motion,
    apply_rician_noise,
    draw_choices,
    replay_rescan,
    rigid_mm_transform,
    simulate_rescan,
    through_plane_axis,
)

from .conftest import ellipsoid_phantom, oblique_affine

SHAPE = (24, 28, 20)
SPACING = (1.0, 1.1, 2.5)  # anisotropic: axis 2 is through-plane
AFFINE = oblique_affine(SPACING)
OFF = RescanSettings(
    max_rotation_deg=0.0,
    max_translation_mm=0.0,
    slice_thickness_factor=(1.0, 1.0),
    bias_field_strength=0.0,
    noise_fraction=(0.0, 0.0),
    gamma=(1.0, 1.0),
)


def only(**changes: Any) -> RescanSettings:
    """Settings with every effect off except the named ones."""
    return dataclasses.replace(OFF, **changes)


def phantom(smooth_mm: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The ellipsoid phantom with a little partial-volume blur, and its mask."""
    image, mask = ellipsoid_phantom(SHAPE, SPACING, radii_mm=(10.0, 12.0, 20.0))
    if smooth_mm > 0:
        image = ndimage.gaussian_filter(image, smooth_mm / np.array(SPACING))
    return image.astype(np.float32), mask


def centroid_mm(image: np.ndarray, affine: np.ndarray) -> np.ndarray:
    weights = np.clip(image, 0.0, None)
    voxel = np.array(
        [(np.indices(image.shape)[a] * weights).sum() / weights.sum() for a in range(3)]
    )
    return affine[:3, :3] @ voxel + affine[:3, 3]


def bright_cube() -> np.ndarray:
    image = np.zeros(SHAPE, np.float32)
    image[7:12, 15:20, 6:9] = 100.0  # off-centre, so rotations move it too
    return image


def moved(image: np.ndarray, record: dict, affine: np.ndarray = AFFINE) -> np.ndarray:
    motion = record["motion"]
    return apply_motion(
        image.astype(np.float64),
        affine,
        tuple(motion["rotation_deg"]),
        tuple(motion["translation_mm"]),
        np.array(motion["centre_mm"]),
    )


@pytest.mark.parametrize("seed", range(5))
def test_rescan_keeps_grid_differs_and_stays_correlated(seed):
    image, mask = phantom()
    rescan, record = simulate_rescan(image, AFFINE, RescanSettings(), seed)
    assert rescan.shape == image.shape and rescan.dtype == np.float32
    assert np.isfinite(rescan).all()
    assert np.abs(rescan - image)[mask].mean() > 5.0  # intensities are ~100-170
    # Once the recorded head motion is undone (what registration does), the remaining
    # acquisition effects keep the scan strongly correlated with the input.
    reference = moved(image, record)
    inside = moved(mask.astype(np.float64), record) > 0.5
    assert np.corrcoef(rescan[inside], reference[inside])[0, 1] > 0.8


def test_record_is_json_and_replay_is_identical():
    image, _ = phantom()
    rescan, record = simulate_rescan(image, AFFINE, RescanSettings(), seed=11)
    stored = json.loads(json.dumps(record))
    assert stored["version"] == 1 and stored["seed"] == 11
    assert stored["settings"]["slice_thickness_factor"] == [1.0, 2.0]
    assert np.array_equal(replay_rescan(image, AFFINE, stored), rescan)


def test_replay_rejects_another_scan():
    image, _ = phantom()
    _, record = simulate_rescan(image, AFFINE, RescanSettings(), seed=2)
    with pytest.raises(ValueError, match="does not match"):
        replay_rescan(2.0 * image, AFFINE, record)


def test_same_seed_same_rescan_other_seed_differs():
    image, _ = phantom()
    first, record = simulate_rescan(image, AFFINE, RescanSettings(), seed=5)
    again, record_again = simulate_rescan(image, AFFINE, RescanSettings(), seed=5)
    other, record_other = simulate_rescan(image, AFFINE, RescanSettings(), seed=6)
    assert np.array_equal(first, again) and record == record_again
    assert not np.array_equal(first, other) and record != record_other


def test_all_effects_off_is_identity():
    # Random positive voxels up to the border, like a raw scan with the head filling it.
    image = np.random.default_rng(0).uniform(10.0, 500.0, SHAPE).astype(np.float32)
    rescan, record = simulate_rescan(image, AFFINE, OFF, seed=3)
    np.testing.assert_allclose(rescan, image, rtol=0.0, atol=1e-5 * float(image.max()))
    assert record["noise"]["sigma"] == 0.0 and record["slice_thickness"]["factor"] == 1.0


def test_translation_moves_the_head_by_the_recorded_shift():
    image = bright_cube()
    rescan, record = simulate_rescan(image, AFFINE, only(max_translation_mm=3.0), seed=4)
    translation = np.array(record["motion"]["translation_mm"])
    assert np.linalg.norm(translation) > 1.5  # a shift a sign error would double
    shift = centroid_mm(rescan, AFFINE) - centroid_mm(image, AFFINE)
    np.testing.assert_allclose(shift, translation, atol=0.3)


def test_rotation_and_translation_follow_the_recorded_transform():
    image = bright_cube()
    settings = only(max_rotation_deg=3.0, max_translation_mm=3.0)
    rescan, record = simulate_rescan(image, AFFINE, settings, seed=8)
    motion = record["motion"]
    transform = rigid_mm_transform(
        tuple(motion["rotation_deg"]),
        tuple(motion["translation_mm"]),
        np.array(motion["centre_mm"]),
    )
    expected = transform @ np.append(centroid_mm(image, AFFINE), 1.0)
    np.testing.assert_allclose(centroid_mm(rescan, AFFINE), expected[:3], atol=0.3)
    centre_voxel = (np.array(SHAPE) - 1) / 2.0
    np.testing.assert_allclose(motion["centre_mm"], AFFINE[:3, :3] @ centre_voxel + AFFINE[:3, 3])


def mean_second_difference(image: np.ndarray, axis: int) -> float:
    return float(np.abs(np.diff(image, n=2, axis=axis)).mean())


def test_thicker_slices_blur_only_the_through_plane_axis():
    # In-plane texture times a blocky through-plane profile: blurring along axis 2 must
    # soften the profile's steps and leave the in-plane texture's detail alone.
    rng = np.random.default_rng(0)
    in_plane = rng.uniform(50.0, 150.0, SHAPE[:2])
    profile = 1.0 + 0.5 * (np.arange(SHAPE[2]) // 2 % 2)
    image = (in_plane[:, :, None] * profile[None, None, :]).astype(np.float32)
    rescan, record = simulate_rescan(image, AFFINE, only(slice_thickness_factor=(2.0, 2.0)), seed=0)
    assert record["slice_thickness"] == {"axis": 2, "factor": 2.0}
    ratios = [
        mean_second_difference(rescan, a) / mean_second_difference(image, a) for a in range(3)
    ]
    assert ratios[2] < 0.7
    assert 0.9 < ratios[0] < 1.1 and 0.9 < ratios[1] < 1.1


def test_through_plane_axis_ties_go_to_scanner_z():
    # Isotropic voxels, array axis 0 along scanner z (a sagittal-like storage order).
    permuted = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], float)
    assert through_plane_axis(permuted) == 0
    # A thicker axis wins over the one along scanner z.
    thick_x = permuted @ np.diag([1.0, 1.0, 3.0, 1.0])
    assert through_plane_axis(thick_x) == 2
    assert through_plane_axis(AFFINE) == 2


def test_rician_noise_has_the_recorded_sigma():
    image, mask = phantom()
    rescan, record = simulate_rescan(image, AFFINE, only(noise_fraction=(0.03, 0.03)), seed=1)
    sigma = record["noise"]["sigma"]
    assert sigma == pytest.approx(0.03 * np.percentile(image, 99.0))
    difference = rescan.astype(np.float64) - image
    # Background is 0: the noise magnitude there is Rayleigh distributed.
    background = ndimage.binary_dilation(mask, iterations=2) == 0
    rayleigh_std = sigma * np.sqrt(2.0 - np.pi / 2.0)
    assert np.std(difference[background]) == pytest.approx(rayleigh_std, rel=0.3)
    assert np.mean(difference[background]) == pytest.approx(sigma * np.sqrt(np.pi / 2.0), rel=0.3)
    # In bright tissue (SNR ~30) Rician noise is close to Gaussian with that sigma.
    bright = ndimage.binary_erosion(mask, iterations=2) & (image > 50.0)
    assert np.std(difference[bright]) == pytest.approx(sigma, rel=0.3)


def test_bias_field_stays_within_its_strength():
    image = np.full(SHAPE, 100.0, np.float32)
    rescan, record = simulate_rescan(image, AFFINE, only(bias_field_strength=0.15), seed=9)
    assert sum(abs(c) for c in record["bias_field"]["coefficients"]) == pytest.approx(0.15)
    log_field = np.log(rescan / 100.0)
    assert np.abs(log_field).max() <= 0.15 + 1e-5
    assert log_field.max() - log_field.min() > 0.05  # it does vary across the head


def test_gamma_changes_contrast_around_the_recorded_scale():
    image, mask = phantom()
    rescan, record = simulate_rescan(image, AFFINE, only(gamma=(0.9, 0.9)), seed=0)
    scale = record["contrast"]["intensity_scale"]
    assert scale == pytest.approx(np.percentile(image[image > 0], 99.5))
    expected = scale * (np.clip(image, 0, None) / scale) ** 0.9
    np.testing.assert_allclose(rescan, expected, rtol=1e-5, atol=1e-4)
    assert (rescan[mask] > image[mask]).mean() > 0.9  # gamma < 1 brightens below the scale


def test_shared_effects_in_place_and_copy_agree():
    # The demo applies the rescan's effects in place on float32 views (mschange.artefacts).
    rng = np.random.default_rng(0)
    image = rng.uniform(-5.0, 400.0, SHAPE)
    copy = apply_gamma(image, 0.87, 300.0)
    in_place = image.copy()
    assert apply_gamma(in_place, 0.87, 300.0, out=in_place) is in_place
    assert np.array_equal(copy, in_place) and copy.min() == 0.0
    single = image.astype(np.float32)
    view = single[2:-2, ::2]
    apply_gamma(view, 0.87, 300.0, out=view)
    np.testing.assert_allclose(view, copy[2:-2, ::2], rtol=1e-5)
    assert np.array_equal(single[:2], image[:2].astype(np.float32))  # only the view changed
    # Float32 Rician noise in place: the magnitude statistics of the float64 form.
    zeros = np.zeros((40, 40, 40), np.float32)
    add_rician_noise_inplace(zeros, 2.0, np.random.default_rng(1))
    assert zeros.dtype == np.float32
    assert zeros.mean() == pytest.approx(2.0 * np.sqrt(np.pi / 2.0), rel=0.02)
    assert apply_rician_noise(np.zeros((40, 40, 40)), 2.0, 1).mean() == pytest.approx(
        float(zeros.mean()), rel=0.02
    )


def test_motion_draws_are_the_demos():
    # The rescan's motion draws are draw_rigid_motion's, which the demo's time points use.
    settings = RescanSettings(max_rotation_deg=2.5, max_translation_mm=3.0)
    choices = draw_choices(settings, 4)
    expected = draw_rigid_motion(np.random.default_rng(4), 2.5, 3.0)
    assert choices.rotation_deg == expected["rotation_deg"]
    assert choices.translation_mm == expected["translation_mm"]
    rng = np.random.default_rng(4)  # the same values as numpy's vectorised uniform draws
    assert list(expected["rotation_deg"]) == rng.uniform(-2.5, 2.5, size=3).tolist()
    assert list(expected["translation_mm"]) == rng.uniform(-3.0, 3.0, size=3).tolist()


def test_settings_are_validated():
    with pytest.raises(ValueError, match="slice_thickness_factor"):
        RescanSettings(slice_thickness_factor=(0.5, 1.0))
    with pytest.raises(ValueError, match="noise_fraction"):
        RescanSettings(noise_fraction=(0.03, 0.01))
    with pytest.raises(ValueError, match="max_rotation_deg"):
        RescanSettings(max_rotation_deg=-1.0)
