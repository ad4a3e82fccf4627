"""The lesion-based synthesis and the validation set, run by Snakemake on a tiny 1 mm cohort.

Painting needs 1 mm grids (the lesion bank's), where the tiny demo run works at 2 mm to
keep HD-BET fast. So this test writes the preprocessed pairs of a tiny 1 mm cohort
itself (synthetic heads) and lets Snakemake run only the stages after preprocessing
(``--allowed-rules``): the lesion bank, painting, the training table, training, the
validation set and its scoring by a model and the subtraction baseline, and the figure.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from mschange.cli import main

from .conftest import REPO
from .workflow_runs import snakemake, write_config

SHAPE = (48, 56, 48)
AFTER_PREPROCESSING = [
    "build_lesion_bank",
    "paint_lesions_subject",
    "paint_validation_subject",
    "lesion_figures",
    "list_training_samples",
    "train_detector",
    "list_validation_pairs",
    "validate_method",
    "validation_tables",
    "augmentation_figure",
]


def _save(data: np.ndarray, path: Path, affine: np.ndarray | None = None) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), path)
    return str(path)


def _head(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A FLAIR-like brain: white matter, a brighter cortex, dark ventricles, one bright
    existing lesion (for enlargements), noise; intensities as after normalisation."""
    grid = np.indices(SHAPE).astype(np.float64)
    centre = (np.asarray(SHAPE) - 1) / 2.0
    radius = np.sqrt(
        sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, (20.0, 24.0, 20.0), strict=True))
    )
    brain = radius <= 1.0
    image = np.where(brain, 0.5, 0.0)
    image[brain & (radius > 0.85)] = 0.62  # cortex
    ventricles = (
        np.sqrt(
            ((grid[0] - centre[0]) / 3) ** 2
            + ((grid[1] - centre[1]) / 8) ** 2
            + ((grid[2] - centre[2]) / 4) ** 2
        )
        <= 1.0
    )
    image[ventricles] = 0.2
    lesion = sum((g - c) ** 2 for g, c in zip(grid, (24, 20, 30), strict=True)) <= 9
    image[lesion] = 0.85
    image = np.where(brain, image + 0.01 * rng.standard_normal(SHAPE), 0.0)
    return np.clip(image, 0, 1).astype(np.float32), brain.astype(np.uint8)


def _preprocessed(workdir: Path, subject: str, rng: np.random.Generator) -> None:
    image, brain = _head(rng)
    rescan = np.where(brain > 0, image + 0.01 * rng.standard_normal(SHAPE), 0.0)
    prefix = workdir / "results" / "preproc" / f"sub-{subject}" / f"sub-{subject}"
    _save(
        rescan.astype(np.float32),
        Path(f"{prefix}_tp-baseline_space-followup_desc-preproc_FLAIR.nii.gz"),
    )
    _save(image, Path(f"{prefix}_tp-followup_space-followup_desc-preproc_FLAIR.nii.gz"))
    _save(brain, Path(f"{prefix}_tp-baseline_space-followup_desc-brain_mask.nii.gz"))
    _save(brain, Path(f"{prefix}_tp-followup_desc-brain_mask.nii.gz"))


@pytest.fixture(scope="module")
def lesion_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("lesion_run")
    rng = np.random.default_rng(5)
    # The raw follow-ups (their 3 mm slices give the painted lesions' slice profile).
    # Zero-padded to 88 x 96 x 84 mm (the input checks refuse a scan under 80 mm along an
    # axis); the origin keeps the head where the preprocessed images have it.
    raw_affine = np.diag([1.0, 1.0, 3.0, 1.0])
    raw_affine[:3, 3] = [-20.0, -20.0, -18.0]
    for subject in ("s1", "v1"):
        _save(
            np.pad(_head(rng)[0][:, :, ::3], ((20, 20), (20, 20), (6, 6))),
            workdir / "raw" / f"{subject}.nii.gz",
            raw_affine,
        )
        _preprocessed(workdir, subject, rng)
    bank = workdir / "lesion_masks"
    for k, centres in enumerate([[(10, 10, 5), (30, 30, 8)], [(20, 15, 6)]]):
        mask = np.zeros((40, 40, 12), dtype=np.uint8)
        grid = np.indices(mask.shape)
        for centre in centres:
            mask[
                sum(
                    ((g - c) * s) ** 2
                    for g, c, s in zip(grid, centre, (0.8, 0.8, 2.0), strict=True)
                )
                <= 16
            ] = 1
        _save(mask, bank / f"patient{k}_lesions.nii.gz", np.diag([0.8, 0.8, 2.0, 1.0]))
    pd.DataFrame(
        [
            {
                "subject": "s1",
                "baseline": "",
                "followup": "raw/s1.nii.gz",
                "split": "train",
                "change": "no",
            },
            {
                "subject": "v1",
                "baseline": "",
                "followup": "raw/v1.nii.gz",
                "split": "validation",
                "change": "no",
            },
        ]
    ).to_csv(workdir / "cohort.tsv", sep="\t", index=False)
    config = write_config(
        workdir / "config.yaml",
        cohort={"source": "sheet", "sheet": "cohort.tsv"},
        synthesis={
            "supermix": {"samples_per_subject": 0},
            "lesions": {
                "samples_per_subject": 2,
                "bank": str(bank),
                "lesions_per_sample": [2, 3],
                "edge_margin_mm": 4.0,
            },
        },
        validation={"samples_per_subject": 1, "seed": 7},
        detector={
            "architecture": {"channels": [8, 16], "modules_per_block": 1},
            "training": {
                "iterations": 2,
                "pairs_per_iteration": 2,
                "patch_size": [16, 16, 16],
                "validate_every": 1,
                "augmentation": {"enabled": True},
            },
            "inference": {"min_blob_voxels": 3},
        },
        experiments={"compare": [], "min_blob_voxels": [3]},
    )
    # Options that take several values last, so that none swallows the targets.
    result = snakemake(
        workdir,
        "--cores",
        "2",
        "results/report/tables/validation.tsv",
        "results/synthesis/figures/lesion_examples.png",
        "results/synthesis/figures/augmentations.png",
        "--allowed-rules",
        *AFTER_PREPROCESSING,
        configfile=config,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    return workdir


@pytest.mark.slow
def test_painted_samples_change_only_the_labelled_lesions(lesion_run: Path):
    folder = lesion_run / "results" / "lesions" / "sub-s1"
    preproc = lesion_run / "results" / "preproc" / "sub-s1" / "sub-s1"
    inputs = {
        tp: np.asarray(
            nib.load(f"{preproc}_tp-{tp}_space-followup_desc-preproc_FLAIR.nii.gz").dataobj
        )
        for tp in ("baseline", "followup")
    }
    for sample in ("000", "001"):
        prefix = folder / f"sub-s1_sample-{sample}"
        label = np.asarray(nib.load(f"{prefix}_desc-change_mask.nii.gz").dataobj) > 0
        record = json.loads(Path(f"{prefix}_desc-lesions.json").read_text())
        assert label.sum() == record["label_voxels"] > 0
        assert record["slice_profile"] == {"thickness_mm": 3.0, "through_plane_axis": 2}
        changed = np.zeros(SHAPE, dtype=bool)
        for tp in ("baseline", "followup"):
            painted = np.asarray(nib.load(f"{prefix}_tp-{tp}_FLAIR.nii.gz").dataobj)
            changed |= painted != inputs[tp]
            assert (painted >= inputs[tp] - 1e-6).all()  # painting only brightens
        assert changed[label].all()  # every labelled voxel was painted
        kinds = {lesion["kind"] for lesion in record["lesions"]}
        assert kinds <= {"new", "enlarging", "shrinking"} and kinds


@pytest.mark.slow
def test_replay_lesions_rebuilds_a_sample_voxel_for_voxel(
    lesion_run: Path, tmp_path: Path, monkeypatch
):
    prefix = lesion_run / "results" / "lesions" / "sub-s1" / "sub-s1_sample-001"
    monkeypatch.chdir(lesion_run)  # the record's paths are relative to the workflow folder
    assert main(["replay-lesions", f"{prefix}_desc-lesions.json", "--out", str(tmp_path)]) == 0
    for written, original in (
        ("desc-followup_FLAIR", "tp-followup_FLAIR"),
        ("desc-baseline_FLAIR", "tp-baseline_FLAIR"),
        ("desc-change_mask", "desc-change_mask"),
    ):
        rebuilt = nib.load(tmp_path / f"sub-s1_sample-001_{written}.nii.gz")
        assert np.array_equal(
            np.asarray(rebuilt.dataobj), np.asarray(nib.load(f"{prefix}_{original}.nii.gz").dataobj)
        )


@pytest.mark.slow
def test_detector_trains_on_lesion_samples_and_records_its_data(lesion_run: Path):
    table = pd.read_csv(lesion_run / "results" / "detector" / "training_samples.tsv", sep="\t")
    assert list(table.columns) == ["baseline", "followup", "label"]
    assert [Path(p).name for p in table["baseline"]] == [
        "sub-s1_sample-000_tp-baseline_FLAIR.nii.gz",
        "sub-s1_sample-001_tp-baseline_FLAIR.nii.gz",
    ]
    model = torch.load(
        lesion_run / "results" / "detector" / "model-siamese-inc-ag-ms-ds" / "model.pt",
        weights_only=True,
    )
    assert model["training"]["settings"]["augmentation"]["enabled"] is True
    training_data = model["training_data"]
    assert list(training_data["training_pairs"]) == ["s1"]  # never the validation scan
    assert training_data["test_pair_images_used"] == {}
    # Selected on the validation set, scored after both iterations.
    log = pd.read_csv(
        lesion_run / "results" / "detector" / "model-siamese-inc-ag-ms-ds" / "training_log.tsv",
        sep="\t",
    )
    assert log["val_f1"].notna().all() and log["val_kappa"].notna().all()
    assert model["training"]["selected"]["by"] == "validation"
    assert model["training"]["selected"]["iteration"] in (1, 2)


@pytest.mark.slow
def test_validation_set_is_scored_for_the_model_and_the_baseline(lesion_run: Path):
    pairs = pd.read_csv(
        lesion_run / "results" / "validation" / "pairs.tsv", sep="\t", keep_default_na=False
    )
    assert list(pairs["pair"]) == ["v1-nochange", "v1-sample000"]
    assert pairs["label"].tolist()[0] == "" and pairs["label"].tolist()[1].endswith(
        "sub-v1_sample-000_desc-change_mask.nii.gz"
    )
    summary = pd.read_csv(lesion_run / "results" / "report" / "tables" / "validation.tsv", sep="\t")
    assert list(summary["method"].unique()) == ["siamese-inc-ag-ms-ds", "subtraction"]
    assert set(summary["direction"]) == {"all", "brighter", "darker"}
    assert (summary["painted_pairs"] == 1).all() and (summary["nochange_pairs"] == 1).all()
    # The painted lesions are bright and smooth: subtraction finds some of them.
    subtraction = summary.loc[
        (summary["method"] == "subtraction") & (summary["direction"] == "all")
    ].iloc[0]
    assert subtraction["to_ltpr"] > 0
    record = json.loads(
        (
            lesion_run / "results" / "validation" / "sub-v1" / "sub-v1_sample-000_desc-lesions.json"
        ).read_text()
    )
    assert record["config_seed"] == 7  # the validation seed, not the training seed
    figures = lesion_run / "results" / "synthesis" / "figures"
    assert (figures / "lesion_examples.png").stat().st_size > 10_000
    assert (figures / "augmentations.png").stat().st_size > 10_000


def test_supermix_and_lesion_samples_mix_in_one_training_table(tmp_path: Path):
    from .workflow_runs import planned_jobs

    bank = tmp_path / "bank"
    _save(np.ones((4, 4, 4), dtype=np.uint8), bank / "p_lesions.nii.gz")
    config = write_config(
        tmp_path / "config.yaml",
        synthesis={
            "supermix": {"samples_per_subject": 2},
            "lesions": {"samples_per_subject": 3, "bank": str(bank)},
        },
    )
    jobs = planned_jobs(snakemake(tmp_path, "-n", "--quiet", "rules", configfile=config))
    demo = yaml.safe_load((REPO / "config.yaml").read_text())["demo"]
    nochange = demo["n_train"] + demo["n_single"]  # no-change pairs and single scans
    assert nochange >= 2
    assert jobs["supermix_subject"] == nochange
    assert jobs["paint_lesions_subject"] == nochange
    assert jobs["build_lesion_bank"] == 1 and jobs["lesion_figures"] == 1
    assert jobs["list_training_samples"] == 1 and jobs["train_vae"] == 2
    # Every sample of both kinds is an input of the one table training reads.
    dag = snakemake(tmp_path, "-n", "results/detector/training_samples.tsv", configfile=config)
    text = dag.stdout + dag.stderr
    listed = text.split("rule list_training_samples:")[1].split("output:")[0]
    # Training reads them in that order: SuperMix samples, then lesion-based ones.
    assert listed.index("results/supermix/") < listed.index("results/lesions/")
    assert listed.count("_desc-synthesised_FLAIR.nii.gz") == 2 * nochange
    assert listed.count("_tp-followup_FLAIR.nii.gz") == 3 * nochange

    lesions_only = write_config(
        tmp_path / "lesions_only.yaml",
        synthesis={
            "supermix": {"samples_per_subject": 0},
            "lesions": {"samples_per_subject": 1, "bank": str(bank)},
        },
    )
    jobs = planned_jobs(snakemake(tmp_path, "-n", "--quiet", "rules", configfile=lesions_only))
    assert "supermix_subject" not in jobs and "train_vae" not in jobs
    assert jobs["paint_lesions_subject"] == nochange
