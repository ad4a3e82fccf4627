"""On-the-fly augmentation of the detector's training patches with MR artefacts.

After Kamraoui et al. (MSSEG-2 winner), section 2.4: each time point of a patch is
altered independently, each effect with its own probability, so that the network
meets the disparity of image quality between scanners and between the two scans of a
pair: blur, edge enhancement (unsharp masking), thick slices (axial mean filter),
anisotropic down- and up-sampling, noise, bias field, k-space motion, ghosting,
spikes and a gamma contrast change. Shared by both time points and the label: random
flips and a small rotation. Then the baseline alone gets a small rigid misalignment,
because the real pairs are never perfectly registered (the label stays on the
follow-up, whose grid the predictions use).

Implementations: the effects the simulated rescan also has (rigid resampling, thick
slices, bias field, gamma, Rician noise) come from :mod:`mschange.artefacts`, the
rescan's own implementation; those only this needs come from TorchIO (blur,
anisotropy, motion, ghosting, spikes), edge enhancement is written here (TorchIO has
none).

Patches are float32 on the 1 mm training grid (voxel = mm), intensities normalised to
about [0, 1] with the background (outside the brain) exactly 0. Every random draw
comes from the given numpy generator (TorchIO's from a torch seed drawn from it, in a
forked torch RNG), so the same generator state gives the same patch and the global
torch RNG (weight initialisation, dropout) is left alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torchio as tio
from scipy import ndimage

from mschange.artefacts import (
    apply_gamma,
    apply_motion,
    apply_rician_noise,
    apply_slice_thickness,
    bias_field,
    centre_mm,
    draw_bias_coefficients,
    uniform,
)

F32 = npt.NDArray[np.float32]
AXIAL = 2  # patches are in RAS order: axis 2 runs across axial slices
MAX_SEED = 2**31  # torch and noise seeds drawn from the numpy generator
IDENTITY = np.eye(4)

Range = tuple[float, float]


@dataclass(frozen=True)
class AugmentationSettings:
    """Probabilities (per patch, per time point for the artefacts) and ranges.

    Ranges are [low, high] of a uniform draw. Ranges from Kamraoui et al. section 2.4
    where the paper gives them; the probabilities are not given there.
    """

    enabled: bool = False
    # shared by both time points and the label
    flip_probability: float = 0.5  # per axis
    rotation_probability: float = 0.5
    max_rotation_deg: float = 10.0  # per axis, ~U(-max, max)
    # residual misalignment: the baseline only. Real registrations of the two development
    # pairs have mean errors of 0.32 mm and 1.06 mm (docs/real-data.md).
    misalignment_probability: float = 1.0
    misalignment_translation_mm: float = 1.0  # per axis, ~U(-max, max)
    misalignment_rotation_deg: float = 1.0  # per axis, ~U(-max, max)
    # per time point
    bias_field_probability: float = 0.1
    bias_field_strength: Range = (0.05, 0.3)  # max |log field|, as the rescan's
    gamma_probability: float = 0.1
    gamma: Range = (0.75, 1.35)  # exponent; the intensity 1 stays put
    slice_thickness_probability: float = 0.1
    slice_thickness_factor: Range = (2.0, 4.0)  # axial mean filter of 2-4 slices (paper)
    anisotropy_probability: float = 0.1
    anisotropy_factor: Range = (1.5, 4.0)  # down-sampling factor on a random axis
    blur_probability: float = 0.1
    blur_std_mm: Range = (0.5, 1.75)
    edge_probability: float = 0.1
    edge_std_mm: Range = (0.5, 1.75)  # of the Gaussian that unsharp masking removes
    edge_amount: Range = (0.5, 1.0)
    motion_probability: float = 0.1
    motion_degrees: float = 5.0  # k-space motion (TorchIO RandomMotion)
    motion_translation_mm: float = 4.0
    motion_transforms: int = 2
    ghosting_probability: float = 0.1
    ghosting_count: tuple[int, int] = (4, 10)
    ghosting_intensity: Range = (0.5, 1.0)
    spike_probability: float = 0.1
    spike_intensity: Range = (1.0, 3.0)
    noise_probability: float = 0.1
    noise_std: Range = (0.02, 0.1)  # Rician sigma, intensities ~[0, 1] (paper)

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.name.endswith("_probability") and not 0.0 <= value <= 1.0:
                raise ValueError(f"augmentation {item.name} must be in [0, 1], got {value}")
            if isinstance(value, tuple) and not (len(value) == 2 and 0 <= value[0] <= value[1]):
                raise ValueError(
                    f"augmentation {item.name} must be [low, high] with "
                    f"0 <= low <= high, got {list(value)}"
                )
            if isinstance(value, float) and value < 0:
                raise ValueError(f"augmentation {item.name} must be >= 0, got {value}")
        for name in ("slice_thickness_factor", "anisotropy_factor"):
            if getattr(self, name)[0] < 1.0:
                raise ValueError(f"augmentation {name} must be >= 1")
        if self.gamma[0] <= 0 or self.motion_transforms < 1 or self.ghosting_count[0] < 1:
            raise ValueError(
                "augmentation gamma must be > 0, motion_transforms and ghosting_count >= 1"
            )

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON types (tuples become lists)."""
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(self).items()
        }


def augmentation_settings(config: Mapping[str, Any] | None) -> AugmentationSettings:
    """Settings from a config mapping (``detector.training.augmentation``); None: disabled.

    Keys left out keep their defaults; unknown keys are an error.
    """
    if config is None:
        return AugmentationSettings()
    defaults = AugmentationSettings()
    known = {item.name for item in dataclasses.fields(defaults)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"unknown augmentation settings: {unknown}")
    values: dict[str, Any] = {}
    for key, value in config.items():
        default = getattr(defaults, key)
        if isinstance(default, tuple):
            kind = type(default[0])
            values[key] = tuple(kind(v) for v in value)
        else:
            values[key] = type(default)(value)
    return AugmentationSettings(**values)


# --- single effects ---------------------------------------------------------------------


def rigid_patch(
    image: npt.NDArray[Any],
    rotation_deg: tuple[float, float, float],
    translation_mm: tuple[float, float, float],
    *,
    order: int = 1,
) -> F32:
    """A 1 mm patch moved rigidly about its centre (the rescan's resampler).

    ``order`` 1 (linear) for images, 0 (nearest) for labels. Voxels that come from
    outside the patch copy its nearest border voxel, not 0: the patch is cut from a
    larger brain, so a 0 there would look like background that is not.
    """
    centre = centre_mm(image.shape, IDENTITY)
    moved = apply_motion(
        image, IDENTITY, rotation_deg, translation_mm, centre, order=order, mode="nearest"
    )
    return moved.astype(np.float32)


def edge_enhance(image: npt.NDArray[Any], std_mm: float, amount: float) -> F32:
    """Unsharp masking: add back ``amount`` times what a Gaussian blur removes."""
    data = np.asarray(image, dtype=np.float32)
    blurred = ndimage.gaussian_filter(data, std_mm, mode="nearest")
    return np.asarray(data + amount * (data - blurred), dtype=np.float32)


def _torchio(transform: tio.Transform, image: npt.NDArray[Any], rng: np.random.Generator) -> F32:
    """Apply a TorchIO transform with a torch seed drawn from ``rng``."""
    seed = int(rng.integers(MAX_SEED))
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)[None])
    # fork_rng restores the global torch RNG afterwards (CPU only: no CUDA set-up here).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        result = transform(tio.ScalarImage(tensor=tensor, affine=IDENTITY))
    return np.asarray(result.data[0].numpy(), dtype=np.float32)


def _artefacts(image: F32, settings: AugmentationSettings, rng: np.random.Generator) -> F32:
    """One time point's random artefacts, in acquisition order: the coil and contrast,
    the resolution, reconstruction filters, k-space artefacts, then noise."""
    s = settings
    out = image
    if rng.random() < s.bias_field_probability:
        strength = uniform(rng, *s.bias_field_strength)
        field = bias_field(out.shape, draw_bias_coefficients(rng, strength))
        out = (out * field).astype(np.float32)
    if rng.random() < s.gamma_probability:
        # Intensities are normalised to [0, 1]: scale 1 keeps the bright end in place
        # and, unlike a patch percentile, does not depend on what the patch holds.
        out = apply_gamma(out, uniform(rng, *s.gamma), scale=1.0).astype(np.float32)
    if rng.random() < s.slice_thickness_probability:
        factor = uniform(rng, *s.slice_thickness_factor)
        out = apply_slice_thickness(out, AXIAL, factor).astype(np.float32)
    if rng.random() < s.anisotropy_probability:
        out = _torchio(tio.RandomAnisotropy(downsampling=s.anisotropy_factor), out, rng)
    if rng.random() < s.blur_probability:
        out = _torchio(tio.RandomBlur(std=s.blur_std_mm), out, rng)
    if rng.random() < s.edge_probability:
        out = edge_enhance(out, uniform(rng, *s.edge_std_mm), uniform(rng, *s.edge_amount))
    if rng.random() < s.motion_probability:
        motion = tio.RandomMotion(
            degrees=s.motion_degrees,
            translation=s.motion_translation_mm,
            num_transforms=s.motion_transforms,
        )
        out = _torchio(motion, out, rng)
    if rng.random() < s.ghosting_probability:
        ghosting = tio.RandomGhosting(num_ghosts=s.ghosting_count, intensity=s.ghosting_intensity)
        out = _torchio(ghosting, out, rng)
    if rng.random() < s.spike_probability:
        out = _torchio(tio.RandomSpike(intensity=s.spike_intensity), out, rng)
    if rng.random() < s.noise_probability:
        # Rician, as in the rescan: a magnitude image never goes negative, and in the
        # brain (SNR > 3) it is the paper's Gaussian noise.
        sigma = uniform(rng, *s.noise_std)
        out = apply_rician_noise(out, sigma, int(rng.integers(MAX_SEED))).astype(np.float32)
    return out


# --- a training patch -------------------------------------------------------------------


def augment_patch(
    baseline: npt.NDArray[Any],
    followup: npt.NDArray[Any],
    label: npt.NDArray[Any],
    settings: AugmentationSettings,
    rng: np.random.Generator,
) -> tuple[F32, F32, npt.NDArray[Any]]:
    """An augmented copy of one training patch: (baseline, follow-up, label).

    Disabled settings return the inputs unchanged. The label keeps its dtype and
    stays binary. The background (where both time points are 0 after the spatial
    transforms) is set back to 0 after the artefacts: the real inputs are skull
    stripped, so blur, ghosts or the noise floor outside the brain never reach the
    network at inference. Intensities are clipped to [0, max(1, input maximum)], the
    range of the normalised scans.
    """
    if not settings.enabled:
        return baseline, followup, label
    s = settings
    images = [np.asarray(baseline, dtype=np.float32), np.asarray(followup, dtype=np.float32)]
    mask = np.asarray(label, dtype=np.float32)

    flips = tuple(axis for axis in range(3) if rng.random() < s.flip_probability)
    if flips:
        images = [np.flip(image, flips) for image in images]
        mask = np.flip(mask, flips)
    if rng.random() < s.rotation_probability:
        angles = (
            uniform(rng, -s.max_rotation_deg, s.max_rotation_deg),
            uniform(rng, -s.max_rotation_deg, s.max_rotation_deg),
            uniform(rng, -s.max_rotation_deg, s.max_rotation_deg),
        )
        images = [rigid_patch(image, angles, (0.0, 0.0, 0.0)) for image in images]
        mask = rigid_patch(mask, angles, (0.0, 0.0, 0.0), order=0)
    if rng.random() < s.misalignment_probability:
        degrees, mm = s.misalignment_rotation_deg, s.misalignment_translation_mm
        angles = (
            uniform(rng, -degrees, degrees),
            uniform(rng, -degrees, degrees),
            uniform(rng, -degrees, degrees),
        )
        shift = (uniform(rng, -mm, mm), uniform(rng, -mm, mm), uniform(rng, -mm, mm))
        images[0] = rigid_patch(images[0], angles, shift)

    background = (images[0] == 0) & (images[1] == 0)
    upper = max(1.0, float(max(image.max(initial=0.0) for image in images)))
    altered = []
    for image in images:
        out = _artefacts(np.ascontiguousarray(image, dtype=np.float32), s, rng)
        out = np.clip(out, 0.0, upper)
        out[background] = 0.0
        altered.append(np.ascontiguousarray(out, dtype=np.float32))
    label_out = np.ascontiguousarray(mask > 0.5).astype(np.asarray(label).dtype)
    return altered[0], altered[1], label_out


# --- the report's gallery ---------------------------------------------------------------

# One panel per effect: the probability switched on alone (the others at 0).
GALLERY_EFFECTS = {
    "flips and rotation": ("flip_probability", "rotation_probability"),
    "residual misalignment (|BL - FU|)": ("misalignment_probability",),
    "bias field": ("bias_field_probability",),
    "gamma": ("gamma_probability",),
    "thick slices": ("slice_thickness_probability",),
    "anisotropic down/upsampling": ("anisotropy_probability",),
    "blur": ("blur_probability",),
    "edge enhancement": ("edge_probability",),
    "motion (k-space)": ("motion_probability",),
    "ghosting": ("ghosting_probability",),
    "spike": ("spike_probability",),
    "Rician noise": ("noise_probability",),
}


def gallery_patches(
    baseline: npt.NDArray[Any],
    followup: npt.NDArray[Any],
    settings: AugmentationSettings,
    seed: int,
) -> dict[str, F32]:
    """Each effect of :data:`GALLERY_EFFECTS` alone on one patch (RAS axis order): the
    augmented follow-up, or for the misalignment |baseline - follow-up| after it."""
    off: dict[str, Any] = {
        item.name: 0.0
        for item in dataclasses.fields(settings)
        if item.name.endswith("_probability")
    }
    label = np.zeros(np.shape(followup), dtype=np.uint8)
    patches = {"original": np.asarray(followup, dtype=np.float32)}
    for name, switches in GALLERY_EFFECTS.items():
        alone = dataclasses.replace(
            settings, enabled=True, **{**off, **dict.fromkeys(switches, 1.0)}
        )
        rng = np.random.default_rng([seed, len(patches)])
        moved_baseline, moved_followup, _ = augment_patch(baseline, followup, label, alone, rng)
        patches[name] = (
            np.abs(moved_baseline - moved_followup) if "misalignment" in name else moved_followup
        )
    return patches


def plot_augmentation_gallery(
    baseline: npt.NDArray[Any],
    followup: npt.NDArray[Any],
    settings: AugmentationSettings,
    png_path: Any,
    *,
    seed: int,
) -> list[str]:
    """The gallery as a figure: the middle axial slice of each patch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    patches = gallery_patches(baseline, followup, settings, seed)
    columns = 5
    rows = -(-len(patches) // columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(2.4 * columns, 2.6 * rows), dpi=100, squeeze=False
    )
    for axis in axes.ravel():
        axis.axis("off")
    middle = np.shape(followup)[2] // 2
    for axis, (name, patch) in zip(axes.ravel(), patches.items(), strict=False):
        view = np.flipud(patch[:, :, middle].T)
        if "misalignment" in name:
            axis.imshow(view, cmap="magma", vmin=0.0, vmax=0.3)
        else:
            axis.imshow(view, cmap="gray", vmin=0.0, vmax=1.0)
        axis.set_title(name, fontsize=8)
    figure.suptitle(
        "On-the-fly augmentation of the detector's training patches, each "
        "effect alone (axial slice)",
        fontsize=9,
    )
    figure.tight_layout()
    from mschange.io import atomic_path

    with atomic_path(png_path) as tmp:
        figure.savefig(tmp)
    plt.close(figure)
    return list(patches)
