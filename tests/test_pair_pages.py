"""The viewer and summary written for one pair from its prediction files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mschange import viewer
from mschange.io import save_json, save_nifti
from mschange.pair_pages import write_pair_pages

from .test_viewer import phantom_pair

THRESHOLDS = {"min_similarity": 0.6, "max_contrast": 0.05, "min_brain_ml": 1, "max_brain_ml": 5000}


def _pair_files(folder, *, with_label: bool):
    images, table = phantom_pair()
    table["location"] = ["deep_white_matter", "periventricular"]
    files = {}
    for name in ("baseline", "followup", "probability"):
        files[name] = save_nifti(getattr(images, name), images.affine, folder / f"{name}.nii.gz")
    files["labels"] = save_nifti(
        images.labels, images.affine, folder / "labels.nii.gz", dtype=np.uint16
    )
    brain = (images.followup > 0).astype(np.uint8)
    files["mask"] = save_nifti(brain, images.affine, folder / "mask.nii.gz", dtype=np.uint8)
    files["lesions"] = folder / "lesions.tsv"
    table.to_csv(files["lesions"], sep="\t", index=False)
    files["record"] = save_json(
        {
            "settings": {"kappa": 0.1, "min_blob_voxels": 5},
            "model": {"name": "m1", "package_version": "9.9"},
        },
        folder / "record.json",
    )
    files["qc"] = save_json(
        {
            "registration_similarity": 0.9,
            "contrast_difference": 0.01,
            "brain_volume_ml_baseline": 300.0,
            "brain_volume_ml_followup": 300.0,
        },
        folder / "qc.json",
    )
    if with_label:
        # The label on a coarser (2 mm) grid, as a native follow-up grid can be.
        affine = images.affine.copy()
        affine[:3, :3] *= 2
        label = np.zeros([n // 2 for n in images.followup.shape], np.uint8)
        label[images.truth[::2, ::2, ::2]] = 1
        files["label"] = save_nifti(label, affine, folder / "label.nii.gz", dtype=np.uint8)
    return images, table, files


@pytest.mark.skipif(not viewer.niivue_available(), reason="NiiVue not bundled")
@pytest.mark.parametrize("with_label", [True, False])
def test_pages_of_a_pair(tmp_path, with_label):
    images, table, files = _pair_files(tmp_path, with_label=with_label)
    out = tmp_path / "out"
    outputs = {
        "viewer": out / "figures" / "sub-p1_viewer.html",
        "summary_html": out / "sub-p1_summary.html",
        "summary_tsv": out / "sub-p1_summary.tsv",
        "summary_json": out / "sub-p1_summary.json",
    }
    out.joinpath("figures").mkdir(parents=True)
    qc_figure = None
    if with_label:  # (one case with the QC picture, one without)
        import matplotlib.pyplot as plt

        qc_figure = tmp_path / "qc.png"
        plt.imsave(qc_figure, images.followup[:, :, 40], cmap="gray")
    summary = write_pair_pages(
        baseline=files["baseline"],
        followup=files["followup"],
        masks=[files["mask"]],
        probability=files["probability"],
        labels=files["labels"],
        lesions=files["lesions"],
        record=files["record"],
        qc=files["qc"],
        qc_thresholds=THRESHOLDS,
        outputs=outputs,
        subject="p1",
        label=files.get("label"),
        qc_figure=qc_figure,
    )
    assert summary["viewer"] == "figures/sub-p1_viewer.html"
    assert ('<img src="data:image/png' in outputs["summary_html"].read_text()) is with_label
    assert json.loads(outputs["summary_json"].read_text()) == json.loads(json.dumps(summary))
    new = summary["changes"]["new_or_enlarging"]
    assert new["by_location"]["deep_white_matter"]["count"] == 1
    assert summary["changes"]["shrinking"]["by_location"]["periventricular"]["count"] == 1
    assert summary["model"] == {"name": "m1", "version": "9.9"}
    page = outputs["viewer"].read_text()
    assert ('id="show-truth"' in page) is with_label
    assert "Model m1 (mschange 9.9)" in page
    tsv = pd.read_csv(outputs["summary_tsv"], sep="\t")
    assert tsv["count"].sum() == 2 * len(table)  # every change, once by class and in "all"


def test_truth_is_brought_onto_the_followup_grid(tmp_path):
    from mschange.pair_pages import truth_on_grid

    images, _, files = _pair_files(tmp_path, with_label=True)
    truth = truth_on_grid(files["label"], images.followup.shape, images.affine, "p1")
    assert truth.shape == images.followup.shape
    # A 2 mm label marks the same place: most of the lesion, little outside it.
    overlap = (truth & images.truth).sum() / images.truth.sum()
    assert overlap > 0.7
    assert (truth & ~images.truth).sum() < images.truth.sum()
