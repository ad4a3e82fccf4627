"""Location classes of changes (mschange.locations): a template phantom, the demo, real pairs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from mschange import locations
from mschange.detection.inference import LESION_COLUMN_INFO, LESION_COLUMNS, lesion_table
from mschange.locations import (
    CORTICAL_JUXTACORTICAL,
    DEEP_WHITE_MATTER,
    INFRATENTORIAL,
    LOCATION_CLASSES,
    PERIVENTRICULAR,
    anatomy_maps,
    classify_changes,
    count_by_location,
    infratentorial_mni,
)

from .conftest import OPEN_MS_DATA, requires_open_ms_data

# MNI152 2009a points (mm), read off the template: the middle of the pons, a deep
# centrum semiovale spot, the lateral wall of the left ventricle's body and the right
# middle frontal gyrus, 4 mm inside the brain's surface.
MNI_POINTS = {
    INFRATENTORIAL: (0.0, -28.0, -32.0),
    DEEP_WHITE_MATTER: (-28.0, -12.0, 30.0),
    PERIVENTRICULAR: (-20.0, -10.0, 24.0),
    CORTICAL_JUXTACORTICAL: (50.0, 10.0, 40.0),
}


def test_classes_and_labels_are_the_four_criteria_locations():
    assert set(LOCATION_CLASSES) == {
        "periventricular",
        "cortical_juxtacortical",
        "infratentorial",
        "deep_white_matter",
    }
    assert locations.LOCATION_LABELS[CORTICAL_JUXTACORTICAL] == "juxtacortical/cortical"
    assert set(LESION_COLUMN_INFO["location"]["Levels"]) >= set(LOCATION_CLASSES)


def test_infratentorial_region_holds_pons_and_cerebellum_but_not_the_cerebrum():
    points = {
        "pons": (0, -28, -32),
        "midbrain": (0, -25, -12),
        "cerebellar hemisphere": (-30, -65, -35),
        "vermis": (0, -60, -20),
        "thalamus": (-10, -18, 6),
        "occipital lobe": (-20, -90, 0),
        "temporal lobe": (-45, -20, -25),
        "hippocampus": (-28, -22, -14),
    }
    x, y, z = (np.array([p[a] for p in points.values()], dtype=float) for a in range(3))
    inside = dict(zip(points, infratentorial_mni(x, y, z), strict=True))
    assert inside == {
        "pons": True,
        "midbrain": True,
        "cerebellar hemisphere": True,
        "vermis": True,
        "thalamus": False,
        "occipital lobe": False,
        "temporal lobe": False,
        "hippocampus": False,
    }


@pytest.fixture(scope="module")
def template_phantom():
    return make_template_phantom()


def make_template_phantom():
    """The FLAIR-like MNI152 brain on a 2 mm grid shifted 9 mm and turned 4 degrees, with
    a bright 3 mm ball at each point of MNI_POINTS (labels 1..4 in that order)."""
    template, template_affine = locations._mni_flair_like(locations._nilearn_data_dir())
    angle = np.deg2rad(4.0)
    turn = np.array(
        [[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]]
    )
    affine = np.eye(4)
    affine[:3, :3] = turn * 2.0
    affine[:3, 3] = [-100.0, -140.0, -80.0]
    shape = (100, 120, 100)
    world_shift = np.array([9.0, -5.0, 4.0])  # the phantom's world = MNI + this
    # Grid voxel -> MNI -> template voxel.
    to_mni = affine.copy()
    to_mni[:3, 3] -= world_shift
    mapping = np.linalg.inv(template_affine) @ to_mni
    image = ndimage.affine_transform(
        template, mapping[:3, :3], mapping[:3, 3], output_shape=shape, order=1
    )
    brain = image > 0.05
    centres = np.indices(shape).reshape(3, -1).T @ affine[:3, :3].T + affine[:3, 3]
    labels = np.zeros(shape, dtype=np.int32)
    for number, point in enumerate(MNI_POINTS.values(), start=1):
        near = np.linalg.norm(centres - (np.array(point) + world_shift), axis=1) <= 3.0
        labels[near.reshape(shape) & brain] = number
    followup = np.where(labels > 0, 1.3, image).astype(np.float32)
    return followup, image.astype(np.float32), brain, affine, labels


def test_template_phantom_changes_get_the_class_of_where_they_were_put(template_phantom):
    followup, baseline, brain, affine, labels = template_phantom
    assert labels.max() == 4
    anatomy = anatomy_maps(followup, brain, affine, baseline=baseline)
    assert classify_changes(labels, anatomy) == list(MNI_POINTS)
    # Deterministic: a second run gives the same maps.
    again = anatomy_maps(followup, brain, affine, baseline=baseline)
    assert np.array_equal(again.infratentorial, anatomy.infratentorial)
    assert np.array_equal(again.ventricles, anatomy.ventricles)


def test_precedence_infratentorial_then_periventricular_then_cortex():
    shape = (12, 12, 12)
    everything = np.ones(shape, dtype=bool)
    nothing = np.zeros(shape, dtype=bool)
    labels = np.zeros(shape, dtype=np.int32)
    labels[1:3, 1:3, 1:3] = 1
    labels[6:8, 6:8, 6:8] = 2
    below = nothing.copy()
    below[:5, :5, :5] = True  # change 1 is infratentorial
    maps = locations.AnatomyMaps(
        ventricles=nothing,
        ventricle_zone=everything,
        cortex=everything,
        infratentorial=below,
        hyperintense=nothing,
        voxel_mm=1.0,
        settings=locations.LocationSettings(),
    )
    assert classify_changes(labels, maps) == [INFRATENTORIAL, PERIVENTRICULAR]
    cortex_only = locations.AnatomyMaps(**{**maps.__dict__, "ventricle_zone": nothing})
    assert classify_changes(labels, cortex_only) == [INFRATENTORIAL, CORTICAL_JUXTACORTICAL]
    neither = locations.AnatomyMaps(
        **{**maps.__dict__, "ventricle_zone": nothing, "cortex": nothing}
    )
    assert classify_changes(labels, neither) == [INFRATENTORIAL, DEEP_WHITE_MATTER]
    assert classify_changes(np.zeros(shape, dtype=np.int32), maps) == []


def test_an_enlarging_rim_is_periventricular_when_its_lesion_touches_the_ventricle():
    shape = (30, 30, 30)
    ventricles = np.zeros(shape, dtype=bool)
    ventricles[5:25, 5:25, 5:10] = True
    zone = ndimage.distance_transform_edt(~ventricles) <= 2.0
    lesion = np.zeros(shape, dtype=bool)
    lesion[12:18, 12:18, 10:17] = True  # a lesion on the ventricle's roof
    labels = np.zeros(shape, dtype=np.int32)
    labels[12:18, 12:18, 15:17] = 1  # its new top: 5 mm above the ventricle
    nothing = np.zeros(shape, dtype=bool)
    settings = locations.LocationSettings()
    maps = locations.AnatomyMaps(
        ventricles=ventricles,
        ventricle_zone=zone,
        cortex=nothing,
        infratentorial=nothing,
        hyperintense=lesion,
        voxel_mm=1.0,
        settings=settings,
    )
    assert classify_changes(labels, maps) == [PERIVENTRICULAR]
    # Without its lesion (no bright tissue around it) the same change is deep.
    alone = locations.AnatomyMaps(**{**maps.__dict__, "hyperintense": nothing})
    assert classify_changes(labels, alone) == [DEEP_WHITE_MATTER]


def test_count_by_location_counts_new_and_shrinking_per_class():
    table = pd.DataFrame(
        {
            "location": [INFRATENTORIAL, INFRATENTORIAL, PERIVENTRICULAR, INFRATENTORIAL],
            "direction": ["brighter", "darker", "brighter", "brighter"],
            "volume_mm3": [10.0, 5.0, 3.0, 2.0],
        }
    )
    counts = count_by_location(table)
    assert list(counts) == list(LOCATION_CLASSES)
    assert counts[INFRATENTORIAL] == {
        "new_or_enlarging": 2,
        "new_or_enlarging_volume_mm3": 12.0,
        "shrinking": 1,
        "shrinking_volume_mm3": 5.0,
    }
    assert counts[PERIVENTRICULAR]["new_or_enlarging"] == 1
    assert counts[DEEP_WHITE_MATTER]["new_or_enlarging"] == 0
    empty = count_by_location(pd.DataFrame(columns=LESION_COLUMNS))
    assert all(c["new_or_enlarging"] == 0 and c["shrinking"] == 0 for c in empty.values())
    assert "juxtacortical/cortical 0" in locations.location_counts_text(counts)


def test_lesion_table_has_a_location_column_even_when_empty(template_phantom):
    followup, baseline, brain, affine, labels = template_phantom
    nothing = np.zeros((4, 4, 4))
    empty = lesion_table(
        nothing.astype(np.int32), nothing, nothing, nothing, np.eye(4), brain_mask=nothing > -1
    )
    assert list(empty.columns) == LESION_COLUMNS and "location" in LESION_COLUMNS
    probability = (labels > 0).astype(np.float32)
    unplaced = lesion_table(labels, probability, baseline, followup, affine)
    assert set(unplaced["location"]) == {"n/a"}
    table = lesion_table(labels, probability, baseline, followup, affine, brain_mask=brain)
    assert list(table["location"]) == list(MNI_POINTS)
    assert list(table["direction"]) == ["brighter"] * 4


# --------------------------------------------------------------------------- the demo


def test_demo_changes_are_never_infratentorial_and_those_at_the_ventricles_periventricular(
    tmp_path,
):
    """The demo paints its lesions in cerebral white matter (WM fraction > 0.9, at least
    radius + 4 mm inside the brain), 3 in 4 with the centre within 12 mm of a lateral
    ventricle: none may come out infratentorial; those marked periventricular whose
    centre lies within their own radius + 2 mm of the ventricles must come out so."""
    import nibabel as nib

    from mschange.demo import make_demo_subject

    paths = make_demo_subject("demo02", tmp_path, has_change=True, seed=7, voxel_size_mm=1.0)
    image = nib.load(paths.followup)
    followup = np.asarray(image.dataobj, dtype=np.float32)
    brain = np.asarray(nib.load(paths.followup_brain_mask).dataobj) > 0
    baseline = np.asarray(nib.load(paths.baseline).dataobj, dtype=np.float32)
    change = np.asarray(nib.load(paths.change_mask).dataobj) > 0
    labels, count = ndimage.label(change, np.ones((3, 3, 3)))
    assert count >= 4
    anatomy = anatomy_maps(followup, brain, image.affine, baseline=baseline)
    classes = classify_changes(labels, anatomy)
    assert INFRATENTORIAL not in classes
    params = json.loads(paths.params_json.read_text())
    # Which painted lesion each change component belongs to (the nearest centre).
    centres = np.array(ndimage.center_of_mass(change, labels, np.arange(1, count + 1)))
    world = centres @ image.affine[:3, :3].T + image.affine[:3, 3]
    to_ventricle = ndimage.distance_transform_edt(~anatomy.ventricles)
    changing = [les for les in params["lesions"] if les["kind"] != "stable"]
    checked = 0
    for number, point in enumerate(world, start=1):
        lesion = min(changing, key=lambda les: np.linalg.norm(np.array(les["centre_mm"]) - point))
        voxel = np.round(np.linalg.inv(image.affine) @ np.append(lesion["centre_mm"], 1.0)).astype(
            int
        )[:3]
        if to_ventricle[tuple(voxel)] <= max(lesion["radii_mm"]) * 0.8:
            assert classes[number - 1] == PERIVENTRICULAR, (number, lesion["kind"])
            checked += 1
    assert checked >= 1


# --------------------------------------------------------------------------- real pairs


def _real_pair_on_1mm(pair: str):
    """A development pair on a 1 mm grid over the dataset's common space (its own
    transforms and brain mask, not the pipeline's preprocessing), normalised like the
    pipeline (brain 99th percentile = 1), and its ground-truth change components."""
    import SimpleITK as sitk

    from mschange.imagespace import from_sitk, to_sitk
    from mschange.preprocessing.normalize import normalize_percentiles
    from mschange.preprocessing.resample import isotropic_grid

    folder = OPEN_MS_DATA / "longitudinal" / pair
    truth_data, truth_affine = from_sitk(sitk.ReadImage(str(folder / "gt.nii.gz")))
    shape, affine = isotropic_grid(truth_data.shape, truth_affine, 1.0)
    grid = to_sitk(np.zeros(shape, np.float32), affine)
    scans = {}
    for study in ("study1", "study2"):
        raw = sitk.ReadImage(str(folder / f"{study}_FLAIR.nii.gz"), sitk.sitkFloat32)
        move = sitk.ReadTransform(str(folder / f"{study}_FLAIR_to_common_space.txt"))
        scans[study] = from_sitk(sitk.Resample(raw, grid, move, sitk.sitkLinear, 0.0))[0]
    masks = {}
    for name in ("gt", "brainmask"):
        image = sitk.Cast(sitk.ReadImage(str(folder / f"{name}.nii.gz")), sitk.sitkFloat32)
        masks[name] = from_sitk(sitk.Resample(image, grid))[0] > 0.5
    # Where either scan has no data is not brain (the 2D scans' slabs end early).
    brain = masks["brainmask"] & (scans["study1"] > 0) & (scans["study2"] > 0)
    baseline = normalize_percentiles(scans["study1"], brain)[0]
    followup = normalize_percentiles(scans["study2"], brain)[0]
    labels = ndimage.label(masks["gt"], np.ones((3, 3, 3)))[0]
    return baseline, followup, brain, affine, labels


# Classes checked by eye on the follow-up (docs/locations.md): the clear cases only.
REAL_CLASSES_BY_EYE = {
    "patient01": {
        2: PERIVENTRICULAR,
        4: PERIVENTRICULAR,
        6: PERIVENTRICULAR,
        7: PERIVENTRICULAR,
        8: DEEP_WHITE_MATTER,
        1: CORTICAL_JUXTACORTICAL,
    },
    "patient03": {
        8: PERIVENTRICULAR,
        9: PERIVENTRICULAR,
        38: PERIVENTRICULAR,
        11: DEEP_WHITE_MATTER,
        42: DEEP_WHITE_MATTER,
        25: INFRATENTORIAL,
    },
}


@pytest.mark.slow
@pytest.mark.realdata
@requires_open_ms_data
@pytest.mark.parametrize("pair", ["patient01", "patient03"])
def test_real_change_components_get_the_classes_seen_by_eye(pair):
    baseline, followup, brain, affine, labels = _real_pair_on_1mm(pair)
    table = lesion_table(
        labels, (labels > 0).astype(np.float32), baseline, followup, affine, brain_mask=brain
    )
    print(table[["lesion_id", "voxels", "direction", "location"]].to_string())
    found = dict(zip(table["lesion_id"], table["location"], strict=True))
    assert {n: found[n] for n in REAL_CLASSES_BY_EYE[pair]} == REAL_CLASSES_BY_EYE[pair]
    again = classify_changes(labels, anatomy_maps(followup, brain, affine, baseline=baseline))
    assert again == list(table["location"])
