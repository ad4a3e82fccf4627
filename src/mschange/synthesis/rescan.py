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
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

F64 = npt.NDArray[np.float64]
RECORD_VERSION = 1
# Exponents (x, y, z) of the order-2 polynomial terms of the log bias field; the
# constant term is left out because a global gain is the contrast step's business.
BIAS_EXPONENTS: tuple[tuple[int, int, int], ...] = (
    (1, 0, 0), (0, 1, 0), (0, 0, 1),
    (2, 0, 0), (0, 2, 0), (0, 0, 2),
    (1, 1, 0), (1, 0, 1), (0, 1, 1),
)
GAMMA_PERCENTILE = 99.5   # of the nonzero voxels: the intensity mapped to 1 for gamma
NOISE_PERCENTILE = 99.0   # of all voxels: the intensity the noise fraction refers to
MAX_NOISE_SEED = 2**32    # noise seeds stay well inside JSON's exact integer range


@dataclass(frozen=True)
class RescanSettings:
    max_rotation_deg: float = 3.0        # each of the 3 rotation angles ~ U(-max, max)
    max_translation_mm: float = 3.0      # each translation component ~ U(-max, max)
    slice_thickness_factor: tuple[float, float] = (1.0, 2.0)  # factor ~ U(lo, hi)
    bias_field_strength: float = 0.15    # max |log multiplicative field| roughly
    noise_fraction: tuple[float, float] = (0.005, 0.03)  # Rician sigma / 99th percentile, ~U
    gamma: tuple[float, float] = (0.9, 1.1)   # contrast change exponent ~ U

    def __post_init__(self) -> None:
        for name in ("max_rotation_deg", "max_translation_mm", "bias_field_strength"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name, minimum in (("slice_thickness_factor", 1.0), ("noise_fraction", 0.0),
                              ("gamma", 0.0)):
            low, high = getattr(self, name)
            if not minimum <= low <= high:
                raise ValueError(f"{name} must be [low, high] with {minimum} <= low <= high, "
                                 f"got {list(getattr(self, name))}")
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
    return {key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(settings).items()}


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    # A degenerate range must not consume a different number of draws than a real one,
    # so always draw, then map onto [low, high].
    return float(low + (high - low) * rng.random())


def draw_choices(settings: RescanSettings, seed: int) -> RescanChoices:
    """Draw every random choice, in the order of the steps."""
    rng = np.random.default_rng(seed)
    rotation = [_uniform(rng, -settings.max_rotation_deg, settings.max_rotation_deg)
                for _ in range(3)]
    translation = [_uniform(rng, -settings.max_translation_mm, settings.max_translation_mm)
                   for _ in range(3)]
    factor = _uniform(rng, *settings.slice_thickness_factor)
    raw = [_uniform(rng, -1.0, 1.0) for _ in BIAS_EXPONENTS]
    # Each term is within [-1, 1] on the normalised cube, so scaling the sum of |c| to
    # the strength keeps |log field| <= strength everywhere.
    total = sum(abs(c) for c in raw)
    scale = settings.bias_field_strength / total if total > 0 else 0.0
    gamma = _uniform(rng, *settings.gamma)
    fraction = _uniform(rng, *settings.noise_fraction)
    noise_seed = int(rng.integers(0, MAX_NOISE_SEED))
    return RescanChoices(rotation_deg=(rotation[0], rotation[1], rotation[2]),
                         translation_mm=(translation[0], translation[1], translation[2]),
                         slice_thickness_factor=factor,
                         bias_coefficients=tuple(scale * c for c in raw),
                         gamma=gamma, noise_fraction=fraction, noise_seed=noise_seed)


# --- step 1: rigid motion -------------------------------------------------------------


def rotation_matrix(angles_deg: tuple[float, float, float]) -> F64:
    """``Rz @ Ry @ Rx`` for rotations (degrees) about the scanner x, y and z axes."""
    ax, ay, az = (math.radians(a) for a in angles_deg)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return np.asarray(rz @ ry @ rx, dtype=np.float64)


def centre_mm(shape: tuple[int, ...], affine: F64) -> F64:
    """Scanner position of the volume's centre voxel (the rotation centre)."""
    centre_voxel = (np.asarray(shape[:3], dtype=np.float64) - 1.0) / 2.0
    return np.asarray(affine[:3, :3] @ centre_voxel + affine[:3, 3], dtype=np.float64)


def rigid_mm_transform(angles_deg: tuple[float, float, float],
                       translation_mm: tuple[float, float, float], centre: F64) -> F64:
    """4x4 map from input-scan mm to rescan mm: ``y = R (x - c) + c + t``."""
    rotation = rotation_matrix(angles_deg)
    transform = np.eye(4)
    transform[:3, :3] = rotation
    transform[:3, 3] = centre + np.asarray(translation_mm) - rotation @ centre
    return transform


def apply_motion(image: F64, affine: F64, angles_deg: tuple[float, float, float],
                 translation_mm: tuple[float, float, float], centre: F64) -> F64:
    """Resample the image as seen after the head moved by the rigid transform."""
    rotation = rotation_matrix(angles_deg)
    # Pull-back: each rescan voxel looks up the input at x = R^T (y - c - t) + c.
    inverse = np.eye(4)
    inverse[:3, :3] = rotation.T
    inverse[:3, 3] = centre - rotation.T @ (centre + np.asarray(translation_mm))
    # Written as identity + perturbation so that no motion gives exactly the identity
    # in voxel space (inv(A) @ A is only the identity up to rounding, and a coordinate
    # of -1e-16 at the border would fall outside the volume in "constant" mode).
    voxel = np.eye(4) + np.linalg.inv(affine) @ (inverse - np.eye(4)) @ affine
    moved = ndimage.affine_transform(image, voxel[:3, :3], offset=voxel[:3, 3],
                                     output_shape=image.shape, order=1, mode="constant",
                                     cval=0.0)
    return np.asarray(moved, dtype=np.float64)


# --- step 2: slice thickness ----------------------------------------------------------


def through_plane_axis(affine: F64) -> int:
    """The array axis with the largest voxel size; ties go to the axis nearest scanner z."""
    sizes = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    tied = [axis for axis in range(3) if np.isclose(sizes[axis], sizes.max(), rtol=1e-3)]
    return max(tied, key=lambda axis: abs(float(affine[2, axis])))


def thick_slice_operator(length: int, factor: float) -> F64:
    """``length x length`` matrix: acquire slices ``factor`` times thicker, re-interpolate.

    The thick acquisition covers the same field of view with ``round(length / factor)``
    contiguous slices, each the box average of ``factor`` original slices; linear
    interpolation brings it back onto the original slice positions.
    """
    n_thick = max(1, round(length / factor))
    spacing = length / n_thick                       # in original voxels, ~factor
    centres = (np.arange(n_thick) + 0.5) * spacing - 0.5
    starts, ends = np.arange(length) - 0.5, np.arange(length) + 0.5
    # Overlap of each original slice with each thick slice's profile (a box of width
    # ``factor``), clipped to the field of view.
    low = np.maximum(starts[None, :], centres[:, None] - factor / 2)
    high = np.minimum(ends[None, :], centres[:, None] + factor / 2)
    weights = np.clip(high - low, 0.0, None)
    acquire = weights / weights.sum(axis=1, keepdims=True)
    positions = np.arange(length, dtype=np.float64)
    # np.interp clamps beyond the first and last thick slice, as scanners' resamplers do.
    interpolate = np.stack([np.interp(positions, centres, np.eye(n_thick)[k])
                            for k in range(n_thick)], axis=1)
    return np.asarray(interpolate @ acquire, dtype=np.float64)


def apply_slice_thickness(image: F64, axis: int, factor: float) -> F64:
    """Simulate ``factor`` times thicker slices along ``axis`` (a no-op for factor 1)."""
    if factor == 1.0:
        return image
    operator = thick_slice_operator(image.shape[axis], factor)
    thick = np.tensordot(operator, image, axes=([1], [axis]))
    return np.asarray(np.moveaxis(thick, 0, axis), dtype=np.float64)


# --- step 3: bias field ---------------------------------------------------------------


def bias_field(shape: tuple[int, ...], coefficients: tuple[float, ...]) -> F64:
    """exp of an order-2 polynomial in per-axis coordinates normalised to [-1, 1]."""
    coords = [np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1) for n in shape[:3]]
    x, y, z = np.meshgrid(*coords, indexing="ij")
    log_field = np.zeros(shape[:3])
    for (px, py, pz), coefficient in zip(BIAS_EXPONENTS, coefficients, strict=True):
        log_field += coefficient * x**px * y**py * z**pz
    return np.exp(log_field)


# --- step 4: contrast -----------------------------------------------------------------


def intensity_scale(image: F64) -> float:
    """The intensity mapped to 1 before the gamma curve (0 for an empty image)."""
    nonzero = image[image > 0]
    return float(np.percentile(nonzero, GAMMA_PERCENTILE)) if nonzero.size else 0.0


def apply_gamma(image: F64, gamma: float, scale: float) -> F64:
    """``scale * (image / scale) ** gamma`` after clipping negative values to 0."""
    clipped = np.clip(image, 0.0, None)
    if scale <= 0:
        return clipped
    return np.asarray(scale * (clipped / scale) ** gamma, dtype=np.float64)


# --- step 5: Rician noise -------------------------------------------------------------


def noise_sigma(image: F64, fraction: float) -> float:
    """Noise standard deviation: a fraction of the image's 99th percentile."""
    return fraction * float(np.percentile(image, NOISE_PERCENTILE))


def apply_rician_noise(image: F64, sigma: float, noise_seed: int) -> F64:
    """Magnitude of the image plus complex Gaussian noise, as a magnitude MR image is."""
    if sigma == 0:
        return image
    noise = np.random.default_rng(noise_seed).standard_normal((2, *image.shape)) * sigma
    return np.asarray(np.hypot(image + noise[0], noise[1]), dtype=np.float64)


# --- the pipeline ---------------------------------------------------------------------


def _apply(data: npt.NDArray[Any], affine: npt.NDArray[np.floating[Any]],
           choices: RescanChoices) -> tuple[npt.NDArray[np.float32], DerivedValues]:
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
    derived = DerivedValues(centre_mm=[float(v) for v in centre], through_plane_axis=axis,
                            intensity_scale=scale, noise_sigma=sigma)
    return image.astype(np.float32), derived


def simulate_rescan(data: npt.NDArray[Any], affine: npt.NDArray[np.floating[Any]],
                    settings: RescanSettings, seed: int
                    ) -> tuple[npt.NDArray[np.float32], dict[str, Any]]:
    """Return the simulated rescan (float32, same shape) and a JSON-serialisable record
    of every random choice."""
    choices = draw_choices(settings, seed)
    rescan, derived = _apply(data, affine, choices)
    record: dict[str, Any] = {
        "version": RECORD_VERSION,
        "seed": int(seed),
        "settings": settings_dict(settings),
        "motion": {"rotation_deg": list(choices.rotation_deg),
                   "translation_mm": list(choices.translation_mm),
                   "centre_mm": derived.centre_mm,
                   "convention": "y = Rz Ry Rx (x - centre) + centre + translation maps "
                                 "input-scan mm x to rescan mm y"},
        "slice_thickness": {"axis": derived.through_plane_axis,
                            "factor": choices.slice_thickness_factor},
        "bias_field": {"coefficients": list(choices.bias_coefficients),
                       "exponents": [list(e) for e in BIAS_EXPONENTS]},
        "contrast": {"gamma": choices.gamma, "intensity_scale": derived.intensity_scale},
        "noise": {"fraction": choices.noise_fraction, "sigma": derived.noise_sigma,
                  "seed": choices.noise_seed},
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
        noise_seed=int(record["noise"]["seed"]))


def _check_derived(record: dict[str, Any], derived: DerivedValues) -> None:
    # Values computed from the scan must match the record, else this is not its scan.
    expected = {"centre_mm": record["motion"]["centre_mm"],
                "through_plane_axis": record["slice_thickness"]["axis"],
                "intensity_scale": record["contrast"]["intensity_scale"],
                "noise_sigma": record["noise"]["sigma"]}
    for name, value in expected.items():
        if not np.allclose(getattr(derived, name), value, rtol=1e-6, atol=1e-9):
            raise ValueError(f"record does not match this scan: {name} is "
                             f"{getattr(derived, name)!r}, the record says {value!r}")


def replay_rescan(data: npt.NDArray[Any], affine: npt.NDArray[np.floating[Any]],
                  record: dict[str, Any]) -> npt.NDArray[np.float32]:
    """Recompute the rescan from a record written by simulate_rescan (identical voxels)."""
    rescan, derived = _apply(data, affine, choices_from_record(record))
    _check_derived(record, derived)
    return rescan
