"""Each preprocessing step on small synthetic volumes."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from mschange.imagespace import voxel_centres_mm
from mschange.io import voxel_sizes
from mschange.preprocessing.bias import n4_correct
from mschange.preprocessing.normalize import normalize_percentiles
from mschange.preprocessing.register import linear_transform_matrix, register_rigid
from mschange.preprocessing.resample import isotropic_grid, resample_isotropic
from mschange.preprocessing.steps import n4_step, normalize_step, resample_step

from .conftest import ellipsoid_phantom, oblique_affine


def centre_of_mass_mm(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    com = np.array(ndimage.center_of_mass(data))
    return affine[:3, :3] @ com + affine[:3, 3]


def test_isotropic_grid_covers_the_same_field_of_view():
    affine = oblique_affine((0.8, 0.8, 2.5))
    shape, new_affine = isotropic_grid((80, 90, 30), affine, 1.0)
    assert shape == (64, 72, 75)
    np.testing.assert_allclose(voxel_sizes(new_affine), [1.0, 1.0, 1.0])
    # Same axis directions, same outer corner of the first voxel.
    np.testing.assert_allclose(
        new_affine[:3, :3] / 1.0, affine[:3, :3] / [0.8, 0.8, 2.5], atol=1e-12
    )
    old_corner = affine[:3, :3] @ [-0.5, -0.5, -0.5] + affine[:3, 3]
    new_corner = new_affine[:3, :3] @ [-0.5, -0.5, -0.5] + new_affine[:3, 3]
    np.testing.assert_allclose(new_corner, old_corner, atol=1e-9)


def test_resample_keeps_objects_in_place_in_scanner_space(phantom_file):
    image = nib.load(phantom_file)
    resampled = resample_isotropic(image, 1.0)
    before = centre_of_mass_mm(np.asarray(image.dataobj), image.affine)
    after = centre_of_mass_mm(resampled.get_fdata(), resampled.affine)
    np.testing.assert_allclose(after, before, atol=0.3)
    # Mean brain intensity survives (no scaling), and the volume of the object too.
    inside = resampled.get_fdata() > 50
    volume_before = (np.asarray(image.dataobj) > 50).sum() * np.prod(voxel_sizes(image.affine))
    assert inside.sum() == pytest.approx(volume_before, rel=0.05)


def test_resample_cubic_stays_in_input_range(phantom_file):
    image = nib.load(phantom_file)
    data = np.asarray(image.dataobj)
    resampled = resample_isotropic(image, 1.0, order=3).get_fdata()
    assert resampled.min() >= data.min() and resampled.max() <= data.max()


def test_resample_step_writes_float_image_with_header_fields(tmp_path, phantom_file):
    image = nib.load(phantom_file)
    image.header["descrip"] = b"scanner X"
    nib.save(image, phantom_file)
    output = tmp_path / "out" / "resampled.nii.gz"
    resample_step(phantom_file, output, subject="p1", resolution_mm=1.5)
    written = nib.load(output)
    np.testing.assert_allclose(written.header.get_zooms(), (1.5, 1.5, 1.5), atol=1e-6)
    assert written.header["descrip"].tobytes().startswith(b"scanner X")
    assert written.get_data_dtype() == np.float32
    np.testing.assert_allclose(written.affine, written.header.get_sform(), atol=1e-6)
    assert not list(output.parent.glob(".*tmp*")), "temporary file left behind"


def test_normalize_maps_percentiles_to_unit_range():
    rng = np.random.default_rng(3)
    data = rng.normal(300.0, 50.0, (20, 20, 20)).astype(np.float32)
    mask = np.zeros(data.shape, bool)
    mask[2:18, 2:18, 2:18] = True
    data[~mask] = 5000.0  # outside the brain: must not influence the scaling
    normalized, (low, high) = normalize_percentiles(data, mask)
    assert low == pytest.approx(data[mask].min())
    assert high == pytest.approx(np.percentile(data[mask], 99))
    assert normalized.min() == 0.0 and normalized.max() == 1.0
    assert np.all(normalized[~mask] == 0.0)
    # 1 % of the brain is above the 99th percentile, and clipped to 1.
    assert np.mean(normalized[mask] == 1.0) == pytest.approx(0.01, abs=0.002)


def test_normalize_refuses_empty_mask():
    with pytest.raises(ValueError, match="empty"):
        normalize_percentiles(np.ones((4, 4, 4)), np.zeros((4, 4, 4)))


def test_n4_removes_a_smooth_bias_field():
    spacing = (2.0, 2.0, 2.0)
    image, mask = ellipsoid_phantom((48, 48, 40), spacing, radii_mm=(40, 40, 32))
    affine = oblique_affine(spacing)
    x = np.linspace(-1, 1, image.shape[0])[:, None, None]
    bias = (1.0 + 0.3 * x) * np.ones(image.shape)
    biased = image * bias
    corrected, field = n4_correct(biased, affine, mask, shrink_factor=2)
    core = mask & (image > 150)  # the homogeneous outer shell of the phantom
    spread_before = biased[core].std() / biased[core].mean()
    spread_after = corrected[core].std() / corrected[core].mean()
    assert spread_after < 0.5 * spread_before
    # The estimated field rises along x like the true one.
    assert np.corrcoef(field[mask], bias[mask])[0, 1] > 0.9
    assert np.all(corrected[~mask] == 0)


def test_n4_and_normalize_steps_keep_affine_and_header(tmp_path):
    spacing = (2.0, 2.0, 2.0)
    image, mask = ellipsoid_phantom((40, 40, 32), spacing)
    affine = oblique_affine(spacing)
    header = nib.Nifti1Header()
    header["descrip"] = b"kept"
    nib.save(nib.Nifti1Image(image, affine, header), tmp_path / "brain.nii.gz")
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), tmp_path / "mask.nii.gz")
    n4_step(
        tmp_path / "brain.nii.gz",
        tmp_path / "mask.nii.gz",
        tmp_path / "n4.nii.gz",
        subject="p",
        shrink_factor=2,
    )
    normalize_step(
        tmp_path / "n4.nii.gz", tmp_path / "mask.nii.gz", tmp_path / "norm.nii.gz", subject="p"
    )
    for name in ("n4", "norm"):
        written = nib.load(tmp_path / f"{name}.nii.gz")
        np.testing.assert_allclose(written.affine, affine, atol=1e-5)
        assert written.shape == image.shape
        assert written.header["descrip"].tobytes().startswith(b"kept")
    normalized = nib.load(tmp_path / "norm.nii.gz").get_fdata()
    assert normalized.max() == pytest.approx(1.0) and normalized.min() == 0.0
    assert (normalized[mask] > 0).mean() > 0.95


def rotation_about(axis: int, degrees: float) -> np.ndarray:
    theta = np.deg2rad(degrees)
    c, s = np.cos(theta), np.sin(theta)
    other = [a for a in range(3) if a != axis]
    matrix = np.eye(3)
    matrix[other[0], other[0]] = c
    matrix[other[0], other[1]] = -s
    matrix[other[1], other[0]] = s
    matrix[other[1], other[1]] = c
    return matrix


def test_rigid_registration_recovers_a_known_motion(tmp_path):
    spacing = (2.0, 2.0, 2.0)
    shape = (48, 52, 44)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -(np.array(shape) - 1) / 2 * spacing
    # An asymmetric object, so that rotations are identifiable.
    fixed, _ = ellipsoid_phantom(shape, spacing, radii_mm=(30, 36, 24))
    blob = np.zeros(shape, np.float32)
    blob[30:36, 14:22, 24:30] = 250.0
    fixed = fixed + blob
    # Baseline = the same head, rotated 6 degrees and shifted 5 mm (in scanner space).
    rotation = rotation_about(2, 6.0)
    translation = np.array([5.0, -3.0, 2.0])
    motion = np.eye(4)
    motion[:3, :3] = rotation
    motion[:3, 3] = translation
    # A baseline voxel v shows the scene at motion^-1 @ affine @ v in follow-up space.
    mapping = np.linalg.solve(affine, np.linalg.inv(motion) @ affine)
    moving = ndimage.affine_transform(fixed, mapping[:3, :3], offset=mapping[:3, 3], order=1)
    moving_mask = moving > 50
    result = register_rigid(
        fixed, affine, moving, affine, moving_mask, tmp_path / "xfm.mat", seed=3, threads=1
    )
    # The saved transform maps follow-up points to baseline points: that is `motion`.
    estimated_lps = linear_transform_matrix(result.transform_file)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    estimated_ras = flip @ estimated_lps @ flip
    brain = fixed > 50
    points = voxel_centres_mm(shape, affine)[brain.ravel()]
    true_points = points @ motion[:3, :3].T + motion[:3, 3]
    est_points = points @ estimated_ras[:3, :3].T + estimated_ras[:3, 3]
    error = np.linalg.norm(true_points - est_points, axis=1).mean()
    assert error < 1.0, f"mean error {error:.2f} mm"
    # The moved baseline lands on the follow-up.
    assert np.corrcoef(result.moved_image[brain], fixed[brain])[0, 1] > 0.9
    assert result.moved_mask.shape == shape
    assert (result.moved_mask & brain).sum() / brain.sum() > 0.9


@pytest.mark.parametrize(("seed", "sampling_points"), [(3, 225000), (0, 5000)])
def test_single_threaded_registration_reproduces_its_result_exactly(
    tmp_path, seed, sampling_points
):
    """As a workflow job runs it (a fresh process, `threads: 1`, the default), two
    registrations of the same pair write the very same transform and image, so a cluster
    run and a local run of a cohort agree voxel for voxel. (ITK reads its thread count
    once per process, so each run gets its own process, as each job does.) With sparse
    metric sampling too, and with seed 0, which ANTs would read as "seed from the clock"."""
    spacing = (2.0, 2.0, 2.0)
    shape = (48, 52, 44)
    affine = oblique_affine(spacing)
    fixed, _ = ellipsoid_phantom(shape, spacing, radii_mm=(30, 36, 24))
    moving, moving_mask = ellipsoid_phantom(
        shape, spacing, radii_mm=(30, 36, 24), centre_shift_mm=(4.0, -3.0, 2.0)
    )
    for name, data in (
        ("fixed", fixed),
        ("moving", moving),
        ("moving_mask", moving_mask.astype(np.uint8)),
    ):
        nib.save(nib.Nifti1Image(data, affine), tmp_path / f"{name}.nii.gz")
    outputs = []
    for run in ("a", "b"):
        code = (
            "from mschange.preprocessing.steps import register_step\n"
            f"register_step(followup_brain='{tmp_path}/fixed.nii.gz', "
            f"baseline_brain='{tmp_path}/moving.nii.gz', "
            f"baseline_mask='{tmp_path}/moving_mask.nii.gz', "
            f"transform_output='{tmp_path}/{run}.mat', "
            f"moved_brain_output='{tmp_path}/{run}_moved.nii.gz', "
            f"moved_mask_output='{tmp_path}/{run}_mask.nii.gz', "
            f"subject='p1', seed={seed}, sampling_points={sampling_points}, threads=1)\n"
        )
        subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
        outputs.append(
            (
                (tmp_path / f"{run}.mat").read_bytes(),
                np.asarray(nib.load(tmp_path / f"{run}_moved.nii.gz").dataobj),
            )
        )
    assert outputs[0][0] == outputs[1][0]
    np.testing.assert_array_equal(outputs[0][1], outputs[1][1])


def _write(path, data, affine):
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), affine), path)
    return path


def test_a_failed_registration_names_the_pair_and_writes_nothing(tmp_path, monkeypatch):
    from mschange.preprocessing import steps
    from mschange.preprocessing.steps import RegistrationError, register_step

    spacing = (2.0, 2.0, 2.0)
    shape = (48, 52, 44)
    affine = np.diag([*spacing, 1.0])
    head, _ = ellipsoid_phantom(shape, spacing, radii_mm=(30, 36, 24))
    # The "baseline" is a small object that cannot cover the follow-up's brain.
    small, small_mask = ellipsoid_phantom(shape, spacing, radii_mm=(8, 8, 8))
    files = {
        "followup_brain": _write(tmp_path / "fu.nii.gz", head, affine),
        "baseline_brain": _write(tmp_path / "bl.nii.gz", small, affine),
        "baseline_mask": _write(tmp_path / "bl_mask.nii.gz", small_mask, affine),
    }
    outputs = {
        "transform_output": tmp_path / "xfm.mat",
        "moved_brain_output": tmp_path / "moved.nii.gz",
        "moved_mask_output": tmp_path / "moved_mask.nii.gz",
    }
    with pytest.raises(RegistrationError, match=r"subject 'p3'.*Dice of only 0\.\d\d"):
        register_step(**files, **outputs, subject="p3", threads=1)
    assert not outputs["moved_brain_output"].exists()
    assert not outputs["moved_mask_output"].exists()

    def ants_fails(*args, **kwargs):
        raise RuntimeError("Exception caught in ITK: metric has no valid points")

    monkeypatch.setattr(steps, "register_rigid", ants_fails)
    with pytest.raises(
        RegistrationError,
        match=r"subject 'p3'.*bl\.nii\.gz.*failed.*valid "
        r"points",
    ):
        register_step(**files, **outputs, subject="p3", threads=1)
