"""Shared fixtures: tiny synthetic volumes and the location of the real data."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mschange.torchrun import flush_denormals

# Before any test runs torch: worker threads created later inherit the setting, so
# HD-BET in a test that follows other torch tests runs at its normal speed.
flush_denormals()
# ANTs with one thread, whichever test uses it first: ITK reads the count once per
# process, and more threads make two registrations differ (tests compare two runs).
os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
OPEN_MS_DATA = Path(
    os.environ.get("MSCHANGE_OPEN_MS_DATA", REPO.parent / "shared" / "data" / "open_ms_data")
)

requires_open_ms_data = pytest.mark.skipif(
    not (OPEN_MS_DATA / "longitudinal").is_dir(), reason=f"real data not found at {OPEN_MS_DATA}"
)


def default_preprocessing(resolution_mm: float = 1.0) -> dict:
    """The preprocessing section a model file stores: the schema's defaults, complete
    (a model file must say exactly how its training data was prepared)."""
    from mschange.config import section_defaults

    return section_defaults("preprocessing", resolution_mm=resolution_mm)


def oblique_affine(
    spacing: tuple[float, float, float],
    angle_deg: float = 10.0,
    origin: tuple[float, float, float] = (-30.0, 20.0, -15.0),
) -> np.ndarray:
    """An LPS-stored (like scanner DICOM conversions), slightly rotated affine."""
    theta = np.deg2rad(angle_deg)
    rotation = np.array(
        [[np.cos(theta), -np.sin(theta), 0.0], [np.sin(theta), np.cos(theta), 0.0], [0.0, 0.0, 1.0]]
    )
    flips = np.diag([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ flips @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def ellipsoid_phantom(
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    radii_mm: tuple[float, float, float] = (25.0, 30.0, 20.0),
    centre_shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> tuple[np.ndarray, np.ndarray]:
    """A bright ellipsoid 'brain' with a darker core, and its mask, in voxel space."""
    grid = np.indices(shape, dtype=np.float64)
    centre = (np.array(shape) - 1) / 2.0
    coords = [(grid[a] - centre[a]) * spacing[a] - centre_shift_mm[a] for a in range(3)]
    radius = np.sqrt(sum((c / r) ** 2 for c, r in zip(coords, radii_mm, strict=True)))
    mask = radius <= 1.0
    image = np.where(mask, 100.0 + 60.0 * (radius > 0.5) + 10.0 * np.sin(coords[0] / 4.0), 0.0)
    return image.astype(np.float32), mask


@pytest.fixture
def phantom_file(tmp_path: Path) -> Path:
    spacing = (0.8, 0.8, 2.5)
    # 83 x 90 x 90 mm: a brain-sized field of view (the input checks refuse < 80 mm).
    image, _ = ellipsoid_phantom((104, 112, 36), spacing)
    path = tmp_path / "phantom.nii.gz"
    nib.save(nib.Nifti1Image(image, oblique_affine(spacing)), path)
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A real local run of the whole workflow on a tiny demo cohort (2 pairs, 1 single
    scan, 2 mm), shared by the workflow tests and the SLURM test (which compares)."""
    from .workflow_runs import TINY, snakemake, write_config

    workdir = tmp_path_factory.mktemp("tiny")
    config = write_config(workdir / "config.yaml", **TINY)
    result = snakemake(workdir, "--cores", "2", configfile=config)
    assert result.returncode == 0, result.stderr[-5000:]
    return workdir, config
