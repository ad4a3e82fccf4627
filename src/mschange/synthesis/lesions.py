"""Lesion-based change synthesis: real lesion shapes painted into a no-change pair.

After the "lesion-based time-point synthesis" of Kamraoui et al. (MSSEG-2 winner,
section 2.3), without their generator networks: real lesion *shapes* (a bank of
connected components of 30 consensus lesion masks, resampled to 1 mm) are painted
into one time point of a preprocessed no-change pair, so the change label is known
exactly.

Bank: every 26-connected component of each mask, cropped with a 1-voxel pad, turned
into its partial-volume fraction on a 1 mm grid in RAS axis order (left-right,
anterior-posterior, inferior-superior). The fraction of each 1 mm voxel is the exact
overlap volume of the component's raw voxels with it, so the fractions sum to the
component's raw volume.

Painting one lesion (on the 1 mm grid of the pair):

* alpha = the bank fraction, optionally flipped and turned by quarter turns in the
  axial plane, reoriented into the image's axes, smoothed by a Gaussian of the drawn
  border sigma (partial-volume border), then blurred along the raw acquisition's
  through-plane axis by a box of the raw slice thickness (what a thick-slice
  acquisition does to a lesion), and finally multiplied by the brain mask;
* painted = max(image, (1 - alpha) * image + alpha * (target + image - smooth(image))):
  the lesion takes the target intensity but keeps the scan's own noise texture, and
  painting never darkens a voxel; values are clipped to the scan's maximum (the
  preprocessed scans are clipped at their 99th percentile);
* target = contrast * NAWM median, contrast ~ U(low, min(high, cap / NAWM median)) with
  cap the scan's 99.5th brain percentile (where its real lesions sit);
* kinds: ``new`` and ``enlarging`` are painted into the follow-up, ``shrinking`` into
  the baseline (a lesion that resolved). An enlarging lesion is centred on a border
  voxel of an existing hyperintensity of the follow-up.

Label rule (exact, from what was painted): a voxel is 1 where the final alpha of a
painted lesion is >= 0.5, the painted time point was not already hyperintense there
(so an enlargement labels only its grown part), and painting made it brighter by at
least ``min_label_increase`` x (target - NAWM median) (a voxel whose surroundings are
already about as bright as the target hardly changes, and is not a change). Painted
lesions never overlap (their supports are at least one voxel apart), so the label is
the union of the lesions' labels. Lesion centres lie in the brain eroded by
``edge_margin_mm`` and in the normal-appearing white-matter band (smoothed intensity
between two brain percentiles: FLAIR has dark CSF, grey matter a little brighter than
white matter).

Every random choice is drawn from ``np.random.default_rng`` seeded with the sample's
entropy and written to a JSON-serialisable record; :func:`replay_painted` rebuilds
identical voxels from the record and the same inputs and bank.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
from scipy import ndimage

from mschange.artefacts import uniform
from mschange.imagespace import to_ras_axes
from mschange.io import atomic_path, file_sha256, voxel_sizes

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
Bool = npt.NDArray[np.bool_]
PathLike = str | os.PathLike[str]

RECORD_VERSION = 1
BANK_VERSION = 1
KINDS = ("new", "enlarging", "shrinking")
PAINTED_TIMEPOINT = {"new": "followup", "enlarging": "followup", "shrinking": "baseline"}
TIMEPOINTS = ("baseline", "followup")
SEED_TAG = zlib.crc32(b"lesion-paint")  # keeps these streams apart from SuperMix's
LABEL_RULE = (
    "label = 1 where a painted lesion's final alpha (after border smoothing, "
    "slice profile and brain mask) >= 0.5, the painted time point was not already "
    "hyperintense there, and the voxel got brighter by at least min_label_increase "
    "x (target - NAWM median)"
)
RAS = nib.orientations.axcodes2ornt(("R", "A", "S"))


# ------------------------------------------------------------------ lesion bank


@dataclass(frozen=True)
class LesionBankSettings:
    min_volume_mm3: float = 10.0  # components outside [min, max] are skipped
    max_volume_mm3: float = 20000.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_volume_mm3 <= self.max_volume_mm3:
            raise ValueError(
                f"bank volumes must satisfy 0 <= min_volume_mm3 <= "
                f"max_volume_mm3, got {self.min_volume_mm3}, {self.max_volume_mm3}"
            )


@dataclass(frozen=True, eq=False)
class LesionBank:
    """Lesion fractions on 1 mm grids (RAS axis order), stored flat as uint8 (x 255)."""

    data: npt.NDArray[np.uint8]  # all fractions, flattened (C order), concatenated
    offsets: npt.NDArray[np.int64]  # lesion i is data[offsets[i]:offsets[i + 1]]
    shapes: npt.NDArray[np.int32]  # (n, 3) 1 mm grid shapes
    volumes_mm3: F64  # from the raw voxels
    source_index: npt.NDArray[np.int32]  # index into sources
    component_ids: npt.NDArray[np.int32]  # label of the component in its (cropped) mask
    sources: tuple[str, ...]  # mask file names
    settings: LesionBankSettings = LesionBankSettings()

    def __len__(self) -> int:
        return len(self.shapes)

    def fraction(self, index: int) -> F32:
        start, stop = int(self.offsets[index]), int(self.offsets[index + 1])
        shape = tuple(int(n) for n in self.shapes[index])
        return self.data[start:stop].reshape(shape).astype(np.float32) / np.float32(255.0)

    def source(self, index: int) -> str:
        return self.sources[int(self.source_index[index])]

    def fingerprint(self) -> str:
        """sha256 of the lesions themselves: a replay refuses any other bank."""
        digest = hashlib.sha256()
        for array in (self.data, self.offsets, self.shapes, self.volumes_mm3):
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    def summary(self) -> dict[str, Any]:
        """Counts and volume quantiles, for a JSON summary beside the bank."""
        per_source = np.bincount(self.source_index, minlength=len(self.sources))
        quantiles = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]
        values = (
            np.quantile(self.volumes_mm3, quantiles).tolist()
            if len(self)
            else [math.nan] * len(quantiles)
        )
        return {
            "n_lesions": len(self),
            "fingerprint": self.fingerprint(),
            "total_volume_mm3": float(self.volumes_mm3.sum()),
            "volume_quantiles_mm3": {
                f"q{round(q * 100):02d}": float(v) for q, v in zip(quantiles, values, strict=True)
            },
            "stored_bytes": int(self.data.nbytes),
            "sources": {name: int(n) for name, n in zip(self.sources, per_source, strict=True)},
            "settings": dataclasses.asdict(self.settings),
        }


def _overlap_matrix(n_in: int, size: float) -> F64:
    """(n_out, n_in) overlap lengths (mm) of 1 mm output voxels with raw voxels of ``size``.

    The 1 mm grid covers the raw extent and is centred on it, so every row sums to at
    most 1 and every column to ``size``: the resampling preserves volume exactly.
    """
    extent = n_in * size
    n_out = max(1, math.ceil(extent - 1e-6))
    start = (extent - n_out) / 2.0
    out_lo = start + np.arange(n_out, dtype=np.float64)[:, None]
    in_lo = np.arange(n_in, dtype=np.float64)[None, :] * size
    overlap = np.minimum(out_lo + 1.0, in_lo + size) - np.maximum(out_lo, in_lo)
    return np.clip(overlap, 0.0, None)


def resample_fraction(crop: npt.NDArray[Any], sizes: Sequence[float] | F64) -> F64:
    """Partial-volume fraction on a 1 mm grid of a binary crop with voxel ``sizes`` (mm)."""
    result = np.asarray(crop, dtype=np.float64)
    for axis, size in enumerate(sizes):
        weights = _overlap_matrix(result.shape[axis], float(size))
        moved = np.tensordot(weights, result, axes=([1], [axis]))
        result = np.asarray(np.moveaxis(moved, 0, axis), dtype=np.float64)
    return np.clip(result, 0.0, 1.0)


def _bounding_box(mask: Bool) -> tuple[slice, ...] | None:
    spans = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hits.size == 0:
            return None
        spans.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(spans)


def _mask_lesions(
    path: PathLike, settings: LesionBankSettings
) -> list[tuple[int, float, npt.NDArray[np.uint8]]]:
    """(component id, raw volume, uint8 fraction in RAS order) of one mask's lesions."""
    image = nib.load(path)
    affine = np.asarray(image.affine, dtype=np.float64)  # type: ignore[attr-defined]
    raw = np.asanyarray(image.dataobj) > 0  # type: ignore[attr-defined]
    mask, _ = to_ras_axes(raw, affine)
    ornt = nib.orientations.io_orientation(affine)
    sizes = np.empty(3)
    sizes[ornt[:, 0].astype(int)] = voxel_sizes(affine)  # raw axis i becomes RAS axis ornt[i, 0]
    voxel_volume = float(np.prod(sizes))
    box = _bounding_box(mask)
    if box is None:
        return []
    # Labelling only the lesions' bounding box: a tenth of the raw grid or less.
    labels, _ = ndimage.label(mask[box], structure=np.ones((3, 3, 3), dtype=bool))
    lesions = []
    for component, where in enumerate(ndimage.find_objects(labels), start=1):
        if where is None:
            continue
        crop = np.pad(labels[where] == component, 1)
        volume = float(crop.sum()) * voxel_volume
        if not settings.min_volume_mm3 <= volume <= settings.max_volume_mm3:
            continue
        fraction = resample_fraction(crop, sizes)
        lesions.append((component, volume, np.round(fraction * 255.0).astype(np.uint8)))
    return lesions


def build_lesion_bank(
    mask_paths: Sequence[PathLike], settings: LesionBankSettings = LesionBankSettings()
) -> LesionBank:
    """Every 26-connected lesion of the masks within the volume limits, at 1 mm."""
    chunks: list[npt.NDArray[np.uint8]] = []
    shapes: list[tuple[int, ...]] = []
    volumes: list[float] = []
    source_index: list[int] = []
    component_ids: list[int] = []
    sources = tuple(Path(p).name for p in mask_paths)
    if len(set(sources)) != len(sources):
        raise ValueError("lesion masks must have distinct file names (they identify lesions)")
    for index, path in enumerate(mask_paths):
        for component, volume, fraction in _mask_lesions(path, settings):
            chunks.append(fraction.ravel())
            shapes.append(fraction.shape)
            volumes.append(volume)
            source_index.append(index)
            component_ids.append(component)
    sizes = [len(c) for c in chunks]
    return LesionBank(
        data=np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.uint8),
        offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        shapes=np.asarray(shapes, dtype=np.int32).reshape(-1, 3),
        volumes_mm3=np.asarray(volumes, dtype=np.float64),
        source_index=np.asarray(source_index, dtype=np.int32),
        component_ids=np.asarray(component_ids, dtype=np.int32),
        sources=sources,
        settings=settings,
    )


def save_lesion_bank(bank: LesionBank, npz_path: PathLike) -> Path:
    meta = {
        "version": BANK_VERSION,
        "sources": list(bank.sources),
        "settings": dataclasses.asdict(bank.settings),
    }
    with atomic_path(npz_path) as tmp, open(tmp, "wb") as stream:
        np.savez_compressed(
            stream,
            data=bank.data,
            offsets=bank.offsets,
            shapes=bank.shapes,
            volumes_mm3=bank.volumes_mm3,
            source_index=bank.source_index,
            component_ids=bank.component_ids,
            meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        )
    return Path(npz_path)


def load_lesion_bank(npz_path: PathLike) -> LesionBank:
    with np.load(npz_path, allow_pickle=False) as stored:
        meta = json.loads(stored["meta"].tobytes().decode())
        if meta.get("version") != BANK_VERSION:
            raise ValueError(f"{npz_path}: unsupported lesion bank version {meta.get('version')!r}")
        return LesionBank(
            data=stored["data"],
            offsets=stored["offsets"],
            shapes=stored["shapes"],
            volumes_mm3=stored["volumes_mm3"],
            source_index=stored["source_index"],
            component_ids=stored["component_ids"],
            sources=tuple(meta["sources"]),
            settings=LesionBankSettings(**meta["settings"]),
        )


# ------------------------------------------------------------------ painting settings


def _range(
    name: str, value: tuple[float, float], minimum: float, maximum: float = math.inf
) -> None:
    low, high = value
    if not minimum <= low <= high <= maximum:
        raise ValueError(
            f"{name} must be [low, high] with {minimum} <= low <= high <= "
            f"{maximum}, got {list(value)}"
        )


@dataclass(frozen=True)
class LesionPaintSettings:
    lesions_per_sample: tuple[int, int] = (1, 6)  # uniform integer, inclusive
    kinds: tuple[tuple[str, float], ...] = (
        ("new", 0.5),
        ("enlarging", 0.25),
        ("shrinking", 0.25),
    )  # relative probabilities
    contrast: tuple[float, float] = (1.25, 1.8)  # lesion / NAWM median, ~U
    contrast_cap_percentile: float = 99.5  # upper contrast <= this / NAWM
    border_sigma_mm: tuple[float, float] = (0.3, 1.0)  # Gaussian border, ~U
    edge_margin_mm: float = 6.0  # centres this far inside the brain
    min_volume_mm3: float = 10.0  # bank lesions painted: [min, max]
    max_volume_mm3: float = 1500.0  # larger would reach the cortex
    enlarge_volume_ratio: tuple[float, float] = (0.5, 3.0)  # bank lesion / grown component
    white_matter_percentiles: tuple[float, float] = (30.0, 80.0)  # NAWM band (brain)
    smoothing_sigma_mm: float = 2.0  # for the band and the noise texture
    hyperintense_percentile: float = 99.0  # existing lesions: above this...
    hyperintense_min_contrast: float = 1.25  # ...and above this x NAWM median
    hyperintense_min_voxels: int = 10
    augment: bool = True  # random flips and axial quarter turns
    min_labelled_voxels: int = 3  # redraw lesions that label fewer
    min_label_increase: float = 0.25  # x (target - NAWM median), see LABEL_RULE
    max_attempts: int = 50  # draws per lesion before giving up

    def __post_init__(self) -> None:
        low, high = self.lesions_per_sample
        if not 0 <= low <= high:
            raise ValueError(
                f"lesions_per_sample must be [low, high] with 0 <= low <= high, "
                f"got {list(self.lesions_per_sample)}"
            )
        names = [name for name, _ in self.kinds]
        if len(set(names)) != len(names) or not set(names) <= set(KINDS):
            raise ValueError(f"kinds must name each of {list(KINDS)} at most once, got {names}")
        if any(p < 0 for _, p in self.kinds) or sum(p for _, p in self.kinds) <= 0:
            raise ValueError("kind probabilities must be >= 0 and not all 0")
        _range("contrast", self.contrast, 1.0)
        _range("border_sigma_mm", self.border_sigma_mm, 0.0)
        _range("enlarge_volume_ratio", self.enlarge_volume_ratio, 0.0)
        _range("white_matter_percentiles", self.white_matter_percentiles, 0.0, 100.0)
        _range("volume_mm3", (self.min_volume_mm3, self.max_volume_mm3), 0.0)
        for name in ("edge_margin_mm", "smoothing_sigma_mm"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("contrast_cap_percentile", "hyperintense_percentile"):
            if not 0 <= getattr(self, name) <= 100:
                raise ValueError(f"{name} must be in [0, 100], got {getattr(self, name)}")
        if not 0.0 <= self.min_label_increase <= 1.0:
            raise ValueError(f"min_label_increase must be in [0, 1], got {self.min_label_increase}")
        if self.max_attempts < 1 or self.min_labelled_voxels < 1:
            raise ValueError("max_attempts and min_labelled_voxels must be >= 1")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LesionPaintSettings:
        """From plain YAML types (lists, a kind -> probability mapping); missing keys take
        the defaults. Workflow keys (enabled, samples_per_subject, bank) are ignored."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(config) - fields - {"enabled", "samples_per_subject", "bank"}
        if unknown:
            raise ValueError(f"unknown synthesis.lesions settings: {sorted(unknown)}")
        values: dict[str, Any] = {}
        for name in fields & set(config):
            value = config[name]
            if name == "kinds":
                value = tuple((str(k), float(p)) for k, p in dict(value).items())
            elif name == "lesions_per_sample":
                value = tuple(int(v) for v in value)
            elif isinstance(value, list | tuple):
                value = tuple(float(v) for v in value)
            elif name in ("augment",):
                value = bool(value)
            elif name in ("hyperintense_min_voxels", "min_labelled_voxels", "max_attempts"):
                value = int(value)
            else:
                value = float(value)
            values[name] = value
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types; :meth:`from_config` reads it back to equal settings."""
        plain: dict[str, Any] = {}
        for key, value in dataclasses.asdict(self).items():
            if key == "kinds":
                plain[key] = {name: p for name, p in self.kinds}
            elif isinstance(value, tuple):
                plain[key] = list(value)
            else:
                plain[key] = value
        return plain


def lesion_paint_settings(config: Mapping[str, Any]) -> LesionPaintSettings:
    return LesionPaintSettings.from_config(config)


def lesion_bank_settings(config: Mapping[str, Any]) -> LesionBankSettings:
    """From the ``bank`` sub-mapping of ``synthesis.lesions`` (missing keys: defaults)."""
    return LesionBankSettings(**{k: float(v) for k, v in dict(config).items()})


def paint_seed(seed: int, subject: str, sample: int) -> list[int]:
    """Entropy of one painted sample: config seed, subject, sample index and a tag."""
    return [int(seed), zlib.crc32(subject.encode()), int(sample), SEED_TAG]


# ------------------------------------------------------------------ scan statistics


@dataclass(eq=False)
class ScanStatistics:
    """What painting needs to know about one time point (derived, not drawn)."""

    texture: F32  # image - smooth(image): the scan's own noise texture
    candidates: Bool  # eroded brain, in the NAWM band, not hyperintense
    hyperintense: Bool  # existing bright components (>= min voxels)
    nawm_median: float
    contrast_cap: float  # the cap percentile of the brain
    ceiling: float  # the brain's maximum: painted values are clipped to it
    hyperintense_threshold: float
    band: tuple[float, float]

    def derived(self) -> dict[str, Any]:
        return {
            "nawm_median": self.nawm_median,
            "contrast_cap": self.contrast_cap,
            "ceiling": self.ceiling,
            "hyperintense_threshold": self.hyperintense_threshold,
            "white_matter_band": list(self.band),
            "candidate_voxels": int(self.candidates.sum()),
            "hyperintense_voxels": int(self.hyperintense.sum()),
        }


def scan_statistics(
    image: F32, brain: Bool, interior: Bool, settings: LesionPaintSettings
) -> ScanStatistics:
    values = image[brain]
    if values.size == 0:
        raise ValueError("the brain mask is empty")
    smooth = ndimage.gaussian_filter(image, settings.smoothing_sigma_mm).astype(np.float32)
    low, high = np.percentile(values, settings.white_matter_percentiles)
    band = interior & (smooth >= low) & (smooth <= high)
    nawm = float(np.median(image[band])) if band.any() else float(np.median(values))
    if nawm <= 0:
        # Seen on a real scan whose normalised brain is 0 in half its mask: lesion
        # contrast relative to white matter means nothing there.
        raise ValueError(
            f"the normal-appearing white matter's median intensity is {nawm:g}: "
            "the scan's intensities or brain mask look broken (most of the "
            "brain at 0?); check its preprocessing QC"
        )
    threshold = max(
        float(np.percentile(values, settings.hyperintense_percentile)),
        settings.hyperintense_min_contrast * nawm,
    )
    # >=: the preprocessed scans are clipped at their 99th percentile, so the brightest
    # voxels all share one value.
    bright = brain & (image >= threshold)
    labels, n = ndimage.label(bright, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= settings.hyperintense_min_voxels
    keep[0] = False
    hyperintense = keep[labels]
    return ScanStatistics(
        texture=(image - smooth).astype(np.float32),
        candidates=band & ~hyperintense,
        hyperintense=hyperintense,
        nawm_median=nawm,
        contrast_cap=float(np.percentile(values, settings.contrast_cap_percentile)),
        ceiling=float(values.max()),
        hyperintense_threshold=threshold,
        band=(float(low), float(high)),
    )


# ------------------------------------------------------------------ one lesion


@dataclass(frozen=True)
class LesionChoice:
    """The random choices that make one painted lesion (all in the JSON record)."""

    kind: str
    bank_index: int
    centre: tuple[int, int, int]  # voxel, image array axes
    flips: tuple[bool, bool, bool]  # along R, A, S (before the quarter turns)
    quarter_turns: int  # about the S axis (in the axial plane)
    border_sigma_mm: float
    contrast: float
    target: float  # painted intensity, contrast * NAWM median


def _box_kernel(width: float) -> F64:
    """Weights of a box of ``width`` voxels sampled at integer offsets (exact overlaps)."""
    half = width / 2.0
    reach = math.ceil(half - 0.5)
    offsets = np.arange(-reach, reach + 1, dtype=np.float64)
    weights = np.clip(np.minimum(offsets + 0.5, half) - np.maximum(offsets - 0.5, -half), 0.0, None)
    return weights / weights.sum()


def lesion_alpha(
    bank: LesionBank,
    choice: LesionChoice,
    brain: Bool,
    image_axes: npt.NDArray[np.float64],
    *,
    slice_thickness_mm: float,
    through_plane_axis: int,
) -> tuple[tuple[slice, ...], F32]:
    """The lesion's final alpha on its box of the image grid, and the box."""
    fraction = bank.fraction(choice.bank_index)
    for axis, flip in enumerate(choice.flips):
        if flip:
            fraction = np.flip(fraction, axis)
    fraction = np.rot90(fraction, choice.quarter_turns, axes=(0, 1))
    back = nib.orientations.ornt_transform(RAS, image_axes)
    fraction = np.asarray(nib.orientations.apply_orientation(fraction, back), dtype=np.float32)
    sigma = choice.border_sigma_mm
    pad = math.ceil(4.0 * sigma) + math.ceil(slice_thickness_mm / 2.0) + 1
    alpha = np.pad(fraction, pad)
    if sigma > 0:
        alpha = ndimage.gaussian_filter(alpha, sigma, truncate=4.0, mode="constant")
    if slice_thickness_mm > 1.0:
        alpha = ndimage.convolve1d(
            alpha,
            _box_kernel(slice_thickness_mm).astype(np.float32),
            axis=through_plane_axis,
            mode="constant",
        )
    # Centre of the crop onto the drawn centre voxel; the part outside the grid is cut.
    box, crop = [], []
    for axis, n in enumerate(alpha.shape):
        start = choice.centre[axis] - n // 2
        lo, hi = max(start, 0), min(start + n, brain.shape[axis])
        if hi <= lo:
            return tuple(slice(0, 0) for _ in range(3)), np.zeros((0, 0, 0), np.float32)
        box.append(slice(lo, hi))
        crop.append(slice(lo - start, hi - start))
    region = tuple(box)
    alpha = np.clip(alpha[tuple(crop)], 0.0, 1.0) * brain[region]
    return region, alpha.astype(np.float32)


def painted_values(current: F32, alpha: F32, target: float, texture: F32, ceiling: float) -> F32:
    """Target intensity with the scan's own texture, blended by alpha; never darker."""
    painted = (1.0 - alpha) * current + alpha * (np.float32(target) + texture)
    return np.clip(np.maximum(current, painted), None, np.float32(ceiling)).astype(np.float32)


# ------------------------------------------------------------------ a painted pair


@dataclass
class PaintedPair:
    baseline: F32
    followup: F32
    label: npt.NDArray[np.uint8]
    record: dict[str, Any]


def _image_axes(affine: npt.NDArray[np.floating[Any]] | None, shape: tuple[int, ...]) -> F64:
    if affine is None:
        return np.asarray(RAS, dtype=np.float64)  # arrays already in RAS axis order
    sizes = voxel_sizes(np.asarray(affine, dtype=np.float64))
    if not np.allclose(sizes, 1.0, atol=0.02):
        raise ValueError(f"painting needs a 1 mm grid, got voxel sizes {sizes.tolist()}")
    return np.asarray(nib.orientations.io_orientation(np.asarray(affine)), dtype=np.float64)


class _Painter:
    """State shared by drawing and replaying: inputs, statistics, what is painted."""

    def __init__(
        self,
        baseline: npt.NDArray[Any],
        followup: npt.NDArray[Any],
        brain_mask: npt.NDArray[Any],
        bank: LesionBank,
        settings: LesionPaintSettings,
        image_axes: F64,
        slice_thickness_mm: float,
        through_plane_axis: int,
    ) -> None:
        if not np.asarray(baseline).shape == np.asarray(followup).shape == brain_mask.shape:
            raise ValueError("baseline, follow-up and brain mask must share one grid")
        if not 0 <= through_plane_axis <= 2 or slice_thickness_mm <= 0:
            raise ValueError("through_plane_axis must be 0, 1 or 2 and the slice thickness > 0")
        self.bank, self.settings, self.image_axes = bank, settings, image_axes
        self.thickness, self.axis = float(slice_thickness_mm), int(through_plane_axis)
        self.brain = np.asarray(brain_mask) > 0
        self.images = {
            "baseline": np.array(baseline, dtype=np.float32),
            "followup": np.array(followup, dtype=np.float32),
        }
        self.interior = ndimage.distance_transform_edt(self.brain) > settings.edge_margin_mm
        self.stats = {
            tp: scan_statistics(self.images[tp], self.brain, self.interior, settings)
            for tp in TIMEPOINTS
        }
        self.label = np.zeros(self.brain.shape, dtype=np.uint8)
        self.occupied = np.zeros(self.brain.shape, dtype=bool)

    def evaluate(self, choice: LesionChoice) -> tuple[tuple[slice, ...], F32, F32, Bool, bool]:
        """(box, alpha, painted values and label on the box, overlaps an earlier lesion)."""
        region, alpha = lesion_alpha(
            self.bank,
            choice,
            self.brain,
            self.image_axes,
            slice_thickness_mm=self.thickness,
            through_plane_axis=self.axis,
        )
        timepoint = PAINTED_TIMEPOINT[choice.kind]
        stats, current = self.stats[timepoint], self.images[timepoint][region]
        values = painted_values(current, alpha, choice.target, stats.texture[region], stats.ceiling)
        # Voxels whose surroundings are already about as bright as the target barely
        # change (painting never darkens): they are not labelled.
        least = self.settings.min_label_increase * (choice.target - stats.nawm_median)
        label = (
            (alpha >= 0.5) & ~stats.hyperintense[region] & (values - current >= np.float32(least))
        )
        overlaps = bool((alpha > 0).any() and self.occupied[region][alpha > 0].any())
        return region, alpha, values, label, overlaps

    def apply(
        self, choice: LesionChoice, region: tuple[slice, ...], alpha: F32, values: F32, label: Bool
    ) -> dict[str, Any]:
        timepoint = PAINTED_TIMEPOINT[choice.kind]
        self.images[timepoint][region] = values
        self.label[region] |= label.astype(np.uint8)
        # One voxel of clearance around every lesion: supports never touch.
        self.occupied[region] |= ndimage.binary_dilation(
            alpha > 0, structure=np.ones((3, 3, 3), dtype=bool)
        )
        return {
            "painted_timepoint": timepoint,
            "box": [[s.start, s.stop] for s in region],
            "volume_painted_mm3": float(alpha.sum(dtype=np.float64)),
            "labelled_voxels": int(label.sum()),
        }


def _eligible_lesions(bank: LesionBank, settings: LesionPaintSettings) -> npt.NDArray[np.intp]:
    eligible = np.flatnonzero(
        (bank.volumes_mm3 >= settings.min_volume_mm3)
        & (bank.volumes_mm3 <= settings.max_volume_mm3)
    )
    if eligible.size == 0:
        raise ValueError(
            f"no lesion of the bank is within [{settings.min_volume_mm3}, "
            f"{settings.max_volume_mm3}] mm3"
        )
    return eligible


class _Growable:
    """Existing hyperintense components an enlargement can grow from."""

    def __init__(self, stats: ScanStatistics, interior: Bool) -> None:
        self.labels, n = ndimage.label(stats.hyperintense, structure=np.ones((3, 3, 3), dtype=bool))
        self.sizes = np.bincount(self.labels.ravel(), minlength=n + 1)
        inside = np.bincount(self.labels[interior].ravel(), minlength=n + 1)
        self.ids = np.flatnonzero(inside[1:] > 0) + 1  # centres must stay in the interior
        self.objects = ndimage.find_objects(self.labels)
        self.interior = interior

    def border_voxel(self, component: int, rng: np.random.Generator) -> tuple[int, int, int]:
        where = self.objects[component - 1]
        assert where is not None
        inside = np.pad(self.labels[where] == component, 1)
        border = inside & ~ndimage.binary_erosion(inside)
        border = border[1:-1, 1:-1, 1:-1] & self.interior[where]
        if not border.any():  # only its core is in the interior
            border = (self.labels[where] == component) & self.interior[where]
        voxels = np.argwhere(border)
        pick = voxels[int(rng.integers(len(voxels)))]
        return (
            int(pick[0] + where[0].start),
            int(pick[1] + where[1].start),
            int(pick[2] + where[2].start),
        )


def paint_pair(
    baseline: npt.NDArray[Any],
    followup: npt.NDArray[Any],
    brain_mask: npt.NDArray[Any],
    bank: LesionBank,
    settings: LesionPaintSettings,
    entropy: list[int],
    *,
    slice_thickness_mm: float = 1.0,
    through_plane_axis: int = 2,
    affine: npt.NDArray[np.floating[Any]] | None = None,
) -> PaintedPair:
    """Paint real lesion shapes into a preprocessed no-change pair (1 mm grid).

    ``brain_mask`` is the intersection of the two time points' masks. ``affine`` (the
    pair's) orients the lesions, which the bank keeps in RAS axis order; without it the
    arrays are taken to be in RAS axis order. ``slice_thickness_mm`` and
    ``through_plane_axis`` (image array axes) describe the raw acquisition.
    """
    image_axes = _image_axes(affine, np.shape(brain_mask))
    painter = _Painter(
        baseline,
        followup,
        np.asarray(brain_mask),
        bank,
        settings,
        image_axes,
        slice_thickness_mm,
        through_plane_axis,
    )
    rng = np.random.default_rng(np.random.SeedSequence(entropy))
    eligible = _eligible_lesions(bank, settings)
    names = [name for name, _ in settings.kinds]
    probabilities = np.asarray([p for _, p in settings.kinds], dtype=np.float64)
    probabilities /= probabilities.sum()
    growable = _Growable(painter.stats["followup"], painter.interior)
    n_lesions = int(
        rng.integers(settings.lesions_per_sample[0], settings.lesions_per_sample[1] + 1)
    )
    lesions: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for _ in range(n_lesions):
        drawn_kind = names[
            min(
                int(np.searchsorted(np.cumsum(probabilities), rng.random(), side="right")),
                len(names) - 1,
            )
        ]
        kind, fallback = drawn_kind, None
        if kind == "enlarging" and growable.ids.size == 0:
            kind, fallback = "new", "enlarging -> new: the follow-up has no hyperintensity"
        stats = painter.stats[PAINTED_TIMEPOINT[kind]]
        candidates = np.flatnonzero(stats.candidates & ~painter.occupied)
        if kind != "enlarging" and candidates.size == 0:
            skipped.append({"drawn_kind": drawn_kind, "reason": "no candidate centre left"})
            continue
        for attempt in range(1, settings.max_attempts + 1):
            grown: dict[str, Any] | None = None
            centre: tuple[int, int, int]
            if kind == "enlarging":
                component = int(growable.ids[int(rng.integers(growable.ids.size))])
                centre = growable.border_voxel(component, rng)
                size = float(growable.sizes[component])  # 1 mm voxels: mm3
                low, high = (r * size for r in settings.enlarge_volume_ratio)
                volumes = bank.volumes_mm3[eligible]
                pool = eligible[(volumes >= low) & (volumes <= high)]
                if pool.size == 0:  # nearest in volume
                    pool = eligible[[int(np.argmin(np.abs(volumes - (low + high) / 2)))]]
                index = int(pool[int(rng.integers(pool.size))])
                grown = {"component_voxels": int(size), "border_voxel": list(centre)}
            else:
                flat = int(candidates[int(rng.integers(candidates.size))])
                i, j, k = np.unravel_index(flat, painter.brain.shape)
                centre = (int(i), int(j), int(k))
                index = int(eligible[int(rng.integers(eligible.size))])
            flips = (bool(rng.random() < 0.5), bool(rng.random() < 0.5), bool(rng.random() < 0.5))
            turns = int(rng.integers(4))
            if not settings.augment:
                flips, turns = (False, False, False), 0
            sigma = uniform(rng, *settings.border_sigma_mm)
            high_contrast = max(
                settings.contrast[0],
                min(settings.contrast[1], stats.contrast_cap / stats.nawm_median),
            )
            contrast = uniform(rng, settings.contrast[0], high_contrast)
            choice = LesionChoice(
                kind=kind,
                bank_index=index,
                centre=centre,
                flips=flips,
                quarter_turns=turns,
                border_sigma_mm=sigma,
                contrast=contrast,
                target=contrast * stats.nawm_median,
            )
            region, alpha, values, label, overlaps = painter.evaluate(choice)
            if overlaps or int(label.sum()) < settings.min_labelled_voxels:
                continue
            outcome = painter.apply(choice, region, alpha, values, label)
            lesions.append(
                {
                    **_choice_dict(choice),
                    "source": bank.source(index),
                    "component_id": int(bank.component_ids[index]),
                    "bank_volume_mm3": float(bank.volumes_mm3[index]),
                    "drawn_kind": drawn_kind,
                    "fallback": fallback,
                    "grown_from": grown,
                    "attempts": attempt,
                    **outcome,
                }
            )
            break
        else:
            skipped.append(
                {
                    "drawn_kind": drawn_kind,
                    "reason": "no placement without "
                    f"overlap and with >= {settings.min_labelled_voxels} labelled "
                    f"voxels in {settings.max_attempts} attempts",
                }
            )
    record = {
        "version": RECORD_VERSION,
        "method": "lesion-paint",
        "seed_entropy": list(entropy),
        "settings": settings.to_dict(),
        "bank": {"fingerprint": bank.fingerprint(), "n_lesions": len(bank)},
        "slice_profile": {
            "thickness_mm": float(slice_thickness_mm),
            "through_plane_axis": int(through_plane_axis),
        },
        "image_axes_ras": image_axes.tolist(),
        "derived": {tp: painter.stats[tp].derived() for tp in TIMEPOINTS},
        "n_drawn": n_lesions,
        "lesions": lesions,
        "skipped": skipped,
        "label_voxels": int(painter.label.sum()),
        "label_rule": LABEL_RULE,
    }
    return PaintedPair(
        painter.images["baseline"], painter.images["followup"], painter.label, record
    )


def _choice_dict(choice: LesionChoice) -> dict[str, Any]:
    return {
        "kind": choice.kind,
        "bank_index": choice.bank_index,
        "centre": list(choice.centre),
        "flips": list(choice.flips),
        "quarter_turns": choice.quarter_turns,
        "border_sigma_mm": choice.border_sigma_mm,
        "contrast": choice.contrast,
        "target": choice.target,
    }


def replay_painted(
    record: Mapping[str, Any],
    baseline: npt.NDArray[Any],
    followup: npt.NDArray[Any],
    brain_mask: npt.NDArray[Any],
    bank: LesionBank,
) -> PaintedPair:
    """Rebuild a painted pair from its record (same inputs and bank): identical voxels."""
    if record.get("version") != RECORD_VERSION or record.get("method") != "lesion-paint":
        raise ValueError(f"not a lesion-paint record of version {RECORD_VERSION}")
    stored_bank = record["bank"]
    if stored_bank["n_lesions"] != len(bank) or stored_bank["fingerprint"] != bank.fingerprint():
        raise ValueError(
            f"the lesion bank differs from the one that made this sample "
            f"({len(bank)} lesions vs {stored_bank['n_lesions']}; fingerprint "
            f"{bank.fingerprint()[:12]} vs {stored_bank['fingerprint'][:12]})"
        )
    settings = LesionPaintSettings.from_config(record["settings"])
    profile = record["slice_profile"]
    painter = _Painter(
        baseline,
        followup,
        np.asarray(brain_mask),
        bank,
        settings,
        np.asarray(record["image_axes_ras"], dtype=np.float64),
        profile["thickness_mm"],
        profile["through_plane_axis"],
    )
    for tp in TIMEPOINTS:
        derived, stored = painter.stats[tp].derived(), record["derived"][tp]
        if any(
            not np.isclose(derived[k], stored[k], rtol=1e-6, atol=0.0)
            for k in ("nawm_median", "contrast_cap", "ceiling", "candidate_voxels")
        ):
            raise ValueError(
                f"the {tp} image or brain mask differs from the one that made this sample"
            )
    for lesion in record["lesions"]:
        i, j, k = (int(v) for v in lesion["centre"])
        flip_r, flip_a, flip_s = (bool(v) for v in lesion["flips"])
        choice = LesionChoice(
            kind=lesion["kind"],
            bank_index=int(lesion["bank_index"]),
            centre=(i, j, k),
            flips=(flip_r, flip_a, flip_s),
            quarter_turns=int(lesion["quarter_turns"]),
            border_sigma_mm=float(lesion["border_sigma_mm"]),
            contrast=float(lesion["contrast"]),
            target=float(lesion["target"]),
        )
        region, alpha, values, label, _ = painter.evaluate(choice)
        painter.apply(choice, region, alpha, values, label)
    return PaintedPair(
        painter.images["baseline"], painter.images["followup"], painter.label, dict(record)
    )


# ------------------------------------------------------------------ file-level steps


def slice_profile_from_raw(
    raw_affine: npt.NDArray[np.floating[Any]], affine: npt.NDArray[np.floating[Any]]
) -> tuple[float, int]:
    """(raw slice thickness in mm, the preprocessed axis most parallel to the raw
    through-plane direction)."""
    from mschange.synthesis.rescan import through_plane_axis

    raw = np.asarray(raw_affine, dtype=np.float64)
    raw_axis = through_plane_axis(raw)
    raw_sizes = voxel_sizes(raw)
    direction = raw[:3, raw_axis] / raw_sizes[raw_axis]
    columns = np.asarray(affine, dtype=np.float64)[:3, :3]
    cosines = np.abs(direction @ (columns / voxel_sizes(np.asarray(affine, np.float64))))
    return float(raw_sizes[raw_axis]), int(np.argmax(cosines))


def build_lesion_bank_step(
    masks: Sequence[PathLike],
    npz_path: PathLike,
    summary_json: PathLike,
    *,
    min_volume_mm3: float,
    max_volume_mm3: float,
) -> LesionBank:
    """Rule build_lesion_bank: the bank of real lesion shapes, and its summary (JSON)."""
    import logging

    from mschange.io import save_json

    bank = build_lesion_bank(
        masks,
        LesionBankSettings(
            min_volume_mm3=float(min_volume_mm3), max_volume_mm3=float(max_volume_mm3)
        ),
    )
    save_lesion_bank(bank, npz_path)
    save_json(
        {**bank.summary(), "masks": [str(m) for m in masks], "fingerprint": bank.fingerprint()},
        summary_json,
    )
    logging.getLogger(__name__).info("lesion bank: %d lesions from %d masks", len(bank), len(masks))
    return bank


def paint_lesions_step(
    timepoints: Mapping[str, PathLike],
    masks: Sequence[PathLike],
    bank_npz: PathLike,
    outputs: Mapping[str, Sequence[PathLike]],
    *,
    subject: str,
    seed: int,
    settings: LesionPaintSettings,
    raw_followup: PathLike | None,
) -> None:
    """Write painted samples of one no-change pair.

    ``timepoints`` maps baseline/followup to the preprocessed scans (one 1 mm grid);
    ``outputs`` maps baseline, followup, label and record to one path per sample.
    ``raw_followup`` gives the slice profile (None: isotropic).
    """
    import logging

    from mschange.io import brain_intersection, load_float_image, save_json, save_nifti

    log = logging.getLogger(__name__)
    bank = load_lesion_bank(bank_npz)
    bank_digest = file_sha256(bank_npz)
    (base, base_image), (follow, image) = (load_float_image(timepoints[tp]) for tp in TIMEPOINTS)
    if not np.allclose(base_image.affine, image.affine, atol=1e-3):
        raise ValueError(
            f"{subject}: the preprocessed baseline and follow-up are on different grids"
        )
    brain = brain_intersection(*masks)
    thickness, axis = 1.0, 2
    if raw_followup is not None:
        thickness, axis = slice_profile_from_raw(
            nib.load(raw_followup).affine,  # type: ignore[attr-defined]
            image.affine,
        )
    for index in range(len(outputs["label"])):
        entropy = paint_seed(seed, subject, index)
        pair = paint_pair(
            base,
            follow,
            brain,
            bank,
            settings,
            entropy,
            slice_thickness_mm=thickness,
            through_plane_axis=axis,
            affine=image.affine,
        )
        for tp, data in (("baseline", pair.baseline), ("followup", pair.followup)):
            save_nifti(data, image.affine, outputs[tp][index], header=image.header)
        save_nifti(
            pair.label, image.affine, outputs["label"][index], header=image.header, dtype=np.uint8
        )
        record = {
            "subject": subject,
            "sample": index,
            "config_seed": seed,
            **pair.record,
            "inputs": {tp: str(timepoints[tp]) for tp in TIMEPOINTS},
            "brain_masks": [str(m) for m in masks],
            "raw_followup": None if raw_followup is None else str(raw_followup),
            "lesion_bank": {"path": str(bank_npz), "sha256": bank_digest},
        }
        save_json(record, outputs["record"][index])
        log.info(
            "%s sample %d: %d lesion(s) painted (%s), %d skipped, %d labelled voxels",
            subject,
            index,
            len(pair.record["lesions"]),
            ", ".join(lesion["kind"] for lesion in pair.record["lesions"]),
            len(pair.record["skipped"]),
            pair.record["label_voxels"],
        )


def replay_lesions_step(record_json: PathLike, out_dir: PathLike) -> dict[str, Any]:
    """Rebuild a painted sample from its JSON record into ``out_dir`` (inputs and bank
    read from the paths it names); refuses when the bank file changed."""
    from mschange.io import brain_intersection, load_float_image, save_nifti

    record = json.loads(Path(record_json).read_text())
    bank_path = record["lesion_bank"]["path"]
    if file_sha256(bank_path) != record["lesion_bank"]["sha256"]:
        raise ValueError(
            f"{bank_path} is not the lesion bank that made {record_json} "
            "(checksum differs; was it rebuilt?)"
        )
    (base, _), (follow, image) = (load_float_image(record["inputs"][tp]) for tp in TIMEPOINTS)
    brain = brain_intersection(*record["brain_masks"])
    pair = replay_painted(record, base, follow, brain, load_lesion_bank(bank_path))
    stem = Path(record_json).name.removesuffix(".json").removesuffix("_desc-lesions")
    out = Path(out_dir)
    written = {
        "baseline": out / f"{stem}_desc-baseline_FLAIR.nii.gz",
        "followup": out / f"{stem}_desc-followup_FLAIR.nii.gz",
        "label": out / f"{stem}_desc-change_mask.nii.gz",
    }
    save_nifti(pair.baseline, image.affine, written["baseline"], header=image.header)
    save_nifti(pair.followup, image.affine, written["followup"], header=image.header)
    save_nifti(pair.label, image.affine, written["label"], header=image.header, dtype=np.uint8)
    return {**record, "written": {k: str(v) for k, v in written.items()}}
