"""Simulated rescans: a no-change training pair from a single FLAIR scan.

Lesion-change detection needs "no-change" pairs: two scans of the same head in which
no lesion changed. Many users only have single scans, so the second scan is simulated
by changing only what a repeated acquisition changes: head position (rigid motion),
slice thickness, the receive-coil bias field, contrast (a gamma curve) and Rician
noise. This runs on the *raw* scan (skull on, any voxel size and orientation) before
preprocessing, so that registration, N4 bias correction and intensity normalisation
see realistic differences between the two scans. The output keeps the input grid
exactly (same shape, same affine).

Direction convention of the motion: the record's rigid transform maps input-scan
millimetres to rescan millimetres, ``y = R (x - c) + c + t``, with ``c`` the scanner
position of the volume's centre voxel, ``t`` the translation and
``R = Rz @ Ry @ Rx`` built from the three recorded angles (degrees, about the scanner
x, y and z axes). In words: between the two scans the head moved by this transform,
so a feature at ``x`` in the input appears at ``y`` in the rescan.

Every random choice is drawn from ``np.random.default_rng(seed)`` and written to a
JSON-serialisable record; :func:`replay_rescan` rebuilds identical voxels from the
record alone (the noise is regenerated from a recorded noise seed, not stored).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

# The effects themselves live in mschange.artefacts, shared with the detector's
# training augmentation; they are re-exported here for the rescan's users.
from mschange.artefacts import (
    BIAS_EXPONENTS,
    F64,
    apply_gamma,
    apply_motion,
    apply_rician_noise,
    apply_slice_thickness,
    bias_field,
    centre_mm,
    draw_bias_coefficients,
    draw_rigid_motion,
    rigid_mm_transform,
    rotation_matrix,
    thick_slice_operator,
    uniform,
)

__all__ = [
    "BIAS_EXPONENTS",
    "RescanChoices",
    "RescanSettings",
    "apply_gamma",
    "apply_motion",
    "apply_rician_noise",
    "apply_slice_thickness",
    "bias_field",
    "centre_mm",
    "choices_from_record",
    "draw_choices",
    "intensity_scale",
    "noise_sigma",
    "replay_rescan",
    "rigid_mm_transform",
    "rotation_matrix",
    "simulate_rescan",
    "thick_slice_operator",
    "through_plane_axis",
]

RECORD_VERSION = 1
GAMMA_PERCENTILE = 99.5  # of the nonzero voxels: the intensity mapped to 1 for gamma
NOISE_PERCENTILE = 99.0  # of all voxels: the intensity the noise fraction refers to
MAX_NOISE_SEED = 2**32  # noise seeds stay well inside JSON's exact integer range


@dataclass(frozen=True)
class RescanSettings:
    max_rotation_deg: float = 3.0  # each of the 3 rotation angles ~ U(-max, max)
    max_translation_mm: float = 3.0  # each translation component ~ U(-max, max)
    slice_thickness_factor: tuple[float, float] = (1.0, 2.0)  # factor ~ U(lo, hi)
    bias_field_strength: float = 0.15  # max |log multiplicative field| roughly
    noise_fraction: tuple[float, float] = (0.005, 0.03)  # Rician sigma / 99th percentile, ~U
    gamma: tuple[float, float] = (0.9, 1.1)  # contrast change exponent ~ U

    def __post_init__(self) -> None:
        for name in ("max_rotation_deg", "max_translation_mm", "bias_field_strength"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name, minimum in (
            ("slice_thickness_factor", 1.0),
            ("noise_fraction", 0.0),
            ("gamma", 0.0),
        ):
            low, high = getattr(self, name)
            if not minimum <= low <= high:
                raise ValueError(
                    f"{name} must be [low, high] with {minimum} <= low <= high, "
                    f"got {list(getattr(self, name))}"
                )
        if self.gamma[0] == 0:
            raise ValueError("gamma must be > 0")


@dataclass(frozen=True)
class RescanChoices:
    """The random choices that make one simulated rescan (all in its JSON record)."""

    rotation_deg: tuple[float, float, float]
    translation_mm: tuple[float, float, float]
    slice_thickness_factor: float
    bias_coefficients: tuple[float, ...]
    gamma: float
    noise_fraction: float
    noise_seed: int


@dataclass(frozen=True)
class DerivedValues:
    """Values computed from the scan itself, recorded so a replay can check its input."""

    centre_mm: list[float]
    through_plane_axis: int
    intensity_scale: float
    noise_sigma: float


def settings_dict(settings: RescanSettings) -> dict[str, Any]:
    """The settings as plain JSON types (tuples become lists)."""
    return {
        key: list(value) if isinstance(value, tuple) else value
        for key, value in dataclasses.asdict(settings).items()
    }


def draw_choices(settings: RescanSettings, seed: int) -> RescanChoices:
    """Draw every random choice, in the order of the steps."""
    rng = np.random.default_rng(seed)
    motion = draw_rigid_motion(rng, settings.max_rotation_deg, settings.max_translation_mm)
    factor = uniform(rng, *settings.slice_thickness_factor)
    bias_coefficients = draw_bias_coefficients(rng, settings.bias_field_strength)
    gamma = uniform(rng, *settings.gamma)
    fraction = uniform(rng, *settings.noise_fraction)
    noise_seed = int(rng.integers(0, MAX_NOISE_SEED))
    return RescanChoices(
        rotation_deg=motion["rotation_deg"],
        translation_mm=motion["translation_mm"],
        slice_thickness_factor=factor,
        bias_coefficients=bias_coefficients,
        gamma=gamma,
        noise_fraction=fraction,
        noise_seed=noise_seed,
    )


# --- effects' parameters derived from the scan (steps in mschange.artefacts) ----------


def through_plane_axis(affine: F64) -> int:
    """The array axis with the largest voxel size; ties go to the axis nearest scanner z."""
    sizes = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    tied = [axis for axis in range(3) if np.isclose(sizes[axis], sizes.max(), rtol=1e-3)]
    return max(tied, key=lambda axis: abs(float(affine[2, axis])))


def intensity_scale(image: F64) -> float:
    """The intensity mapped to 1 before the gamma curve (0 for an empty image)."""
    nonzero = image[image > 0]
    return float(np.percentile(nonzero, GAMMA_PERCENTILE)) if nonzero.size else 0.0


def noise_sigma(image: F64, fraction: float) -> float:
    """Noise standard deviation: a fraction of the image's 99th percentile."""
    return fraction * float(np.percentile(image, NOISE_PERCENTILE))


# --- the pipeline ---------------------------------------------------------------------


def _apply(
    data: npt.NDArray[Any], affine: npt.NDArray[np.floating[Any]], choices: RescanChoices
) -> tuple[npt.NDArray[np.float32], DerivedValues]:
    """All five steps, in order, from fixed choices (shared by simulate and replay)."""
    image = np.asarray(data, dtype=np.float64)
    if image.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {image.shape}")
    affine64 = np.asarray(affine, dtype=np.float64)
    centre = centre_mm(image.shape, affine64)
    image = apply_motion(image, affine64, choices.rotation_deg, choices.translation_mm, centre)
    axis = through_plane_axis(affine64)
    image = apply_slice_thickness(image, axis, choices.slice_thickness_factor)
    image = image * bias_field(image.shape, choices.bias_coefficients)
    scale = intensity_scale(image)
    image = apply_gamma(image, choices.gamma, scale)
    sigma = noise_sigma(image, choices.noise_fraction)
    image = apply_rician_noise(image, sigma, choices.noise_seed)
    derived = DerivedValues(
        centre_mm=[float(v) for v in centre],
        through_plane_axis=axis,
        intensity_scale=scale,
        noise_sigma=sigma,
    )
    return image.astype(np.float32), derived


def simulate_rescan(
    data: npt.NDArray[Any],
    affine: npt.NDArray[np.floating[Any]],
    settings: RescanSettings,
    seed: int,
) -> tuple[npt.NDArray[np.float32], dict[str, Any]]:
    """Return the simulated rescan (float32, same shape) and a JSON-serialisable record
    of every random choice."""
    choices = draw_choices(settings, seed)
    rescan, derived = _apply(data, affine, choices)
    record: dict[str, Any] = {
        "version": RECORD_VERSION,
        "seed": int(seed),
        "settings": settings_dict(settings),
        "motion": {
            "rotation_deg": list(choices.rotation_deg),
            "translation_mm": list(choices.translation_mm),
            "centre_mm": derived.centre_mm,
            "convention": "y = Rz Ry Rx (x - centre) + centre + translation maps "
            "input-scan mm x to rescan mm y",
        },
        "slice_thickness": {
            "axis": derived.through_plane_axis,
            "factor": choices.slice_thickness_factor,
        },
        "bias_field": {
            "coefficients": list(choices.bias_coefficients),
            "exponents": [list(e) for e in BIAS_EXPONENTS],
        },
        "contrast": {"gamma": choices.gamma, "intensity_scale": derived.intensity_scale},
        "noise": {
            "fraction": choices.noise_fraction,
            "sigma": derived.noise_sigma,
            "seed": choices.noise_seed,
        },
    }
    return rescan, record


def choices_from_record(record: dict[str, Any]) -> RescanChoices:
    """The random choices stored in a record written by :func:`simulate_rescan`."""
    if record.get("version") != RECORD_VERSION:
        raise ValueError(f"unsupported rescan record version {record.get('version')!r}")
    if [list(e) for e in record["bias_field"]["exponents"]] != [list(e) for e in BIAS_EXPONENTS]:
        raise ValueError("the record's bias-field terms differ from this version's")
    rotation = [float(v) for v in record["motion"]["rotation_deg"]]
    translation = [float(v) for v in record["motion"]["translation_mm"]]
    return RescanChoices(
        rotation_deg=(rotation[0], rotation[1], rotation[2]),
        translation_mm=(translation[0], translation[1], translation[2]),
        slice_thickness_factor=float(record["slice_thickness"]["factor"]),
        bias_coefficients=tuple(float(c) for c in record["bias_field"]["coefficients"]),
        gamma=float(record["contrast"]["gamma"]),
        noise_fraction=float(record["noise"]["fraction"]),
        noise_seed=int(record["noise"]["seed"]),
    )


def _check_derived(record: dict[str, Any], derived: DerivedValues) -> None:
    # Values computed from the scan must match the record, else this is not its scan.
    expected = {
        "centre_mm": record["motion"]["centre_mm"],
        "through_plane_axis": record["slice_thickness"]["axis"],
        "intensity_scale": record["contrast"]["intensity_scale"],
        "noise_sigma": record["noise"]["sigma"],
    }
    for name, value in expected.items():
        if not np.allclose(getattr(derived, name), value, rtol=1e-6, atol=1e-9):
            raise ValueError(
                f"record does not match this scan: {name} is "
                f"{getattr(derived, name)!r}, the record says {value!r}"
            )


def replay_rescan(
    data: npt.NDArray[Any], affine: npt.NDArray[np.floating[Any]], record: dict[str, Any]
) -> npt.NDArray[np.float32]:
    """Recompute the rescan from a record written by simulate_rescan (identical voxels)."""
    rescan, derived = _apply(data, affine, choices_from_record(record))
    _check_derived(record, derived)
    return rescan
