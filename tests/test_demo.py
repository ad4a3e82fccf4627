"""The synthetic demo cohort: determinism, contrast, head, exact change truth, the sheet.

Everything runs at 2 mm voxels. Several checks recompute the geometry from the
parameters JSON alone (an independent implementation of its stated conventions),
so they also check that the JSON describes what was drawn.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from mschange.cohort import read_cohort_sheet
from mschange.config import load_schema
from mschange.demo_cohort import (
    DemoSubjectPaths,
    demo_cohort_rows,
    demo_single_ids,
    demo_subject_ids,
    write_demo_sheet,
)
from mschange.demo_phantom import TEMPLATES, _template_dir, make_demo_subject
from mschange.subject_id import SUBJECT_ID_PATTERN, SUBJECT_ID_WILDCARD, is_subject_id

VOXEL = 2.0
SEED = 7


def load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def params_of(paths: DemoSubjectPaths) -> dict[str, Any]:
    return json.loads(paths.params_json.read_text())


@pytest.fixture(scope="module")
def change_subject(tmp_path_factory: pytest.TempPathFactory) -> DemoSubjectPaths:
    out = tmp_path_factory.mktemp("demo_change")
    return make_demo_subject("demo05", out, has_change=True, seed=SEED, voxel_size_mm=VOXEL)


@pytest.fixture(scope="module")
def stable_subject(tmp_path_factory: pytest.TempPathFactory) -> DemoSubjectPaths:
    out = tmp_path_factory.mktemp("demo_stable")
    return make_demo_subject("demo01", out, has_change=False, seed=SEED, voxel_size_mm=VOXEL)


# ------------------------------------------------------- geometry recomputed from the JSON


def voxel_points(params: dict[str, Any], timepoint: str, index: np.ndarray) -> np.ndarray:
    """Subject-space mm (3, N) of the voxel centres ``index`` (3, N) of a time point."""
    matrix = np.asarray(params["timepoints"][timepoint]["voxel_to_subject"])
    return matrix[:3, :3] @ index + matrix[:3, 3:4]


def template_points(params: dict[str, Any], points: np.ndarray) -> np.ndarray:
    """Template (MNI) mm of subject points: q = centre + S (p - centre) + u(p)."""
    grid = np.asarray(params["grid_affine"])
    shape = params["grid_shape"]
    centre = np.asarray(params["centre_mm"])[:, None]
    deformation = params["deformation"]
    coeffs = np.asarray(deformation["dct_coefficients_mm"])
    continuous = np.linalg.solve(grid[:3, :3], points - grid[:3, 3:4])
    cosines = [
        np.cos(
            np.pi * np.arange(coeffs.shape[1])[:, None] * (continuous[a] + 0.5)[None, :] / shape[a]
        )
        for a in range(3)
    ]
    shift = np.einsum("cabd,an,bn,dn->cn", coeffs, *cosines)
    return centre + np.asarray(deformation["scale"])[:, None] * (points - centre) + shift


def in_lesions(
    params: dict[str, Any], timepoint: str, points: np.ndarray, kinds: tuple[str, ...] | None = None
) -> np.ndarray:
    inside = np.zeros(points.shape[1], dtype=bool)
    for lesion in params["lesions"]:
        scale = lesion[f"scale_{timepoint}"]
        if scale == 0 or (kinds is not None and lesion["kind"] not in kinds):
            continue
        local = np.asarray(lesion["axes"]).T @ (points - np.asarray(lesion["centre_mm"])[:, None])
        radii = scale * np.asarray(lesion["radii_mm"])[:, None]
        inside |= ((local / radii) ** 2).sum(axis=0) <= 1.0
    return inside


def tissue_fractions(params: dict[str, Any], points: np.ndarray) -> dict[str, np.ndarray]:
    """Template GM/WM probabilities at subject points (linear interpolation)."""
    fractions = {}
    for key in ("gm", "wm"):
        image = nib.load(_template_dir() / TEMPLATES[key])
        to_voxel = np.linalg.inv(image.affine)
        q = template_points(params, points)
        coords = to_voxel[:3, :3] @ q + to_voxel[:3, 3:4]
        fractions[key] = ndi.map_coordinates(
            np.asarray(image.dataobj, dtype=np.float32) / 255, coords, order=1
        )
    return fractions


# ----------------------------------------------------------------------------------- tests


def test_same_seed_same_voxels_other_seed_differs(
    change_subject: DemoSubjectPaths, tmp_path: Path
) -> None:
    again = make_demo_subject(
        "demo05", tmp_path / "a", has_change=True, seed=SEED, voxel_size_mm=VOXEL
    )
    for field in (
        "baseline",
        "followup",
        "change_mask",
        "change_type",
        "baseline_brain_mask",
        "followup_brain_mask",
    ):
        assert np.array_equal(load(getattr(change_subject, field)), load(getattr(again, field)))
    assert params_of(again) == params_of(change_subject)

    other = make_demo_subject(
        "demo05", tmp_path / "b", has_change=True, seed=SEED + 1, voxel_size_mm=VOXEL
    )
    assert not np.array_equal(load(other.followup), load(change_subject.followup))
    assert params_of(other)["lesions"] != params_of(change_subject)["lesions"]


def test_change_lesions_are_added_to_the_same_subject(
    change_subject: DemoSubjectPaths, tmp_path: Path
) -> None:
    # Same id and seed without change: same anatomy and stable lesions, no others.
    plain = make_demo_subject("demo05", tmp_path, has_change=False, seed=SEED, voxel_size_mm=VOXEL)
    with_change, without = params_of(change_subject), params_of(plain)
    stable = [les for les in with_change["lesions"] if les["kind"] == "stable"]
    assert without["lesions"] == stable
    assert without["deformation"] == with_change["deformation"]
    assert np.array_equal(load(plain.followup_brain_mask), load(change_subject.followup_brain_mask))


def test_flair_contrast(change_subject: DemoSubjectPaths) -> None:
    params = params_of(change_subject)
    image = load(change_subject.followup).astype(np.float64)
    brain = load(change_subject.followup_brain_mask) > 0
    index = np.argwhere(brain).T.astype(np.float64)
    points = voxel_points(params, "followup", index)
    lesion = in_lesions(params, "followup", points)
    tissue = tissue_fractions(params, points)
    values = image[brain]
    gm = values[(tissue["gm"] > 0.7) & ~lesion].mean()
    wm = values[(tissue["wm"] > 0.9) & ~lesion].mean()
    csf = values[(tissue["gm"] + tissue["wm"] < 0.1) & ~lesion].mean()
    lesions = values[lesion].mean()
    assert lesion.sum() > 20
    assert lesions > 1.15 * gm > 1.15 * 1.05 * wm
    assert wm > 2.0 * csf


def test_head_around_the_brain(change_subject: DemoSubjectPaths) -> None:
    image = load(change_subject.followup).astype(np.float64)
    brain = load(change_subject.followup_brain_mask) > 0
    wm_level = params_of(change_subject)["intensity"]["levels"]["wm"]
    # The brain lies inside the field of view and inside the head (no air in it).
    assert not (brain[[0, -1]].any() or brain[:, [0, -1]].any() or brain[:, :, [0, -1]].any())
    assert np.percentile(image[brain], 0.5) > 0.2 * wm_level
    # Going out from the brain: a dark band (CSF, bone), bright scalp, then air.
    distance = ndi.distance_transform_edt(~brain, sampling=VOXEL)
    shells = np.array([image[(distance > r) & (distance <= r + 2)].mean() for r in range(0, 30, 2)])
    darkest, brightest = int(np.argmin(shells[:5])), int(np.argmax(shells))
    assert shells[darkest] < 0.3 * wm_level
    assert shells[brightest] > 1.2 * wm_level
    assert 2 * darkest < 2 * brightest <= 16  # scalp outside the bone, within ~16 mm
    assert shells[-3:].max() < 0.1 * wm_level  # air beyond the head
    # Plenty of bright scalp outside the brain mask.
    assert ((image > 1.2 * wm_level) & (distance > 5)).sum() > 5000


def test_change_truth_is_exact_on_the_followup_grid(change_subject: DemoSubjectPaths) -> None:
    params = params_of(change_subject)
    change = load(change_subject.change_mask)
    kind = load(change_subject.change_type)
    followup = nib.load(change_subject.followup)
    label = nib.load(change_subject.change_mask)
    assert label.shape == followup.shape
    assert np.allclose(label.affine, followup.affine)
    assert change.dtype == np.uint8 and kind.dtype == np.uint8
    assert change.sum() > 0
    assert np.array_equal(change > 0, kind > 0)
    assert set(np.unique(kind)) == {0, 1, 2, 3}

    # Recompute from the analytic lesions at the follow-up voxel centres.
    index = np.indices(change.shape).reshape(3, -1).astype(np.float64)
    points = voxel_points(params, "followup", index)
    after = in_lesions(params, "followup", points)
    before = in_lesions(params, "baseline", points)
    assert np.array_equal((after != before).reshape(change.shape), change > 0)
    new = (after & in_lesions(params, "followup", points, ("new",))).reshape(change.shape)
    assert np.array_equal(new & (change > 0), kind == 1)


def test_new_lesions_appear_in_the_followup_image(change_subject: DemoSubjectPaths) -> None:
    params = params_of(change_subject)
    kind = load(change_subject.change_type)
    followup = load(change_subject.followup).astype(np.float64)
    baseline = load(change_subject.baseline).astype(np.float64)
    lesion_level = params["intensity"]["levels"]["lesion"]
    new = np.argwhere(kind == 1).T.astype(np.float64)
    # The same subject-space points, looked up on the baseline grid.
    to_baseline = np.linalg.inv(np.asarray(params["timepoints"]["baseline"]["voxel_to_subject"]))
    points = voxel_points(params, "followup", new)
    baseline_index = to_baseline[:3, :3] @ points + to_baseline[:3, 3:4]
    before = ndi.map_coordinates(baseline, baseline_index, order=1)
    after = followup[kind == 1]
    assert after.mean() > 0.7 * lesion_level
    assert after.mean() > 1.3 * before.mean()


def test_no_change_subject(stable_subject: DemoSubjectPaths) -> None:
    params = params_of(stable_subject)
    assert load(stable_subject.change_mask).sum() == 0
    assert load(stable_subject.change_type).sum() == 0
    assert params["lesions"]
    assert all(
        les["kind"] == "stable" and les["scale_baseline"] == les["scale_followup"] == 1
        for les in params["lesions"]
    )


def test_lesion_counts_and_volumes(
    change_subject: DemoSubjectPaths, stable_subject: DemoSubjectPaths
) -> None:
    for paths in (change_subject, stable_subject):
        for lesion in params_of(paths)["lesions"]:
            radii = np.asarray(lesion["radii_mm"])
            for timepoint in ("baseline", "followup"):
                scale = lesion[f"scale_{timepoint}"]
                volume = lesion[f"volume_{timepoint}_mm3"]
                assert volume == pytest.approx(4 / 3 * np.pi * np.prod(scale * radii))
                assert volume == 0 or 3.0 <= volume <= 2000.0
            if lesion["kind"] == "enlarging":
                assert 0 < lesion["scale_baseline"] < lesion["scale_followup"]
            if lesion["kind"] == "shrinking":
                assert lesion["scale_baseline"] > lesion["scale_followup"] > 0
    kinds = [les["kind"] for les in params_of(change_subject)["lesions"]]
    assert 6 <= kinds.count("stable") <= 12
    assert 2 <= kinds.count("new") <= 4
    assert 1 <= kinds.count("enlarging") <= 2 and 1 <= kinds.count("shrinking") <= 2


def test_lesions_lie_in_white_matter(change_subject: DemoSubjectPaths) -> None:
    params = params_of(change_subject)
    centres = np.array([les["centre_mm"] for les in params["lesions"]]).T
    assert np.all(tissue_fractions(params, centres)["wm"] > 0.8)


def test_timepoints_differ_by_motion(change_subject: DemoSubjectPaths) -> None:
    params = params_of(change_subject)
    baseline = load(change_subject.baseline).ravel()
    followup = load(change_subject.followup).ravel()
    correlation = np.corrcoef(baseline, followup)[0, 1]
    assert 0.5 < correlation < 0.99
    for timepoint in params["timepoints"].values():
        assert np.abs(timepoint["rotation_deg_xyz"]).max() <= 5.0
        assert np.abs(timepoint["translation_mm"]).max() <= 6.0
        assert 0.85 <= timepoint["gamma"] <= 1.15
    assert not np.allclose(
        params["timepoints"]["baseline"]["voxel_to_subject"],
        params["timepoints"]["followup"]["voxel_to_subject"],
    )


def test_grid_is_ras_mni_with_the_voxel_size(change_subject: DemoSubjectPaths) -> None:
    image = nib.load(change_subject.followup)
    assert image.get_data_dtype() == np.float32
    assert np.allclose(image.affine[:3, :3], np.diag([VOXEL] * 3))
    assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
    assert all(50 < n < 160 for n in image.shape)  # about half the 1 mm size per axis
    centre_mm = image.affine @ np.append((np.array(image.shape) - 1) / 2, 1.0)
    assert np.all(np.abs(centre_mm[:3]) < 30)
    assert float(np.asarray(image.dataobj).min()) > 0


def test_subject_ids() -> None:
    assert demo_subject_ids(2, 3) == [
        ("demo01", False),
        ("demo02", False),
        ("demo03", True),
        ("demo04", True),
        ("demo05", True),
    ]
    assert demo_subject_ids(0, 1) == [("demo01", True)]
    with pytest.raises(ValueError):
        demo_subject_ids(-1, 2)


def test_sheet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    subjects = demo_subject_ids(1, 2)
    sheet = write_demo_sheet(Path("demo"), subjects, Path("demo/cohort.tsv"))
    with sheet.open() as stream:
        rows = list(csv.DictReader(stream, delimiter="\t"))
    assert list(rows[0]) == ["subject", "baseline", "followup", "split", "change", "label"]
    assert [(r["subject"], r["split"], r["change"]) for r in rows] == [
        ("demo01", "train", "no"),
        ("demo02", "test", "yes"),
        ("demo03", "test", "yes"),
    ]
    assert rows[0]["label"] == ""
    assert rows[1]["baseline"] == "sub-demo02/sub-demo02_tp-baseline_FLAIR.nii.gz"
    assert rows[2]["label"] == "sub-demo03/sub-demo03_tp-followup_desc-change_mask.nii.gz"
    # The project's reader accepts it (relative paths resolve from the sheet's folder).
    cohort = read_cohort_sheet(sheet)
    assert cohort["followup"].iloc[0] == str(
        tmp_path / "demo/sub-demo01/sub-demo01_tp-followup_FLAIR.nii.gz"
    )


def test_sheet_rows_are_the_workflows_rows(tmp_path: Path) -> None:
    # One builder of rows: the workflow's (paths under the demo folder, read while the
    # DAG is built) and the sheet's (the same paths, relative to the sheet's folder).
    out = tmp_path / "demo"
    sheet = write_demo_sheet(
        out, demo_subject_ids(1, 1), out / "cohort.tsv", single=demo_single_ids(1, 1, 1)
    )
    with sheet.open() as stream:
        rows = list(csv.DictReader(stream, delimiter="\t"))
    workflow = demo_cohort_rows(out, 1, 1, 1)
    assert [r["subject"] for r in workflow] == ["demo01", "demo02", "demo03"]
    for row, expected in zip(rows, workflow, strict=True):
        for key, value in expected.items():
            assert (
                str(out / row[key])
                if key in ("baseline", "followup", "label") and row[key]
                else row[key]
            ) == value
    assert rows[2]["baseline"] == "" and rows[2]["split"] == "train"
    assert rows[2]["followup"] == "sub-demo03/sub-demo03_tp-followup_FLAIR.nii.gz"


def test_cohort_module_is_light_to_import() -> None:
    # The workflow imports it while Snakemake builds the DAG.
    code = (
        "import sys, mschange.demo_cohort, mschange.subject_id; "
        "print(sorted({'numpy', 'scipy', 'nibabel', 'torch', 'pandas'} & set(sys.modules)))"
    )
    heavy = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert heavy == "[]"


def test_one_subject_id_rule() -> None:
    # The cohort sheet's schema states the same rule.
    assert load_schema("cohort")["properties"]["subject"]["pattern"] == SUBJECT_ID_PATTERN
    # The workflow's wildcard constraint: the same rule, unanchored, no capturing group.
    assert SUBJECT_ID_WILDCARD == "[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*"
    for text in ["demo01", "A-b-3", "x", "-a", "a-", "a--b", "a_b", "a b", "é", "demo01\n", ""]:
        assert is_subject_id(text) == (re.fullmatch(SUBJECT_ID_WILDCARD, text) is not None)
    assert all(is_subject_id(s) for s, _ in demo_subject_ids(2, 3))
    assert not is_subject_id("demo01\n") and not is_subject_id("a--b")
    with pytest.raises(ValueError, match="subject id"):
        make_demo_subject("demo_01", Path("unused"), has_change=False, seed=SEED)
