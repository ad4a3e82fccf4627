"""Where each detected change lies, in the location classes of McDonald 2017 / MAGNIMS 2021.

Four classes (:data:`LOCATION_CLASSES`); the rule and its limits are in docs/locations.md.
The anatomy comes from the pair itself, built once per pair by :func:`anatomy_maps`:

* ventricles: the large dark (CSF) regions deep in the follow-up brain, grown into
  the dark voxels connected to them (the horns);
* cortex: the band within ``cortex_reach_mm`` of the brain's outer surface or of CSF
  that is not ventricle (sulci, fissures, cisterns);
* infratentorial region (brainstem, cerebellum, cerebellar peduncles): a fixed region
  in MNI152 mm (:func:`infratentorial_mni`) brought onto the follow-up grid by a
  similarity (rigid + scale) registration of the MNI152 2009a template that nilearn's
  wheel ships (no download) to the follow-up brain.

:func:`classify_changes` then names one class per change, by precedence
infratentorial > periventricular > cortical/juxtacortical > deep white matter.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import ndimage

from mschange.changemap import BRIGHTER
from mschange.io import voxel_sizes

PERIVENTRICULAR = "periventricular"
CORTICAL_JUXTACORTICAL = "cortical_juxtacortical"
INFRATENTORIAL = "infratentorial"
DEEP_WHITE_MATTER = "deep_white_matter"
LOCATION_CLASSES = (PERIVENTRICULAR, CORTICAL_JUXTACORTICAL, INFRATENTORIAL, DEEP_WHITE_MATTER)
LOCATION_LABELS = {
    PERIVENTRICULAR: "periventricular",
    CORTICAL_JUXTACORTICAL: "juxtacortical/cortical",
    INFRATENTORIAL: "infratentorial",
    DEEP_WHITE_MATTER: "deep white matter",
}
# What each class means here, for the lesion table's data dictionary.
LOCATION_DESCRIPTIONS = {
    PERIVENTRICULAR: "touches the wall of a lateral ventricle (within 2 mm)",
    CORTICAL_JUXTACORTICAL: "touches or lies in the cortex (within 3 mm of the brain "
    "surface or of sulcal CSF)",
    INFRATENTORIAL: "brainstem, cerebellar peduncles or cerebellum (most of the change "
    "below the tentorium, from an affine registration to MNI152)",
    DEEP_WHITE_MATTER: "none of the above: deep (subcortical) white matter",
}
# A change that meets several rules gets the first class of this order.
PRECEDENCE = (INFRATENTORIAL, PERIVENTRICULAR, CORTICAL_JUXTACORTICAL, DEEP_WHITE_MATTER)

B = npt.NDArray[np.bool_]
F64 = npt.NDArray[np.float64]

MNI_T1 = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
MNI_GM = "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"
MNI_WM = "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"


@dataclass(frozen=True)
class LocationSettings:
    # CSF: darker than this fraction of the brain's median (FLAIR: CSF ~0.3, tissue ~1).
    csf_fraction_of_median: float = 0.5
    # Ventricle seeds lie at least this deep in the brain (sulci and cisterns do not).
    ventricle_seed_depth_mm: float = 12.0
    # Seed regions smaller than this fraction of the largest are not ventricles.
    ventricle_min_fraction: float = 0.1
    # The ventricles grow through connected dark voxels this deep (the horns).
    ventricle_grow_depth_mm: float = 4.0
    # "Touches the ventricle": a change voxel this close to a ventricle voxel
    # (partial volume makes the CSF boundary 1-2 voxels wide).
    ventricle_contact_mm: float = 2.0
    # Cortex: brain within this distance of the outside or of non-ventricular CSF
    # (cortical thickness ~2.5 mm plus one voxel of partial volume).
    cortex_reach_mm: float = 3.0
    # A change is infratentorial when more than this fraction of it is in that region.
    infratentorial_fraction: float = 0.5
    # Lesion-bright: above this fraction of the brain's 99th percentile, at either time
    # point. Ventricle contact is judged on the lesion a change belongs to: the change
    # grown through lesion-bright non-cortical voxels by up to lesion_growth_mm (an
    # enlarging lesion's change is its new rim, which may not reach the ventricle its
    # lesion touches).
    hyperintense_fraction_of_p99: float = 0.95
    lesion_growth_mm: float = 4.0
    # Voxel size of the registration to MNI152 (affine only, so coarse is enough).
    registration_mm: float = 3.0
    seed: int = 1  # ANTs samples the metric at random points


@dataclass(frozen=True)
class AnatomyMaps:
    """Boolean maps on the follow-up grid, built once per pair."""

    ventricles: B
    ventricle_zone: B  # within ventricle_contact_mm of a ventricle voxel
    cortex: B  # within cortex_reach_mm of the outside or of non-ventricular CSF
    infratentorial: B
    hyperintense: B  # lesion-bright at either time point: where a change's lesion extends
    voxel_mm: float  # the grid's finest voxel size
    settings: LocationSettings


def can_locate() -> bool:
    """Whether ANTsPy and nilearn's templates are there (a bare GPU machine lacks them)."""
    try:
        import ants  # noqa: F401  (imported here only to see that it loads)

        _nilearn_data_dir()
    except (ImportError, RuntimeError):
        return False
    return True


def _nilearn_data_dir() -> Path:
    # find_spec locates nilearn's files without importing it (which takes seconds).
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nilearn is not installed; locations need its MNI152 templates")
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    missing = [n for n in (MNI_T1, MNI_GM, MNI_WM) if not (folder / n).is_file()]
    if missing:
        raise RuntimeError(f"nilearn's MNI152 templates are missing from {folder}: {missing}")
    return folder


def infratentorial_mni(x: F64, y: F64, z: F64) -> B:
    """Whether MNI152 (2009a) points lie in the brainstem, cerebellar peduncles or cerebellum.

    A hand-drawn region checked against the template (docs/locations.md): below the
    tentorium, which falls from z = -6 mm at the midline to -28 mm laterally and
    further towards the back; the brainstem as a box under the midbrain's top.
    """
    side = np.abs(x)
    tentorium = -6.0 - 0.5 * np.minimum(side, 44.0) - 0.25 * np.maximum(0.0, -60.0 - y)
    cerebellum = (y <= -38.0) & (z <= tentorium)
    peduncles = (side <= 22.0) & (y <= -28.0) & (z <= -22.0)
    brainstem = (side <= 14.0) & (y >= -50.0) & (y <= -14.0) & (z <= -10.0)
    return np.asarray(cerebellum | peduncles | brainstem)


def _load_template(path: Path) -> tuple[npt.NDArray[np.float32], F64]:
    image = nib.load(path)
    if not isinstance(image, nib.Nifti1Image):
        raise RuntimeError(f"{path} is not a NIfTI-1 image")
    return np.asarray(image.dataobj, dtype=np.float32), np.asarray(image.affine, np.float64)


def _mni_flair_like(folder: Path) -> tuple[npt.NDArray[np.float32], F64]:
    """A FLAIR-like MNI152 brain from the tissue maps: CSF dark, grey matter brightest."""
    t1, affine = _load_template(folder / MNI_T1)
    brain = ndimage.binary_fill_holes(t1 > 0)
    gm = _load_template(folder / MNI_GM)[0] / 255.0
    wm = _load_template(folder / MNI_WM)[0] / 255.0
    tissue = np.clip(gm + wm, 0.0, 1.0)
    image = np.where(brain, 0.25 * (1.0 - tissue) + 1.0 * gm + 0.85 * wm, 0.0)
    return image.astype(np.float32), affine


def _infratentorial_on_grid(
    followup_brain: npt.NDArray[np.float32],
    affine: F64,
    settings: LocationSettings,
) -> B:
    """The MNI infratentorial region on the follow-up grid, by a similarity registration.

    With one ITK thread and the fixed seed two runs give the same region; ITK reads its
    thread count once per process, at its first use, so one set earlier (the
    preprocessing's ``registration.threads``, in ``mschange predict``) stays.
    """
    # More than one thread makes ANTs differ slightly from run to run, and a class can
    # flip at the region's border.
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
    import ants  # imported lazily: loading ANTsPy takes seconds

    from mschange.imagespace import from_ants, to_ants

    folder = _nilearn_data_dir()
    template, template_affine = _mni_flair_like(folder)
    ijk = np.indices(template.shape, dtype=np.float64).reshape(3, -1)
    x, y, z = (template_affine[:3, :3] @ ijk + template_affine[:3, 3:4]).reshape(
        (3, *template.shape)
    )
    region = infratentorial_mni(x, y, z).astype(np.float32)
    del x, y, z, ijk

    fixed_full = to_ants(followup_brain, affine)
    step = (settings.registration_mm,) * 3
    fixed = ants.resample_image(fixed_full, step, use_voxels=False, interp_type=0)
    moving = ants.resample_image(
        to_ants(template, template_affine), step, use_voxels=False, interp_type=0
    )
    ants.config._random_seed = int(settings.seed) or 1  # 0 would seed from the clock
    workdir = tempfile.mkdtemp(prefix="mschange-locations-")
    try:
        result = ants.registration(
            fixed=fixed,
            moving=moving,
            # Rigid + one scale: more stable than a full affine when the scan's field
            # of view cuts the brain, and as good for a region this coarse.
            type_of_transform="Similarity",
            aff_iterations=(40, 20),
            aff_shrink_factors=(2, 1),
            aff_smoothing_sigmas=(1, 0),
            aff_random_sampling_rate=0.3,
            outprefix=os.path.join(workdir, "mni_"),
        )
        warped = ants.apply_transforms(
            fixed=fixed_full,
            moving=to_ants(region, template_affine),
            transformlist=result["fwdtransforms"],
            interpolator="linear",
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return np.asarray(from_ants(warped) > 0.5)


def _ventricles(csf: B, depth_mm: npt.NDArray[np.float32], settings: LocationSettings) -> B:
    """The large deep CSF regions, grown through the dark voxels connected to them."""
    seeds = ndimage.binary_opening(csf) & (depth_mm >= settings.ventricle_seed_depth_mm)
    parts, count = ndimage.label(seeds)
    if count == 0:
        return np.zeros(csf.shape, dtype=bool)
    sizes = np.bincount(parts.ravel(), minlength=count + 1)
    sizes[0] = 0
    seeds = (sizes >= settings.ventricle_min_fraction * sizes.max())[parts]
    # Grow only away from the surface, so the horns join but the cisterns do not.
    room = csf & (depth_mm >= settings.ventricle_grow_depth_mm)
    grown = ndimage.binary_propagation(seeds, mask=room)
    return np.asarray(grown)


def _hyperintense(image: npt.NDArray[Any], brain: B, settings: LocationSettings) -> B:
    level = settings.hyperintense_fraction_of_p99 * float(np.percentile(image[brain], 99.0))
    return np.asarray(brain & (image > level))


def _lesion_extent(labels: npt.NDArray[Any], anatomy: AnatomyMaps) -> npt.NDArray[np.int32]:
    """Each change grown through lesion-bright voxels, by up to ``lesion_growth_mm``."""
    grown = np.asarray(labels, dtype=np.int32).copy()
    steps = round(anatomy.settings.lesion_growth_mm / anatomy.voxel_mm)  # a voxel per step
    if steps <= 0 or not grown.any():
        return grown
    box = _brain_box(grown > 0, margin=steps + 1)
    part = grown[box]
    # Not through the cortex: grey matter is as bright as lesions on many FLAIRs.
    room = anatomy.hyperintense[box] & ~anatomy.cortex[box]
    for _ in range(steps):
        spread = ndimage.grey_dilation(part, size=(3, 3, 3))
        fill = (part == 0) & room & (spread > 0)
        if not fill.any():
            break
        part[fill] = spread[fill]
    return grown


def _brain_box(brain: B, margin: int) -> tuple[slice, slice, slice]:
    hits = np.argwhere(brain)
    lo = np.maximum(hits.min(axis=0) - margin, 0)
    hi = np.minimum(hits.max(axis=0) + margin + 1, brain.shape)
    return slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2])


def anatomy_maps(
    followup: npt.NDArray[Any],
    brain_mask: npt.NDArray[Any],
    affine: npt.NDArray[np.floating[Any]],
    settings: LocationSettings | None = None,
    *,
    baseline: npt.NDArray[Any] | None = None,
) -> AnatomyMaps:
    """Ventricles, cortex and infratentorial region of the (preprocessed) follow-up.

    ``followup``: the skull-stripped FLAIR (any intensity scale: thresholds are relative
    to the brain's median and 99th percentile); ``brain_mask``: its brain; ``baseline``
    (optional, registered to the follow-up): where lesions were bright before. All on
    the grid of ``affine``.
    """
    settings = settings or LocationSettings()
    grid: F64 = np.asarray(affine, dtype=np.float64)
    full_brain = np.asarray(brain_mask) > 0
    if not full_brain.any():
        raise ValueError("the brain mask is empty; cannot place changes")
    # Work in the brain's box: a margin of background keeps every distance exact.
    box = _brain_box(full_brain, margin=2)
    corner = grid @ np.array([box[0].start, box[1].start, box[2].start, 1.0])
    box_affine = grid.copy()
    box_affine[:3, 3] = corner[:3]
    brain = full_brain[box]
    image = np.where(brain, np.asarray(followup, dtype=np.float32)[box], 0.0).astype(np.float32)
    spacing = voxel_sizes(grid)
    csf = brain & (image < settings.csf_fraction_of_median * float(np.median(image[brain])))
    depth = ndimage.distance_transform_edt(brain, sampling=spacing).astype(np.float32)
    infratentorial = _infratentorial_on_grid(image, box_affine, settings) & brain
    # The fourth ventricle is a deep dark region too, but below the tentorium.
    ventricles = _ventricles(csf & ~infratentorial, depth, settings)
    del depth
    to_ventricle = ndimage.distance_transform_edt(~ventricles, sampling=spacing)
    # On grids coarser than 1 mm a boundary voxel mixes more tissue: allow the extra size.
    coarse = max(0.0, float(spacing.max()) - 1.0)
    ventricle_zone = to_ventricle <= settings.ventricle_contact_mm + coarse
    del to_ventricle
    surface = ~brain | (csf & ~ventricles)
    hyperintense = _hyperintense(image, brain, settings)
    if baseline is not None:
        before = np.where(brain, np.asarray(baseline, dtype=np.float32)[box], 0.0)
        hyperintense |= _hyperintense(before, brain, settings)
    cortex = brain & (
        ndimage.distance_transform_edt(~surface, sampling=spacing)
        <= settings.cortex_reach_mm + coarse
    )

    def full(part: B) -> B:
        out = np.zeros(full_brain.shape, dtype=bool)
        out[box] = part
        return out

    return AnatomyMaps(
        ventricles=full(ventricles),
        ventricle_zone=full(ventricle_zone),
        cortex=full(cortex),
        infratentorial=full(infratentorial),
        hyperintense=full(hyperintense),
        voxel_mm=float(spacing.min()),
        settings=settings,
    )


def classify_changes(labels: npt.NDArray[Any], anatomy: AnatomyMaps) -> list[str]:
    """One location class per change: label 1..N of ``labels`` (0 is background)."""
    count = int(labels.max()) if labels.size else 0
    if count == 0:
        return []
    if labels.shape != anatomy.ventricles.shape:
        raise ValueError(f"labels {labels.shape} and anatomy {anatomy.ventricles.shape} differ")
    index = np.arange(1, count + 1)
    lesions = _lesion_extent(labels, anatomy)
    below = np.asarray(ndimage.mean(anatomy.infratentorial, labels, index))
    touches_ventricle = np.asarray(ndimage.maximum(anatomy.ventricle_zone, lesions, index)) > 0
    touches_cortex = np.asarray(ndimage.maximum(anatomy.cortex, labels, index)) > 0
    present = np.asarray(ndimage.sum_labels(np.ones(labels.shape), labels, index)) > 0
    classes = []
    for number in range(count):
        if not present[number]:
            # A label number no voxel carries: nothing to place.
            classes.append(DEEP_WHITE_MATTER)
        elif below[number] > anatomy.settings.infratentorial_fraction:
            classes.append(INFRATENTORIAL)
        elif touches_ventricle[number]:
            classes.append(PERIVENTRICULAR)
        elif touches_cortex[number]:
            classes.append(CORTICAL_JUXTACORTICAL)
        else:
            classes.append(DEEP_WHITE_MATTER)
    return classes


def count_by_location(table: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per class: counts and volumes (mm^3) of new-or-enlarging and of shrinking changes.

    ``table``: a lesion table with ``location``, ``direction`` and ``volume_mm3``.
    Every class is present, with zeros where it has no change.
    """
    counts: dict[str, dict[str, float]] = {}
    for name in LOCATION_CLASSES:
        rows = table[table["location"] == name]
        new = rows["direction"] == BRIGHTER
        volumes = rows["volume_mm3"].astype(float)
        counts[name] = {
            "new_or_enlarging": int(new.sum()),
            "new_or_enlarging_volume_mm3": float(volumes[new].sum()),
            "shrinking": int((~new).sum()),
            "shrinking_volume_mm3": float(volumes[~new].sum()),
        }
    return counts


def location_counts_text(counts: Mapping[str, Mapping[str, float]]) -> str:
    """One line, e.g. ``periventricular 2, juxtacortical/cortical 0, ...`` of new changes."""
    return ", ".join(
        f"{LOCATION_LABELS[name]} {int(counts[name]['new_or_enlarging'])}"
        for name in LOCATION_CLASSES
    )
