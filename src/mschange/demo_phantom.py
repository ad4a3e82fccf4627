"""The demo cohort's images: FLAIR-like heads with known lesion changes, deterministic.

Each subject is built from the MNI152 2009a templates that nilearn's wheel ships
(no download). The recipe:

1. Template space: tissue fractions (GM, WM, CSF) inside the filled brain mask,
   and a synthetic head around it (CSF rim, bone, scalp) from the distance to a
   smoothed brain hull, all on a grid padded so the whole head fits.
2. Subject space: the template scene pushed through a random anisotropic scaling
   and a smooth random displacement, with subject-specific tissue intensities and
   a mild texture. Lesions are ellipsoids defined analytically in subject mm.
3. Time points: the subject scene resampled through its own rigid motion onto the
   (shared) output grid, lesions painted where that grid's voxel centres fall in
   a lesion, then a contrast change (gamma), a bias field and Rician noise
   (:mod:`mschange.artefacts`, the acquisition effects the rescan shares).

Because lesions are analytic, the change mask on the follow-up grid is exact.
Every random choice is written to ``sub-<id>_desc-synthesis_params.json``. The
subjects' ids and file names are :mod:`mschange.demo_cohort`'s.

Coordinate conventions (also stored in the JSON):

* world mm = MNI mm; every output image has the same RAS affine (``grid_affine``);
* a time point's voxel ``i`` shows the subject-space point
  ``p = voxel_to_subject @ [i, 1]`` with
  ``p = centre + R (x - centre) + translation`` for its world position ``x``;
* subject point ``p`` shows template point
  ``q = centre + S (p - centre) + u(p)`` (S = diagonal scaling, u = displacement).
"""

from __future__ import annotations

import functools
import importlib.util
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from mschange.artefacts import (
    add_rician_noise_inplace,
    apply_gamma,
    bias_field_on_axes,
    draw_bias_span,
    draw_rigid_motion,
    rigid_mm_transform,
    uniform,
)
from mschange.demo_cohort import DemoSubjectPaths, demo_subject_paths
from mschange.io import save_json, save_nifti
from mschange.subject_id import is_subject_id

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

TEMPLATES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
PAD_MM = 20.0  # the template FOV is tight: leave room for the head and the motion
REFERENCE_LEVEL = 1000.0  # gamma is applied to intensities divided by this
# Nominal tissue intensities (arbitrary units, scalp ~1000); each subject varies ±10%.
NOMINAL_LEVELS = {
    "csf": 180.0,
    "wm": 520.0,
    "gm": 700.0,
    "lesion": 950.0,
    "bone": 70.0,
    "scalp": 1000.0,
}
MAX_HEAD_MM = 4.0 + 7.0 + 6.0  # thickest CSF rim + bone + scalp
MAX_SCALING, MAX_DISPLACEMENT_MM = 0.05, 4.0  # subject deformation limits
TEXTURE_SIGMA_MM = 1.5
CANDIDATE_SPACING_MM = 2.0  # lesion centres are drawn from a grid this fine (then jittered)
MIN_LESION_MM3, MAX_LESION_MM3 = 3.0, 2000.0
CHANGE_TYPE = {"new": 1, "enlarging": 2, "shrinking": 3}


# --------------------------------------------------------------------------- template scene

Box = tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]  # (lo, hi) voxel corners, hi exclusive


def _bbox(mask: npt.NDArray[np.bool_]) -> Box:
    lo, hi = [], []
    for axis in range(3):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        lo.append(hits[0] if hits.size else 0)
        hi.append(hits[-1] + 1 if hits.size else 0)
    return np.array(lo), np.array(hi)


def _grow(box: Box, margin: int, shape: tuple[int, ...]) -> Box:
    return np.maximum(box[0] - margin, 0), np.minimum(box[1] + margin, np.array(shape))


def _crop(box: Box) -> tuple[slice, slice, slice]:
    lo, hi = box
    return slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2])


@dataclass(frozen=True)
class _Scene:
    """Subject-independent maps on the padded demo grid, in template (MNI) space."""

    voxel_size: float
    affine: F64
    shape: tuple[int, int, int]
    centre: F64  # brain centroid, world mm: the centre of scaling and of the motion
    brain: F32  # brain fraction (partial volume where voxels are coarser than 1 mm)
    gm: F32  # tissue fractions inside the brain, gm + wm + csf = 1 there
    wm: F32
    csf: F32
    hull_distance: F32  # mm outside the smoothed brain hull, 0 inside
    head_box: Box  # where a head can be non-zero (thickest layers)
    brain_box: Box
    stride: int  # the candidate grid is the demo grid taken every `stride` voxels
    cand_wm: F32  # on the candidate grid: WM fraction,
    cand_depth: F32  # mm inside the brain,
    cand_ventricle: F32  # mm to deep (ventricular) CSF


def _template_dir() -> Path:
    # find_spec locates the wheel without importing nilearn (which takes seconds).
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nilearn is not installed; the demo needs its MNI152 templates")
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    missing = [name for name in TEMPLATES.values() if not (folder / name).is_file()]
    if missing:
        raise RuntimeError(f"nilearn's MNI152 templates are missing from {folder}: {missing}")
    return folder


def _load_template(path: Path) -> tuple[F32, F64]:
    image = nib.load(path)
    if not isinstance(image, nib.Nifti1Image):
        raise RuntimeError(f"{path} is not a NIfTI-1 image")
    return (np.asarray(image.dataobj, dtype=np.float32), np.asarray(image.affine, dtype=np.float64))


def _to_grid(
    data: F32,
    template_affine: F64,
    grid_affine: F64,
    shape: tuple[int, int, int],
    voxel_size: float,
) -> F32:
    """Resample a 1 mm template map onto the demo grid (linear, 0 outside)."""
    to_template = np.linalg.inv(template_affine) @ grid_affine
    matrix, offset = to_template[:3, :3], to_template[:3, 3]
    if np.allclose(matrix, np.eye(3)) and np.allclose(offset, np.round(offset)):
        # Same voxel size, integer shift: a crop/pad is exact and 10x faster.
        out = np.zeros(shape, dtype=np.float32)
        start = np.round(offset).astype(int)
        src = tuple(
            slice(max(s, 0), min(s + n, m))
            for s, n, m in zip(start, shape, data.shape, strict=True)
        )
        dst = tuple(slice(sl.start - s, sl.stop - s) for sl, s in zip(src, start, strict=True))
        out[dst] = data[src]
        return out
    if voxel_size > 1.0:  # anti-alias before taking fewer samples
        data = ndi.gaussian_filter(data, math.sqrt(voxel_size**2 - 1.0) / 2.355)
    return ndi.affine_transform(
        data, matrix, offset, output_shape=shape, order=1, output=np.float32, cval=0.0
    )


def _upsample(coarse: F32, factor: int, shape: tuple[int, int, int]) -> F32:
    """Linear upsampling of a map sampled every ``factor`` voxels of ``shape``."""
    out = coarse
    for axis, n in enumerate(shape):
        position = np.arange(n) / factor
        lo = np.minimum(position.astype(int), out.shape[axis] - 1)
        hi = np.minimum(lo + 1, out.shape[axis] - 1)
        weight = (
            (position - lo).astype(np.float32).reshape([-1 if a == axis else 1 for a in range(3)])
        )
        low = np.take(out, lo, axis=axis)
        out = low + (np.take(out, hi, axis=axis) - low) * weight
    return out


@functools.lru_cache(maxsize=2)
def _scene(voxel_size: float) -> _Scene:
    folder = _template_dir()
    t1, t_affine = _load_template(folder / TEMPLATES["t1"])
    brain_1mm = ndi.binary_fill_holes(t1 > 0).astype(np.float32)
    del t1

    # Grid: the template's field of view plus PAD_MM each side, centred on it.
    t_shape = np.array(brain_1mm.shape)
    t_lo = t_affine[:3, 3]
    t_hi = (t_affine @ np.append(t_shape - 1, 1.0))[:3]
    extent = (t_hi - t_lo) + 2 * PAD_MM
    n = np.floor(extent / voxel_size + 1e-6).astype(int) + 1
    origin = (t_lo + t_hi) / 2 - (n - 1) * voxel_size / 2
    affine = np.diag([voxel_size, voxel_size, voxel_size, 1.0])
    affine[:3, 3] = origin
    shape = (int(n[0]), int(n[1]), int(n[2]))

    brain = _to_grid(brain_1mm, t_affine, affine, shape, voxel_size)
    del brain_1mm
    gm = _to_grid(
        _load_template(folder / TEMPLATES["gm"])[0] / 255.0, t_affine, affine, shape, voxel_size
    )
    wm = _to_grid(
        _load_template(folder / TEMPLATES["wm"])[0] / 255.0, t_affine, affine, shape, voxel_size
    )
    # The probability maps leak outside the skull-stripped T1; keep tissue inside the brain.
    inside = brain > 0
    total = gm + wm
    over = total > 1.0
    gm[over] /= total[over]
    wm[over] /= total[over]
    gm[~inside] = 0.0
    wm[~inside] = 0.0
    csf = np.where(inside, 1.0 - gm - wm, 0.0).astype(np.float32)
    del total, over

    # The head and the lesion candidates only need ~2 mm detail: work on a coarse grid.
    stride = max(1, round(CANDIDATE_SPACING_MM / voxel_size))
    step = stride * voxel_size
    sub = (slice(None, None, stride),) * 3
    cand_brain = brain[sub] > 0.5
    # A rounded hull (heavily smoothed brain) so the head has no sulcal dents.
    hull = (ndi.gaussian_filter(brain[sub], 4.0 / step) > 0.5) | cand_brain
    hull_distance = _upsample(
        ndi.distance_transform_edt(~hull, sampling=step).astype(np.float32), stride, shape
    )
    del hull
    cand_depth = ndi.distance_transform_edt(cand_brain, sampling=step).astype(np.float32)
    # Lateral ventricles: thick CSF (opening drops the thin fissures) far from the cortex,
    # in big components (cisterns and the third ventricle are much smaller).
    deep_csf = ndi.binary_opening(csf[sub] > 0.5) & (cand_depth > 15.0)
    parts, count = ndi.label(deep_csf)
    sizes = np.bincount(parts.ravel(), minlength=count + 1)
    sizes[0] = 0
    deep_csf = (sizes >= 0.25 * sizes.max())[parts]
    del parts
    cand_ventricle = ndi.distance_transform_edt(~deep_csf, sampling=step).astype(np.float32)
    cand_wm = np.ascontiguousarray(wm[sub])

    mask_idx = np.argwhere(brain > 0.5)
    centre = (affine @ np.append(mask_idx.mean(axis=0), 1.0))[:3]
    del mask_idx
    head_box = _bbox(hull_distance < MAX_HEAD_MM + voxel_size)
    brain_box = _bbox(inside)

    for array in (brain, gm, wm, csf, hull_distance, cand_wm, cand_depth, cand_ventricle):
        array.flags.writeable = False  # cached and shared between subjects
    return _Scene(
        voxel_size=voxel_size,
        affine=affine,
        shape=shape,
        centre=centre,
        brain=brain,
        gm=gm,
        wm=wm,
        csf=csf,
        hull_distance=hull_distance,
        head_box=head_box,
        brain_box=brain_box,
        stride=stride,
        cand_wm=cand_wm,
        cand_depth=cand_depth,
        cand_ventricle=cand_ventricle,
    )


# --------------------------------------------------------------------------- subject space


def _dct_basis(n: int, order: int) -> F64:
    """(order, n) low-frequency cosines over n samples: a smooth, separable basis."""
    k = np.arange(order)[:, None]
    return np.cos(np.pi * k * (np.arange(n)[None, :] + 0.5) / n)


def _sample_deformation(rng: np.random.Generator) -> dict[str, Any]:
    order = 3
    scale = rng.uniform(1.0 - MAX_SCALING, 1.0 + MAX_SCALING, size=3)
    coeffs = rng.normal(size=(3, order, order, order))
    freq = np.add.outer(np.add.outer(np.arange(order), np.arange(order)), np.arange(order))
    coeffs /= 1.0 + freq  # favour the smoothest modes
    coeffs[:, 0, 0, 0] = 0.0  # a constant shift would just be a translation
    max_mm = rng.uniform(2.0, MAX_DISPLACEMENT_MM)
    # sum |c| bounds |u| because |cos| <= 1: the displacement never exceeds max_mm.
    coeffs *= max_mm / np.abs(coeffs).sum(axis=(1, 2, 3), keepdims=True)
    return {
        "scale": scale,
        "dct_order": order,
        "dct_coefficients_mm": coeffs,
        "max_displacement_mm": max_mm,
    }


def _template_voxels(
    scene: _Scene, deformation: dict[str, Any], index: tuple[F64, F64, F64]
) -> F64:
    """Template voxel coordinates (3, ...) of the subject points at grid indices ``index``.

    ``index`` holds one integer index vector per axis (an outer grid).
    """
    v, origin = scene.voxel_size, scene.affine[:3, 3]
    order = int(deformation["dct_order"])
    bases = [
        _dct_basis(n, order)[:, idx.astype(int)] for n, idx in zip(scene.shape, index, strict=True)
    ]
    coords = np.einsum(
        "cabd,ai,bj,dk->cijk", np.asarray(deformation["dct_coefficients_mm"]), *bases, optimize=True
    )
    scale = np.asarray(deformation["scale"])
    for a in range(3):
        shape = [1, 1, 1]
        shape[a] = -1
        world = (origin[a] + v * index[a]).reshape(shape)
        coords[a] += (scale[a] - 1.0) * (world - scene.centre[a])
        coords[a] /= v
        coords[a] += index[a].reshape(shape)
    return coords


def _warp_to_subject(scene: _Scene, deformation: dict[str, Any], volume: F32, box: Box) -> F32:
    """``volume`` (template space, zero outside ``box``) resampled into subject space."""
    # Subject points move by at most this much, so outside the grown box the result is 0.
    reach = MAX_SCALING * float(np.linalg.norm(scene.shape) * scene.voxel_size) / 2
    margin = math.ceil((reach + MAX_DISPLACEMENT_MM) / scene.voxel_size) + 1
    out_lo, out_hi = _grow(box, margin, scene.shape)
    source = np.ascontiguousarray(volume[_crop(box)])
    out = np.zeros(scene.shape, dtype=np.float32)
    slab = 24  # rows per call: bounds the coordinate arrays to ~100 MB
    for start in range(out_lo[0], out_hi[0], slab):
        stop = min(start + slab, out_hi[0])
        index = (
            np.arange(start, stop, dtype=np.float64),
            np.arange(out_lo[1], out_hi[1], dtype=np.float64),
            np.arange(out_lo[2], out_hi[2], dtype=np.float64),
        )
        coords = _template_voxels(scene, deformation, index)
        coords -= box[0].reshape(3, 1, 1, 1)
        ndi.map_coordinates(
            source,
            coords,
            order=1,
            cval=0.0,
            output=out[start:stop, out_lo[1] : out_hi[1], out_lo[2] : out_hi[2]],
        )
    return out


def _subject_scene(
    scene: _Scene,
    deformation: dict[str, Any],
    levels: dict[str, float],
    layers: dict[str, float],
    texture_sd: float,
    rng: np.random.Generator,
) -> tuple[F32, F32]:
    """The subject's lesion-free image and brain fraction, in subject space on the grid."""
    box = _crop(scene.head_box)
    d = scene.hull_distance[box]
    v = scene.voxel_size

    def inside(limit: float) -> F32:  # partial-volume weight of d < limit
        return np.clip((limit - d) / v + 0.5, 0.0, 1.0)

    rim = inside(layers["csf_rim_mm"])
    bone = inside(layers["csf_rim_mm"] + layers["bone_mm"])
    scalp = inside(layers["csf_rim_mm"] + layers["bone_mm"] + layers["scalp_mm"])
    scalp -= bone
    bone -= rim
    head = rim * levels["csf"] + bone * levels["bone"] + scalp * levels["scalp"]
    del rim, bone, scalp
    tissue = (
        scene.gm[box] * levels["gm"] + scene.wm[box] * levels["wm"] + scene.csf[box] * levels["csf"]
    )
    brain = scene.brain[box]
    image = np.zeros(scene.shape, dtype=np.float32)
    image[box] = brain * tissue + (1.0 - brain) * head
    del tissue, head
    # Texture: smoothed white noise, scaled to unit sd (known for a Gaussian kernel).
    sigma = TEXTURE_SIGMA_MM / v
    noise = rng.standard_normal(d.shape, dtype=np.float32)
    ndi.gaussian_filter(noise, sigma, output=noise)
    noise *= texture_sd * (2.0 * math.sqrt(math.pi) * sigma) ** 1.5
    noise += 1.0
    image[box] *= noise
    del noise
    return (
        _warp_to_subject(scene, deformation, image, scene.head_box),
        _warp_to_subject(scene, deformation, scene.brain, scene.brain_box),
    )


# --------------------------------------------------------------------------- lesions


def _rotation_from_quaternion(q: F64) -> F64:
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def _lesion_candidates(scene: _Scene, deformation: dict[str, Any]) -> dict[str, F64]:
    """Subject-space points (mm) on the candidate grid with their WM/depth/ventricle values."""
    shape = scene.cand_wm.shape
    index = tuple(np.arange(0, n * scene.stride, scene.stride, dtype=np.float64) for n in shape)
    coords = _template_voxels(scene, deformation, (index[0], index[1], index[2]))
    coords /= scene.stride
    wm = ndi.map_coordinates(scene.cand_wm, coords, order=1, cval=0.0)
    keep = wm > 0.9
    coords = coords[:, keep]
    depth = ndi.map_coordinates(scene.cand_depth, coords, order=1, cval=0.0)
    ventricle = ndi.map_coordinates(scene.cand_ventricle, coords, order=1, cval=1e3)
    grid = np.stack(np.meshgrid(*index, indexing="ij"))[:, keep]
    points = (scene.affine[:3, :3] @ grid).T + scene.affine[:3, 3]
    return {"points": points, "depth": depth, "ventricle": ventricle}


def _draw_lesions(
    rng: np.random.Generator,
    kinds: list[str],
    candidates: dict[str, F64],
    placed: list[dict[str, Any]],
    min_change_mm3: float,
    jitter_mm: float,
) -> list[dict[str, Any]]:
    lesions: list[dict[str, Any]] = []
    for kind in kinds:
        if kind == "enlarging":
            scales = (rng.uniform(0.45, 0.75), 1.0)
        elif kind == "shrinking":
            scales = (1.0, rng.uniform(0.45, 0.75))
        elif kind == "new":
            scales = (0.0, 1.0)
        else:
            scales = (1.0, 1.0)
        # The smaller instance must stay >= 3 mm^3 and a change must cover some voxels.
        small = min(s for s in scales if s > 0) ** 3
        changed = 1.0 - min(scales) ** 3
        low = max(MIN_LESION_MM3 / small, min_change_mm3 / changed if kind != "stable" else 0.0)
        volume = math.exp(rng.uniform(math.log(low), math.log(MAX_LESION_MM3)))
        shape = np.exp(rng.uniform(-0.35, 0.35, size=3))
        shape /= np.prod(shape) ** (1.0 / 3.0)
        radii = shape * (3.0 * volume / (4.0 * math.pi)) ** (1.0 / 3.0)
        quaternion = rng.normal(size=4)
        quaternion /= np.linalg.norm(quaternion)
        region = "periventricular" if rng.uniform() < 0.75 else "deep"
        reach = float(radii.max())
        # Keep the whole lesion in the brain and apart from the others.
        ok = candidates["depth"] >= reach + 4.0
        if region == "periventricular":
            ok &= candidates["ventricle"] <= 12.0
        else:  # deep white matter, away from the juxtacortical band
            ok &= candidates["depth"] >= 10.0
        choices = np.flatnonzero(ok)
        centre = None
        others = placed + lesions
        for _ in range(300):
            if choices.size == 0:
                break
            trial = candidates["points"][rng.choice(choices)] + rng.uniform(
                -jitter_mm, jitter_mm, size=3
            )
            if all(
                np.linalg.norm(trial - np.asarray(o["centre_mm"]))
                > reach + max(o["radii_mm"]) + 2.0
                for o in others
            ):
                centre = trial
                break
        if centre is None:
            raise RuntimeError(f"could not place a {kind} lesion of {volume:.0f} mm^3")
        lesions.append(
            {
                "kind": kind,
                "region": region,
                "centre_mm": centre,
                "radii_mm": radii,
                "quaternion_wxyz": quaternion,
                "axes": _rotation_from_quaternion(quaternion),
                "scale_baseline": scales[0],
                "scale_followup": scales[1],
                "volume_mm3": volume,
                "volume_baseline_mm3": volume * scales[0] ** 3,
                "volume_followup_mm3": volume * scales[1] ** 3,
                "intensity_factor": rng.uniform(0.93, 1.07),
            }
        )
    return lesions


def _lesion_labels(
    lesions: list[dict[str, Any]],
    timepoint: str,
    voxel_to_subject: F64,
    shape: tuple[int, int, int],
) -> npt.NDArray[np.int16]:
    """Lesion number + 1 at each voxel whose centre lies in that lesion at ``timepoint``."""
    labels = np.zeros(shape, dtype=np.int16)
    to_voxel = np.linalg.inv(voxel_to_subject)
    voxel_mm = float(np.sqrt((voxel_to_subject[:3, :3] ** 2).sum(axis=0)).min())
    for number, lesion in enumerate(lesions, start=1):
        scale = lesion[f"scale_{timepoint}"]
        if scale <= 0:
            continue
        radii = scale * np.asarray(lesion["radii_mm"])
        centre = np.asarray(lesion["centre_mm"])
        middle = (to_voxel @ np.append(centre, 1.0))[:3]
        half = radii.max() / voxel_mm + 1.0
        lo = np.maximum(np.floor(middle - half).astype(int), 0)
        hi = np.minimum(np.ceil(middle + half).astype(int) + 1, shape)
        if np.any(hi <= lo):
            continue
        box = (
            np.stack(
                np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi, strict=True)), indexing="ij")
            )
            .reshape(3, -1)
            .astype(np.float64)
        )
        points = voxel_to_subject[:3, :3] @ box + voxel_to_subject[:3, 3:4]
        local = np.asarray(lesion["axes"]).T @ (points - centre[:, None])
        inside = (((local / radii[:, None]) ** 2).sum(axis=0) <= 1.0).reshape(hi - lo)
        region = labels[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        region[inside] = number
    return labels


# --------------------------------------------------------------------------- time points


def _box_axes(scene: _Scene, box: Box, step: int = 1) -> tuple[F32, F32, F32]:
    """Per axis, (world - centre) / 100 mm of the box's voxels, shaped to broadcast:
    the bias polynomial's coordinates."""
    axes = []
    for a in range(3):
        index = np.arange(box[0][a], box[1][a], step)
        if step > 1:
            index = np.append(index, box[1][a] - 1)  # keep both ends: extremes lie there
        world = scene.affine[a, 3] + scene.voxel_size * index
        axes.append(
            ((world - scene.centre[a]) / 100.0)
            .astype(np.float32)
            .reshape([-1 if b == a else 1 for b in range(3)])
        )
    return axes[0], axes[1], axes[2]


def _sample_timepoint(rng: np.random.Generator, scene: _Scene) -> dict[str, Any]:
    # Each time point moves half the allowed amount, so they differ by up to ~5 deg / ~6 mm.
    motion = draw_rigid_motion(rng, 2.5, 3.0)
    world_to_subject = rigid_mm_transform(
        motion["rotation_deg"], motion["translation_mm"], scene.centre
    )
    # Bias: scaled so that the field spans exactly ±amplitude over the head's box.
    bias = draw_bias_span(rng, (0.08, 0.15), _box_axes(scene, scene.head_box, 4))
    return {
        "rotation_deg_xyz": list(motion["rotation_deg"]),
        "translation_mm": list(motion["translation_mm"]),
        "rotation_centre_mm": scene.centre,
        "voxel_to_subject": world_to_subject @ scene.affine,
        "bias_coefficients": bias["coefficients"],
        "bias_amplitude": bias["amplitude"],
        "gamma": uniform(rng, 0.85, 1.15),
        "noise_fraction_of_wm": uniform(rng, 0.02, 0.03),
    }


def _resample_rigid(source: F32, to_source_voxel: F64) -> F32:
    """``source`` (same grid) resampled through a rigid voxel map, only where it is non-zero."""
    box = _bbox(source > 0)
    lo, hi = box[0] - 1, box[1] + 1  # a zero border keeps linear interpolation exact
    corners = np.array(
        [[(lo, hi)[bit >> a & 1][a] for a in range(3)] + [1.0] for bit in range(8)]
    ).T
    mapped = (np.linalg.inv(to_source_voxel) @ corners)[:3]
    out_lo = np.maximum(np.floor(mapped.min(axis=1)).astype(int) - 1, 0)
    out_hi = np.minimum(np.ceil(mapped.max(axis=1)).astype(int) + 2, np.array(source.shape))
    out = np.zeros(source.shape, dtype=np.float32)
    matrix = to_source_voxel[:3, :3]
    offset = to_source_voxel[:3, 3] + matrix @ out_lo - box[0]
    ndi.affine_transform(
        source[_crop(box)], matrix, offset, order=1, cval=0.0, output=out[_crop((out_lo, out_hi))]
    )
    return out


def _render_timepoint(
    scene: _Scene,
    subject_image: F32,
    subject_brain: F32,
    labels: npt.NDArray[np.int16],
    lesion_levels: F32,
    params: dict[str, Any],
    wm_level: float,
    rng: np.random.Generator,
) -> tuple[F32, npt.NDArray[np.uint8]]:
    """The time point's FLAIR and true brain mask on the output grid."""
    # Grid voxel -> subject-scene voxel (the subject scene lies on the same grid).
    to_subject_voxel = np.linalg.inv(scene.affine) @ params["voxel_to_subject"]
    image = _resample_rigid(subject_image, to_subject_voxel)
    brain = _resample_rigid(subject_brain, to_subject_voxel) > 0.5
    in_lesion = labels > 0
    image[in_lesion] = lesion_levels[labels[in_lesion] - 1]

    # Contrast change and bias field leave air (0) at 0: only the head's box needs them.
    box = _bbox(image > 0)
    head = image[_crop(box)]
    gamma = params["gamma"]
    apply_gamma(head, gamma, REFERENCE_LEVEL, out=head)
    head *= bias_field_on_axes(params["bias_coefficients"], _box_axes(scene, box))
    # Rician noise of a fixed fraction of the white matter's level (after the gamma).
    sd = params["noise_fraction_of_wm"] * REFERENCE_LEVEL * (wm_level / REFERENCE_LEVEL) ** gamma
    params["noise_sd"] = sd
    add_rician_noise_inplace(image, sd, rng)
    # Stored in steps of 1/4 (far below the noise): gzip then runs twice as fast.
    image *= 4.0
    np.ceil(image, out=image)
    image /= 4.0
    return image, brain.astype(np.uint8)


# --------------------------------------------------------------------------- entry point


def make_demo_subject(
    subject: str, out_dir: Path, *, has_change: bool, seed: int, voxel_size_mm: float = 1.0
) -> DemoSubjectPaths:
    """Generate one demo subject (two FLAIRs, truth masks, parameters) under ``out_dir``.

    The same (subject, seed, has_change, voxel_size_mm) gives identical files. The
    anatomy, stable lesions and scans depend only on (subject, seed): a subject's
    change version differs from its no-change version only by the changing lesions.
    """
    if not is_subject_id(subject):
        raise ValueError(f"subject id {subject!r} must be letters/digits with inner hyphens")
    if not 0.5 <= voxel_size_mm <= 4.0:
        raise ValueError(f"voxel_size_mm must be in [0.5, 4], got {voxel_size_mm}")
    scene = _scene(float(voxel_size_mm))
    v = scene.voxel_size
    # Independent streams, so adding change lesions leaves every other choice unchanged;
    # crc32 (not hash()) keeps the stream stable across processes.
    streams = np.random.SeedSequence([seed, zlib.crc32(subject.encode())]).spawn(6)
    rng_subject, rng_stable, rng_change, rng_scan, rng_noise_b, rng_noise_f = (
        np.random.default_rng(s) for s in streams
    )

    levels = {k: float(x * rng_subject.uniform(0.9, 1.1)) for k, x in NOMINAL_LEVELS.items()}
    layers = {
        "csf_rim_mm": float(rng_subject.uniform(2.0, 4.0)),
        "bone_mm": float(rng_subject.uniform(5.0, 7.0)),
        "scalp_mm": float(rng_subject.uniform(4.0, 6.0)),
    }
    texture_sd = float(rng_subject.uniform(0.03, 0.05))
    deformation = _sample_deformation(rng_subject)
    subject_image, subject_brain = _subject_scene(
        scene, deformation, levels, layers, texture_sd, rng_subject
    )

    candidates = _lesion_candidates(scene, deformation)
    jitter = scene.stride * v / 2.0
    # A change smaller than a couple of voxels would vanish on coarse grids.
    min_change = max(MIN_LESION_MM3, 2.0 * v**3)
    lesions = _draw_lesions(
        rng_stable, ["stable"] * int(rng_stable.integers(6, 13)), candidates, [], min_change, jitter
    )
    if has_change:
        kinds = (
            ["new"] * int(rng_change.integers(2, 5))
            + ["enlarging"] * int(rng_change.integers(1, 3))
            + ["shrinking"] * int(rng_change.integers(1, 3))
        )
        lesions += _draw_lesions(rng_change, kinds, candidates, lesions, min_change, jitter)
    lesion_levels = np.array(
        [levels["lesion"] * les["intensity_factor"] for les in lesions], dtype=np.float32
    )

    timepoints = {
        "baseline": _sample_timepoint(rng_scan, scene),
        "followup": _sample_timepoint(rng_scan, scene),
    }
    paths = demo_subject_paths(out_dir, subject)
    outputs = {
        "baseline": (paths.baseline, paths.baseline_brain_mask, rng_noise_b),
        "followup": (paths.followup, paths.followup_brain_mask, rng_noise_f),
    }
    labels: dict[str, npt.NDArray[np.int16]] = {}
    for name, params in timepoints.items():
        labels[name] = _lesion_labels(lesions, name, params["voxel_to_subject"], scene.shape)
        image_path, mask_path, rng_noise = outputs[name]
        image, brain = _render_timepoint(
            scene,
            subject_image,
            subject_brain,
            labels[name],
            lesion_levels,
            params,
            levels["wm"],
            rng_noise,
        )
        save_nifti(image, scene.affine, image_path, dtype=np.float32)
        save_nifti(brain, scene.affine, mask_path, dtype=np.uint8)
        del image, brain
    del subject_image, subject_brain

    # Truth on the follow-up grid: both time points' lesions at the follow-up voxel centres.
    after = labels["followup"]
    before = _lesion_labels(
        lesions, "baseline", timepoints["followup"]["voxel_to_subject"], scene.shape
    )
    kind_code = np.array([0] + [CHANGE_TYPE.get(les["kind"], 0) for les in lesions], dtype=np.uint8)
    change_type = np.zeros(scene.shape, dtype=np.uint8)
    appeared = (after > 0) & (before == 0)
    change_type[appeared] = kind_code[after[appeared]]
    change_type[(before > 0) & (after == 0)] = CHANGE_TYPE["shrinking"]
    save_nifti(change_type > 0, scene.affine, paths.change_mask, dtype=np.uint8)
    save_nifti(change_type, scene.affine, paths.change_type, dtype=np.uint8)

    save_json(
        {
            "subject": subject,
            "seed": seed,
            "has_change": has_change,
            "voxel_size_mm": v,
            "rng": "numpy SeedSequence([seed, crc32(subject)]).spawn(6): subject, stable "
            "lesions, change lesions, scans, baseline noise, follow-up noise",
            "templates": TEMPLATES,
            "conventions": {
                "grid_affine": "every image shares grid_affine (RAS, world = MNI mm)",
                "voxel_to_subject": "p_subject = voxel_to_subject @ [i, j, k, 1]; "
                "p = centre + R (x - centre) + translation, R = Rz Ry Rx",
                "subject_to_template": "q = centre + diag(scale) (p - centre) + u(p), u = DCT "
                "series over the grid (cos(pi k (i + 0.5) / n))",
                "lesion": "voxel in lesion when |diag(1/(scale*radii)) axes^T (p - centre)| <= 1",
                "bias": "exp(c . [x, y, z, x2, y2, z2, xy, xz, yz]), (world - centre) / 100 mm",
                "intensity": "(I / 1000) ** gamma * 1000 * bias, then Rician noise of noise_sd, "
                "rounded up to a multiple of 0.25",
            },
            "grid_affine": scene.affine,
            "grid_shape": list(scene.shape),
            "centre_mm": scene.centre,
            "deformation": deformation,
            "intensity": {
                "levels": levels,
                "texture_sd": texture_sd,
                "texture_sigma_mm": TEXTURE_SIGMA_MM,
                "reference_level": REFERENCE_LEVEL,
            },
            "head_layers": layers,
            "timepoints": timepoints,
            "lesions": lesions,
            "n_change_voxels": int(np.count_nonzero(change_type)),
        },
        paths.params_json,
    )
    return paths
