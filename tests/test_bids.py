"""Predictions as a BIDS derivatives dataset: what pybids finds in ``mschange predict``'s
output folder and in the workflow's ``results/derivatives/mschange/``.

``predict`` runs for real except its preprocessing (HD-BET, ANTs: minutes), which a stand-in
``_run`` skips by giving the network the raw scans (same grid) and the phantom's brain
mask; the tiny workflow run's dataset is checked in tests/test_workflow.py.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import bids
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from mschange import __version__
from mschange.bids import (
    BIDSIGNORE,
    copy_predictions,
    find_bids_scan,
    pair_entities,
)
from mschange.detection.inference import LESION_COLUMN_INFO
from mschange.detection.outputs import (
    IMAGE_KEYS,
    PREDICTION_SUFFIXES,
    PairEntities,
    pair_page_paths,
    prediction_paths,
)
from mschange.io import InputError

from .conftest import default_preprocessing, ellipsoid_phantom

SPACING = (2.0, 2.0, 2.0)
# The tiny untrained network's probability exceeds this in a few places: some changes.
KAPPA = 0.015


def _write_scan(path: Path, seed: int) -> None:
    image, _ = ellipsoid_phantom((88, 100, 80), SPACING, radii_mm=(60, 75, 55))
    noise = np.random.default_rng(seed).normal(0, 2, image.shape).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image + noise, np.diag([*SPACING, 1.0])), path)


@pytest.fixture
def raw_bids(tmp_path: Path) -> Path:
    """A raw BIDS dataset: sub-01 with two sessions of a FLAIR, and a DOI."""
    root = tmp_path / "raw"
    for session, seed in (("01", 1), ("02", 2)):
        _write_scan(
            root / "sub-01" / f"ses-{session}" / "anat" / f"sub-01_ses-{session}_FLAIR.nii.gz", seed
        )
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "raw", "BIDSVersion": "1.10.0", "DatasetDOI": "doi:10.1234/ms.v1"})
    )
    return root


@pytest.fixture
def model(tmp_path: Path) -> Path:
    import torch

    from mschange.detection.modelfile import save_detector
    from mschange.detection.network import ChangeDetector, DetectorArchitecture

    torch.manual_seed(0)  # the same changes every time
    return save_detector(
        ChangeDetector(DetectorArchitecture(channels=(8, 16))),
        tmp_path / "model.pt",
        training={},
        metadata={"preprocessing": default_preprocessing(2.0), "seed": 1, "name": "tiny"},
    )


@pytest.fixture
def without_preprocessing(monkeypatch, tmp_path: Path):
    """predict with its preprocessing skipped (see the module's docstring)."""
    import torch

    from mschange.detection import pair
    from mschange.detection.steps import model_summary, predict_with_network

    _, brain = ellipsoid_phantom((88, 100, 80), SPACING, radii_mm=(60, 75, 55))
    mask = tmp_path / "brain_mask.nii.gz"
    nib.save(nib.Nifti1Image(brain.astype(np.uint8), np.diag([*SPACING, 1.0])), mask)

    def run(baseline, followup, model_files, loaded, out, *, subject, entities, settings, **_):
        # The raw scans stand in for the preprocessed ones the pages are drawn from.
        from mschange.layout import preprocessed_pair

        ready = preprocessed_pair(subject, str(out / "preproc"))
        for key, source in (
            ("baseline", baseline),
            ("followup", followup),
            ("baseline_mask", mask),
            ("followup_mask", mask),
        ):
            Path(ready[key]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, ready[key])
        outputs = {key: pair.output_paths(out, entities)[key] for key in PREDICTION_SUFFIXES}
        return predict_with_network(
            [network for network, _ in loaded],
            baseline,
            followup,
            [mask],
            followup,
            outputs,
            subject="x",
            settings=settings,
            device=torch.device("cpu"),
            record_extra={
                "model": model_summary(model_files[0], loaded[0][1]),
                "raw_inputs": {"baseline": str(baseline), "followup": str(followup)},
            },
        )

    monkeypatch.setattr(pair, "_run", run)


def _predict(baseline, followup, model, out, **options):
    from mschange.detection.pair import Progress, predict_pair

    return predict_pair(
        baseline,
        followup,
        model,
        out,
        overrides={"kappa": KAPPA, "min_blob_voxels": 5, "window": None},
        progress=Progress(stream=io.StringIO()),
        **options,
    )


def _layout(root: Path):
    return bids.BIDSLayout(root, validate=False, is_derivative=True)


def _entities(layout, path: Path) -> dict:
    found = layout.get_file(str(path))
    assert found is not None, path
    return {k: v for k, v in found.get_entities().items() if k != "datatype"}


def _expected_entities(key: str, name: str, subject: str, session: str | None) -> dict:
    suffix, extension = name.split("_")[-1].split(".", 1)
    expected = {"subject": subject, "suffix": suffix, "extension": "." + extension}
    if session:
        expected["session"] = session
    if key in IMAGE_KEYS:
        expected["res"] = IMAGE_KEYS[key]
    expected["desc"] = "change" if suffix in ("probseg", "mask") else "changes"
    return expected


def check_dataset(root: Path, subject: str, session: str | None, source: str) -> int:
    """Every file of one pair found by pybids with its entities and metadata (those of
    its prediction record); returns the number of changes."""
    layout = _layout(root)
    description = layout.get_dataset_description()
    assert description["DatasetType"] == "derivative"
    generated = description["GeneratedBy"][0]
    assert generated["Name"] == "mschange" and generated["Version"] == __version__
    assert description["DatasetLinks"]
    assert (root / ".bidsignore").read_text().split() == list(BIDSIGNORE)

    entities = PairEntities(subject, session)
    folder = root / entities.folder
    record = json.loads((folder / f"{entities.prefix}_desc-changes_prediction.json").read_text())
    names = {p.name for p in folder.iterdir()}
    for key, suffix in PREDICTION_SUFFIXES.items():
        name = entities.prefix + suffix
        path = root / (entities.figures if key == "figure" else entities.folder) / name
        assert path.is_file(), path
        assert _entities(layout, path) == _expected_entities(key, name, subject, session), name
        if key in IMAGE_KEYS:
            assert name.replace(".nii.gz", ".json") in names
            metadata = layout.get_metadata(str(path))
            assert metadata["Description"] and metadata["Resolution"]
            assert metadata["RawSources"][0] == metadata["SpatialReference"] == source
            assert metadata["Model"]["Name"] == record["model"]["name"]
            assert metadata["InferenceSettings"] == record["settings"]
            assert "space" not in _entities(layout, path)  # the follow-up's scanner space
            if "mask" in key or "labels" in key:
                assert metadata["ProbabilityThreshold"] == record["settings"]["kappa"]
                assert metadata["MinimumChangeVoxels"] == record["settings"]["min_blob_voxels"]
            else:
                assert metadata["Units"] == "arbitrary"
    # Labels, mask and lesion table agree, on both grids.
    table = layout.get(subject=subject, suffix="lesions", extension=".tsv")[0]
    lesions = pd.read_csv(table.path, sep="\t")
    assert layout.get_metadata(table.path) == {c: LESION_COLUMN_INFO[c] for c in lesions.columns}
    for res in ("iso", "native"):
        labels = np.asarray(
            nib.load(layout.get(suffix="dseg", res=res, extension=".nii.gz")[0].path).dataobj
        )
        mask = np.asarray(
            nib.load(layout.get(suffix="mask", res=res, extension=".nii.gz")[0].path).dataobj
        )
        np.testing.assert_array_equal(labels > 0, mask > 0)
        assert int(labels.max()) == len(lesions) == record["changes"]
    names_tsv = layout.get(suffix="dseg", extension=".tsv")[0].path
    assert list(pd.read_csv(names_tsv, sep="\t")["index"]) == list(lesions["lesion_id"])
    return len(lesions)


def test_predict_writes_a_bids_derivatives_dataset_with_subject_and_session_of_bids_input(
    tmp_path, raw_bids, model, without_preprocessing
):
    out = tmp_path / "out"
    baseline = raw_bids / "sub-01/ses-01/anat/sub-01_ses-01_FLAIR.nii.gz"
    followup = raw_bids / "sub-01/ses-02/anat/sub-01_ses-02_FLAIR.nii.gz"
    record = _predict(baseline, followup, model, out)
    changes = check_dataset(
        out, "01", "02", "bids:raw:sub-01/ses-02/anat/sub-01_ses-02_FLAIR.nii.gz"
    )
    assert changes > 1 and record["settings"]["kappa"] == KAPPA
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["SourceDatasets"] == [{"URL": raw_bids.as_uri(), "DOI": "doi:10.1234/ms.v1"}]
    assert description["DatasetLinks"] == {"raw": raw_bids.as_uri()}
    metadata = json.loads(Path(record["outputs"]["mask"].replace(".nii.gz", ".json")).read_text())
    assert metadata["Sources"][1] == "bids:raw:sub-01/ses-01/anat/sub-01_ses-01_FLAIR.nii.gz"
    assert sorted(p.name for p in out.iterdir()) == [
        ".bidsignore",
        "dataset_description.json",
        "preproc",
        "sub-01",
        "sub-01_ses-02.html",  # the pair's summary page, where fMRIPrep puts a report
    ]
    pages = pair_page_paths(str(out), PairEntities("01", "02"))
    assert record["pages"] == pages
    assert all(Path(page).is_file() for page in pages.values())
    # A rerun replaces what predict wrote, the pair's pages too; --subject names the
    # subject, the session stays.
    for page in pair_page_paths(str(out), PairEntities("01", "02")).values():
        Path(page).write_text("a page")
    _predict(baseline, followup, model, out, subject="p-7")
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("sub-")) == [
        "sub-p7",
        "sub-p7_ses-02.html",
    ]
    assert (out / "sub-p7" / "ses-02" / "anat").is_dir()


def test_predict_names_other_input_by_its_subject_id_without_session(
    tmp_path, model, without_preprocessing
):
    baseline, followup = tmp_path / "in" / "bl.nii.gz", tmp_path / "in" / "a" / "fu.nii.gz"
    _write_scan(baseline, 1)
    _write_scan(followup, 2)
    out = tmp_path / "out"
    _predict(baseline, followup, model, out, subject="p-01")
    check_dataset(out, "p01", None, "bids:inputs:a/fu.nii.gz")
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetLinks"] == {"inputs": (tmp_path / "in").as_uri()}


def test_predict_never_replaces_a_dataset_it_did_not_write(
    tmp_path, raw_bids, model, without_preprocessing
):
    """--out at a raw BIDS dataset (sub-* folders and a dataset_description.json, as
    predict writes) is refused; so is a sub-* folder without mschange's description."""
    before = sorted(str(p) for p in raw_bids.rglob("*"))
    baseline = raw_bids / "sub-01/ses-01/anat/sub-01_ses-01_FLAIR.nii.gz"
    followup = raw_bids / "sub-01/ses-02/anat/sub-01_ses-02_FLAIR.nii.gz"
    with pytest.raises(InputError, match="did not write"):
        _predict(baseline, followup, model, raw_bids)
    assert sorted(str(p) for p in raw_bids.rglob("*")) == before
    other = tmp_path / "other"
    (other / "sub-01").mkdir(parents=True)
    with pytest.raises(InputError, match=r"did not write \(sub-01\)"):
        _predict(baseline, followup, model, other)


def test_only_scans_inside_a_bids_dataset_carry_subject_and_session(tmp_path, raw_bids):
    scan = find_bids_scan(raw_bids / "sub-01/ses-02/anat/sub-01_ses-02_FLAIR.nii.gz")
    assert scan is not None and (scan.root, scan.subject, scan.session) == (raw_bids, "01", "02")
    loose = tmp_path / "loose" / "sub-01_ses-02_FLAIR.nii.gz"  # a BIDS name, no dataset
    assert find_bids_scan(loose) is None
    assert pair_entities("x-1", loose) == PairEntities("x1")
    unlisted = tmp_path / "nodesc" / "sub-01" / "ses-02" / "anat" / "sub-01_ses-02_FLAIR.nii.gz"
    assert find_bids_scan(unlisted) is None
    moved = raw_bids / "sub-01/ses-01/anat/sub-02_ses-01_FLAIR.nii.gz"  # folder disagrees
    assert find_bids_scan(moved) is None
    assert pair_entities(
        "01-01to02", raw_bids / "sub-01/ses-02/anat/sub-01_ses-02_FLAIR.nii.gz"
    ) == PairEntities("01", "02")


def test_the_workflow_dataset_carries_bids_subjects_and_sessions(tmp_path, raw_bids, model):
    """copy_predictions (rule bids_derivatives) on a BIDS cohort's pair ids."""
    import torch

    from mschange.detection.inference import InferenceSettings
    from mschange.detection.modelfile import load_detector
    from mschange.detection.steps import model_summary, predict_with_network

    network, metadata = load_detector(model)
    _, brain = ellipsoid_phantom((88, 100, 80), SPACING, radii_mm=(60, 75, 55))
    mask = tmp_path / "brain_mask.nii.gz"
    nib.save(nib.Nifti1Image(brain.astype(np.uint8), np.diag([*SPACING, 1.0])), mask)
    scans = [raw_bids / f"sub-01/ses-0{i}/anat/sub-01_ses-0{i}_FLAIR.nii.gz" for i in (1, 2)]
    outputs = prediction_paths(str(tmp_path / "predict" / "sub-01-01to02"), "01-01to02")
    predict_with_network(
        network,
        scans[0],
        scans[1],
        [mask],
        scans[1],
        outputs,
        subject="01-01to02",
        settings=InferenceSettings(window=None, kappa=KAPPA, min_blob_voxels=5),
        device=torch.device("cpu"),
        record_extra={"model": model_summary(model, metadata)},
    )
    root = tmp_path / "derivatives" / "mschange"
    given = {"outputs": outputs, "baseline": str(scans[0]), "followup": str(scans[1])}
    copy_predictions(root, {"01-01to02": given})
    check_dataset(root, "01", "02", "bids:raw:sub-01/ses-02/anat/sub-01_ses-02_FLAIR.nii.gz")
    with pytest.raises(ValueError, match="would both be sub-01_ses-02"):
        copy_predictions(tmp_path / "again", {"01-01to02": given, "01-b": given})


def test_labels_on_another_grid_keep_their_ids_and_make_the_mask():
    from mschange.changemap import changes_to_grid, labels_to_grid

    labels = np.zeros((10, 10, 12), dtype=np.int32)
    labels[1:4, 1:4, 1:10] = 1
    labels[6:8, 6:8, 4] = 2  # one 1 mm slice, between two 3 mm slice centres
    native_affine = np.diag([1.0, 1.0, 3.0, 1.0])
    native_affine[2, 3] = 2.0
    native = labels_to_grid(labels, np.eye(4), (10, 10, 4), native_affine)
    assert set(np.unique(native)) == {0, 1, 2}
    assert (native == 2).sum() == 1  # kept at its centroid
    mask = changes_to_grid(labels, np.eye(4), (10, 10, 4), native_affine)
    np.testing.assert_array_equal(mask, native > 0)


def test_predict_shows_a_given_label_in_the_viewer_and_refuses_a_bad_one(
    tmp_path, model, without_preprocessing
):
    """--label: checked like a cohort sheet's label before anything is written, then
    drawn in the viewer as the ground-truth toggle."""
    from mschange.cohort import CohortError

    baseline, followup = tmp_path / "in" / "bl.nii.gz", tmp_path / "in" / "fu.nii.gz"
    _write_scan(baseline, 1)
    _write_scan(followup, 2)
    grid = nib.load(followup)
    truth = np.zeros(grid.shape, np.uint8)
    truth[40:44, 50:54, 40:44] = 1
    label = tmp_path / "in" / "label.nii.gz"
    nib.save(nib.Nifti1Image(truth, grid.affine), label)
    out = tmp_path / "out"
    record = _predict(baseline, followup, model, out, subject="p1", label=label)
    page = Path(record["pages"]["viewer"]).read_text()
    assert 'id="show-truth"' in page and '"truth":"' in page
    # A label with a value other than 0 and 1 is refused; the dataset stays as it was.
    bad = tmp_path / "in" / "bad.nii.gz"
    nib.save(nib.Nifti1Image(truth * 2, grid.affine), bad)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    with pytest.raises(CohortError, match=r"bad\.nii\.gz"):
        _predict(baseline, followup, model, out, subject="p1", label=bad)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
