"""MR acquisition effects shared by the demo, the simulated rescan and the augmentation.

One module for what a repeated acquisition changes: rigid head motion, thicker
slices, a smooth multiplicative bias field, a gamma contrast change and Rician
noise. Its users: the demo cohort's phantom (:mod:`mschange.demo_phantom`), the
simulated rescan (:mod:`mschange.synthesis.rescan`), which records every parameter
for an exact replay, and the detector's training augmentation
(:mod:`mschange.detection.augment`), which draws them per patch. Effects only the
augmentation uses and that TorchIO implements (blur, anisotropic down-sampling,
k-space motion, ghosting, spikes) come from TorchIO there.

TorchIO's habit: ``draw_*`` functions take a :class:`numpy.random.Generator` and
return plain parameters (floats, lists, dicts: JSON as they are); every other
function is deterministic given its arguments (the noise given its seed or
generator), so recorded parameters replay to identical voxels.

Two effects come in two forms, each kept because its users' recorded outputs depend
on its exact arithmetic (merging them would change the demo's or the rescan's voxels):

* the bias field's polynomial (:data:`BIAS_EXPONENTS`) is normalised either over the
  field of view, ``sum |c| = strength`` on coordinates in [-1, 1]
  (:func:`draw_bias_coefficients`, :func:`bias_field`: rescan and augmentation), or
  in millimetres about a centre, spanning exactly ``±amplitude`` over a box
  (:func:`draw_bias_span`, :func:`bias_field_on_axes`: the demo);
* Rician noise is either a float64 copy from a recorded seed
  (:func:`apply_rician_noise`) or float32 in place from a generator
  (:func:`add_rician_noise_inplace`: the demo's whole heads, memory-lean).
"""

from __future__ import annotations

import math
from typing import Any, TypeVar, overload

import numpy as np
import numpy.typing as npt
from scipy import ndimage

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
Out = TypeVar("Out", bound=npt.NDArray[Any])
Axes = tuple[npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any]]  # x, y, z, broadcastable
# Exponents (x, y, z) of the order-2 polynomial terms of the log bias field; the
# constant term is left out because a global gain is the contrast step's business.
BIAS_EXPONENTS: tuple[tuple[int, int, int], ...] = (
    (1, 0, 0),
    (0, 1, 0),
    (0, 0, 1),
    (2, 0, 0),
    (0, 2, 0),
    (0, 0, 2),
    (1, 1, 0),
    (1, 0, 1),
    (0, 1, 1),
)


def uniform(rng: np.random.Generator, low: float, high: float) -> float:
    # A degenerate range must not consume a different number of draws than a real one,
    # so always draw, then map onto [low, high].
    return float(low + (high - low) * rng.random())


# --- rigid motion ---------------------------------------------------------------------


def draw_rigid_motion(
    rng: np.random.Generator, max_rotation_deg: float, max_translation_mm: float
) -> dict[str, tuple[float, float, float]]:
    """Three angles ~ U(-max, max) degrees, then three shifts ~ U(-max, max) mm."""
    rotation = [uniform(rng, -max_rotation_deg, max_rotation_deg) for _ in range(3)]
    translation = [uniform(rng, -max_translation_mm, max_translation_mm) for _ in range(3)]
    return {
        "rotation_deg": (rotation[0], rotation[1], rotation[2]),
        "translation_mm": (translation[0], translation[1], translation[2]),
    }


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


def rigid_mm_transform(
    angles_deg: tuple[float, float, float], translation_mm: tuple[float, float, float], centre: F64
) -> F64:
    """4x4 map from input-scan mm to moved-scan mm: ``y = R (x - c) + c + t``."""
    rotation = rotation_matrix(angles_deg)
    transform = np.eye(4)
    transform[:3, :3] = rotation
    transform[:3, 3] = centre - rotation @ centre + np.asarray(translation_mm)
    return transform


def apply_motion(
    image: npt.NDArray[Any],
    affine: F64,
    angles_deg: tuple[float, float, float],
    translation_mm: tuple[float, float, float],
    centre: F64,
    *,
    order: int = 1,
    mode: str = "constant",
) -> F64:
    """Resample the image as seen after the head moved by the rigid transform.

    ``order`` 1 is linear interpolation (images), 0 nearest (labels). ``mode`` is
    scipy's boundary mode: "constant" (0, the head leaves the field of view of a
    whole scan) or e.g. "nearest" for patches cut from a larger image.
    """
    rotation = rotation_matrix(angles_deg)
    # Pull-back: each moved voxel looks up the input at x = R^T (y - c - t) + c.
    inverse = np.eye(4)
    inverse[:3, :3] = rotation.T
    inverse[:3, 3] = centre - rotation.T @ (centre + np.asarray(translation_mm))
    # Written as identity + perturbation so that no motion gives exactly the identity
    # in voxel space (inv(A) @ A is only the identity up to rounding, and a coordinate
    # of -1e-16 at the border would fall outside the volume in "constant" mode).
    voxel = np.eye(4) + np.linalg.inv(affine) @ (inverse - np.eye(4)) @ affine
    moved = ndimage.affine_transform(
        np.asarray(image, dtype=np.float64),
        voxel[:3, :3],
        offset=voxel[:3, 3],
        output_shape=image.shape,
        order=order,
        mode=mode,
        cval=0.0,
    )
    return np.asarray(moved, dtype=np.float64)


# --- slice thickness ------------------------------------------------------------------


def thick_slice_operator(length: int, factor: float) -> F64:
    """``length x length`` matrix: acquire slices ``factor`` times thicker, re-interpolate.

    The thick acquisition covers the same field of view with ``round(length / factor)``
    contiguous slices, each the box average of ``factor`` original slices; linear
    interpolation brings it back onto the original slice positions.
    """
    n_thick = max(1, round(length / factor))
    spacing = length / n_thick  # in original voxels, ~factor
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
    interpolate = np.stack(
        [np.interp(positions, centres, np.eye(n_thick)[k]) for k in range(n_thick)], axis=1
    )
    return np.asarray(interpolate @ acquire, dtype=np.float64)


def apply_slice_thickness(image: npt.NDArray[Any], axis: int, factor: float) -> F64:
    """Simulate ``factor`` times thicker slices along ``axis`` (a no-op for factor 1)."""
    if factor == 1.0:
        return np.asarray(image, dtype=np.float64)
    operator = thick_slice_operator(image.shape[axis], factor)
    thick = np.tensordot(operator, np.asarray(image, dtype=np.float64), axes=([1], [axis]))
    return np.asarray(np.moveaxis(thick, 0, axis), dtype=np.float64)


# --- bias field -----------------------------------------------------------------------


def draw_bias_coefficients(rng: np.random.Generator, strength: float) -> tuple[float, ...]:
    """Random coefficients of :data:`BIAS_EXPONENTS` with ``sum |c| == strength``."""
    raw = [uniform(rng, -1.0, 1.0) for _ in BIAS_EXPONENTS]
    # Each term is within [-1, 1] on the normalised cube, so scaling the sum of |c| to
    # the strength keeps |log field| <= strength everywhere.
    total = sum(abs(c) for c in raw)
    scale = strength / total if total > 0 else 0.0
    return tuple(scale * c for c in raw)


def bias_field(shape: tuple[int, ...], coefficients: tuple[float, ...]) -> F64:
    """exp of an order-2 polynomial in per-axis coordinates normalised to [-1, 1]."""
    coords = [np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1) for n in shape[:3]]
    x, y, z = np.meshgrid(*coords, indexing="ij")
    log_field = np.zeros(shape[:3])
    for (px, py, pz), coefficient in zip(BIAS_EXPONENTS, coefficients, strict=True):
        log_field += coefficient * x**px * y**py * z**pz
    return np.exp(log_field)


def log_bias_polynomial(coefficients: list[float], x: Any, y: Any, z: Any) -> Any:
    """The :data:`BIAS_EXPONENTS` polynomial at (broadcastable) coordinates x, y, z.

    Python-float coefficients keep float32 coordinates in float32.
    """
    c = coefficients
    return (
        (c[0] * x + c[3] * x * x)
        + (c[1] * y + c[4] * y * y)
        + (c[2] * z + c[5] * z * z)
        + c[6] * x * y
        + c[7] * x * z
        + c[8] * y * z
    )


def draw_bias_span(
    rng: np.random.Generator, amplitude: tuple[float, float], axes: Axes
) -> dict[str, Any]:
    """A bias field whose log spans exactly ``±log1p(amplitude)`` over ``axes``.

    The amplitude ~ U(low, high), then normal coefficients, scaled so that the largest
    ``|log field|`` over the coordinates ``axes`` (those of the box the field must
    bound, possibly subsampled) is ``log1p(amplitude)``.
    """
    drawn = uniform(rng, *amplitude)
    raw = rng.normal(size=len(BIAS_EXPONENTS)).tolist()
    peak = float(np.abs(log_bias_polynomial(raw, *axes)).max())
    scale = math.log1p(drawn) / peak
    return {"amplitude": drawn, "coefficients": [c * scale for c in raw]}


def bias_field_on_axes(coefficients: list[float], axes: Axes) -> F32:
    """The multiplicative field ``exp(polynomial)`` (float32) on the grid of ``axes``."""
    c = [float(value) for value in coefficients]  # float64 scalars would upcast
    log_field = np.asarray(log_bias_polynomial(c, *axes), dtype=np.float32)
    return np.exp(log_field, out=log_field)


# --- contrast -------------------------------------------------------------------------


@overload
def apply_gamma(image: npt.NDArray[Any], gamma: float, scale: float) -> F64: ...


@overload
def apply_gamma(image: npt.NDArray[Any], gamma: float, scale: float, *, out: Out) -> Out: ...


def apply_gamma(
    image: npt.NDArray[Any], gamma: float, scale: float, *, out: npt.NDArray[Any] | None = None
) -> npt.NDArray[Any]:
    """``scale * (image / scale) ** gamma`` after clipping negative values to 0.

    Into a new float64 array, or into ``out`` in its own dtype (``out`` may be
    ``image`` itself, e.g. a float32 view that must not be copied).
    """
    if out is None:
        out = np.clip(np.asarray(image, dtype=np.float64), 0.0, None)
    else:
        np.clip(image, 0.0, None, out=out)
    if scale <= 0:
        return out
    out /= scale
    np.power(out, gamma, out=out)
    out *= scale
    return out


# --- Rician noise ---------------------------------------------------------------------


def apply_rician_noise(image: npt.NDArray[Any], sigma: float, noise_seed: int) -> F64:
    """Magnitude of the image plus complex Gaussian noise, as a magnitude MR image is."""
    if sigma == 0:
        return np.asarray(image, dtype=np.float64)
    noise = np.random.default_rng(noise_seed).standard_normal((2, *image.shape)) * sigma
    return np.asarray(np.hypot(image + noise[0], noise[1]), dtype=np.float64)


def add_rician_noise_inplace(image: F32, sigma: float, rng: np.random.Generator) -> None:
    """:func:`apply_rician_noise` in place on a float32 image, the noise (float32, real
    then imaginary channel) drawn from ``rng``: one extra image of memory, not four."""
    noise = rng.standard_normal(image.shape, dtype=np.float32)
    noise *= sigma
    image += noise
    np.square(image, out=image)
    rng.standard_normal(dtype=np.float32, out=noise)
    noise *= sigma
    np.square(noise, out=noise)
    image += noise
    np.sqrt(image, out=image)
