"""The Snakemake workflow: lint, dry runs, input checks, a real run on a tiny demo cohort."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from mschange.detection.outputs import (
    PairEntities,
    bids_label,
    bids_prediction_paths,
    pair_page_paths,
    prediction_paths,
)
from mschange.locations import LOCATION_CLASSES

from .conftest import REPO, ellipsoid_phantom, oblique_affine
from .workflow_runs import REPORT_JOBS, SNAKEMAKE, TINY, planned_jobs, snakemake, write_config


def test_lint_is_clean():
    result = subprocess.run(
        [*SNAKEMAKE, "--lint"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr


def test_default_config_plans_the_demo_cohort(tmp_path):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    demo = config["demo"]
    pairs = demo["n_train"] + demo["n_test"] + demo["n_single"]
    jobs = planned_jobs(
        snakemake(tmp_path, "-n", "--quiet", "rules", configfile=REPO / "config.yaml")
    )
    assert jobs["make_demo_subject"] == pairs
    assert jobs["simulate_rescan"] == demo["n_single"]
    assert jobs["skullstrip_hdbet"] == 2 * pairs
    assert jobs["register_baseline_to_followup"] == pairs
    assert jobs["normalize_intensity"] == 2 * pairs
    assert jobs["aggregate_qc"] == 1
    assert jobs["train_vae"] == 2  # maxpool for SuperMix, strided for the comparison figure
    assert jobs["supermix_subject"] == demo["n_train"] + demo["n_single"]
    assert jobs["synthesis_figures"] == 1


def test_unknown_config_key_stops_before_any_job(tmp_path):
    config = write_config(tmp_path / "config.yaml", preprocessing={"resolutoin_mm": 2.0})
    result = snakemake(tmp_path, "--cores", "1", configfile=config)
    assert result.returncode != 0
    assert "unknown config key(s) 'resolutoin_mm' under preprocessing" in result.stderr
    assert not (tmp_path / "results" / "preproc").exists()


def write_good_scans(folder: Path) -> Path:
    """good_bl.nii.gz and good.nii.gz: two head-sized phantom scans (100 x 110 x 90 mm, the
    baseline's head 2 mm off), which pass the input checks; returns good.nii.gz."""
    spacing = (2.5, 2.5, 2.5)
    for name, shift in (("good_bl.nii.gz", (2.0, 0.0, 0.0)), ("good.nii.gz", (0.0, 0.0, 0.0))):
        image, _ = ellipsoid_phantom(
            (40, 44, 36), spacing, radii_mm=(30.0, 36.0, 28.0), centre_shift_mm=shift
        )
        nib.save(nib.Nifti1Image(image, oblique_affine(spacing)), folder / name)
    return folder / "good.nii.gz"


def sheet_with_a_broken_baseline(folder: Path) -> Path:
    """A cohort sheet of p1 (good_bl.nii.gz, good.nii.gz) and p2 (baseline broken.nii.gz),
    in folder."""
    sheet = folder / "cohort.tsv"
    pd.DataFrame(
        [
            {
                "subject": "p1",
                "baseline": "good_bl.nii.gz",
                "followup": "good.nii.gz",
                "split": "test",
                "change": "unknown",
            },
            {
                "subject": "p2",
                "baseline": "broken.nii.gz",
                "followup": "good.nii.gz",
                "split": "test",
                "change": "unknown",
            },
        ]
    ).to_csv(sheet, sep="\t", index=False)
    return sheet


def test_broken_input_stops_before_any_job(tmp_path):
    good = write_good_scans(tmp_path)
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(good.read_bytes()[:40])
    sheet = sheet_with_a_broken_baseline(tmp_path)
    config = write_config(tmp_path / "config.yaml", cohort={"source": "sheet", "sheet": str(sheet)})
    result = snakemake(tmp_path, "--cores", "1", configfile=config)
    assert result.returncode != 0
    assert re.search(
        r"subject 'p2', file '.*broken\.nii\.gz': the gzip stream is truncated", result.stderr
    ), result.stderr
    assert "'p1'" not in result.stderr
    assert not (tmp_path / "results" / "preproc").exists()


def test_broken_subject_fails_alone_under_keep_going(tmp_path):
    """cohort.check_inputs: per_subject: a broken image fails its subject's check job."""
    good = write_good_scans(tmp_path)
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(good.read_bytes()[:-200])
    sheet = sheet_with_a_broken_baseline(tmp_path)
    config = write_config(
        tmp_path / "config.yaml",
        cohort={"source": "sheet", "sheet": str(sheet), "check_inputs": "per_subject"},
    )
    result = snakemake(
        tmp_path, "--cores", "2", "--keep-going", "--until", "resample_isotropic", configfile=config
    )
    assert result.returncode != 0
    preproc = tmp_path / "results" / "preproc"
    # p1 went on: both time points resampled; p2 stopped at its check.
    assert sorted(p.name for p in (preproc / "sub-p1").glob("*.nii.gz")) == [
        "sub-p1_tp-baseline_desc-resampled_FLAIR.nii.gz",
        "sub-p1_tp-followup_desc-resampled_FLAIR.nii.gz",
    ]
    assert not (preproc / "sub-p2").exists()
    status = pd.read_csv(
        tmp_path / "results" / "status" / "cohort_status.tsv", sep="\t", keep_default_na=False
    ).set_index("subject")
    assert status.loc["p1", ["state", "stage_reached", "next_stage"]].tolist() == [
        "pending",
        "inputs checked",
        "preprocessed",
    ]
    p2 = status.loc["p2"]
    assert [p2.state, p2.stage_reached, p2.failed_rule, p2.log] == [
        "failed",
        "",
        "check_inputs",
        "results/logs/check_inputs/sub-p2.log",
    ]
    assert re.fullmatch(
        r"subject 'p2', file '.*broken\.nii\.gz': the gzip stream is "
        r"truncated.*\(baseline scan\)",
        p2.error,
    ), p2.error
    # The terminal says it too.
    assert (
        "p2: failed in check_inputs (inputs checked); log: "
        "results/logs/check_inputs/sub-p2.log" in result.stderr
    )


def jobs_after_change(
    workdir: Path, tmp_path: Path, section: str, key: str, value: object, subkey: str | None = None
) -> dict[str, int]:
    """Jobs a dry run plans after one config value of the tiny run changes."""
    changed = write_config(tmp_path / "changed.yaml", **TINY)
    data = yaml.safe_load(changed.read_text())
    target = data[section] if subkey is None else data[section][subkey]
    target[key] = value
    changed.write_text(yaml.safe_dump(data))
    return planned_jobs(snakemake(workdir, "-n", "--quiet", "rules", configfile=changed))


@pytest.mark.slow
def test_tiny_run_writes_preprocessed_pairs_and_qc(tiny_run):
    workdir, _ = tiny_run
    results = workdir / "results"
    qc = pd.read_csv(results / "qc" / "preprocessing_qc.tsv", sep="\t")
    assert list(qc["subject"]) == ["demo01", "demo02", "demo03"]
    assert list(qc["split"]) == ["train", "test", "train"]
    assert (qc["registration_correlation"] > 0.8).all(), qc
    assert qc["brain_volume_ml_followup"].between(1000, 2200).all(), qc
    assert (qc["seconds_skullstrip_hdbet"] > 0).all()
    for subject in ("demo01", "demo02", "demo03"):
        folder = results / "preproc" / f"sub-{subject}"
        resampled = nib.load(folder / f"sub-{subject}_tp-followup_desc-resampled_FLAIR.nii.gz")
        for tp in ("baseline", "followup"):
            final = nib.load(
                folder / f"sub-{subject}_tp-{tp}_space-followup_desc-preproc_FLAIR.nii.gz"
            )
            # Both time points end on the follow-up's resampled grid, in [0, 1].
            assert final.shape == resampled.shape
            np.testing.assert_allclose(final.affine, resampled.affine, atol=1e-5)
            data = final.get_fdata()
            assert data.min() == 0.0 and data.max() == pytest.approx(1.0)
        assert (results / "qc" / f"sub-{subject}_desc-preproc_qc.png").stat().st_size > 10_000
    sheet = pd.read_csv(results / "demo" / "cohort.tsv", sep="\t", keep_default_na=False)
    assert list(sheet["change"]) == ["no", "yes", "no"]
    assert list(sheet["baseline"] == "") == [False, False, True]  # demo03: a single scan
    assert (
        workdir / "results" / "logs" / "skullstrip_hdbet" / "sub-demo01_tp-baseline.log"
    ).read_text().count("finished in") == 1


@pytest.mark.slow
def test_tiny_run_hdbet_mask_matches_known_brain(tiny_run):
    workdir, _ = tiny_run
    known = nib.load(
        workdir
        / "results"
        / "demo"
        / "sub-demo02"
        / "sub-demo02_tp-followup_desc-brain_mask.nii.gz"
    )
    found = nib.load(
        workdir
        / "results"
        / "preproc"
        / "sub-demo02"
        / "sub-demo02_tp-followup_desc-brain_mask.nii.gz"
    )
    # At 2 mm the resampled grid is the demo's own grid, so the masks compare voxel by voxel.
    np.testing.assert_allclose(found.affine, known.affine, atol=1e-5)
    a = np.asarray(known.dataobj) > 0
    b = np.asarray(found.dataobj) > 0
    dice = 2 * (a & b).sum() / (a.sum() + b.sum())
    assert dice >= 0.9, dice


@pytest.mark.slow
def test_rerun_with_nothing_changed_runs_nothing(tiny_run):
    workdir, config = tiny_run
    result = snakemake(workdir, "-n", configfile=config)
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr


@pytest.mark.slow
def test_changing_n4_reruns_only_n4_and_what_follows(tiny_run, tmp_path):
    workdir, _ = tiny_run
    jobs = jobs_after_change(
        workdir,
        tmp_path,
        "preprocessing",
        "n4",
        {"shrink_factor": 2, "iterations": [20, 20], "convergence": 0.001},
    )
    assert jobs.pop("correct_bias_n4") == 6
    assert jobs.pop("normalize_intensity") == 6
    assert jobs.pop("qc_pair") == 3
    assert jobs.pop("aggregate_qc") == 1
    # New preprocessed scans: synthesis follows.
    assert jobs.pop("list_training_scans") == 1
    assert jobs.pop("train_vae") == 2
    assert jobs.pop("list_training_samples") == 1
    assert jobs.pop("supermix_subject") == 2
    assert jobs.pop("synthesis_figures") == 1
    # ...and both detectors trained on it, the test pair's predictions, the baseline,
    # every evaluation (3 methods x 2 blob sizes) and the report.
    assert jobs.pop("train_detector") == 2
    assert jobs.pop("predict_pair") == 2
    assert jobs.pop("subtraction_baseline") == 1
    assert jobs.pop("evaluate_pair") == 6
    assert jobs.pop("evaluation_tables") == 1
    assert jobs.pop("evaluation_report") == 1
    assert jobs.pop("pair_pages") == 1
    assert jobs.pop("bids_derivatives") == 1
    jobs.pop("all", None)
    assert jobs == {}, f"unexpected reruns: {jobs}"


@pytest.mark.slow
def test_changing_registration_reruns_from_registration(tiny_run, tmp_path):
    workdir, _ = tiny_run
    jobs = jobs_after_change(
        workdir, tmp_path, "preprocessing", "registration", {"transform": "DenseRigid"}
    )
    assert "skullstrip_hdbet" not in jobs and "resample_isotropic" not in jobs
    assert jobs["register_baseline_to_followup"] == 3
    # Only the baseline's N4 depends on the registration.
    assert jobs["correct_bias_n4"] == 3


@pytest.mark.slow
def test_tiny_run_synthesises_changes_into_nochange_pairs(tiny_run):
    workdir, _ = tiny_run
    results = workdir / "results"
    # The single scan got a simulated rescan on its own raw grid, then preprocessing.
    raw = nib.load(results / "demo" / "sub-demo03" / "sub-demo03_tp-followup_FLAIR.nii.gz")
    rescan = nib.load(
        results / "rescan" / "sub-demo03" / "sub-demo03_tp-baseline_desc-rescan_FLAIR.nii.gz"
    )
    assert rescan.shape == raw.shape
    np.testing.assert_allclose(rescan.affine, raw.affine, atol=1e-5)
    assert not np.allclose(rescan.get_fdata(), raw.get_fdata())
    record = json.loads(
        (
            results / "rescan" / "sub-demo03" / "sub-demo03_tp-baseline_desc-rescan_FLAIR.json"
        ).read_text()
    )
    assert record["subject"] == "demo03" and "motion" in record
    # Both VAEs trained for the configured schedule.
    for encoder in ("maxpool", "strided"):
        losses = pd.read_csv(results / "vae" / f"encoder-{encoder}" / "loss.tsv", sep="\t")
        assert list(losses["iteration"]) == [1, 2]
        assert not (results / "vae" / f"encoder-{encoder}" / "checkpoints").exists()
    # SuperMix samples of the no-change pairs (demo01 and the single scan), none of the test pair.
    assert not (results / "supermix" / "sub-demo02").exists()
    for subject in ("demo01", "demo03"):
        grid = nib.load(
            results
            / "preproc"
            / f"sub-{subject}"
            / f"sub-{subject}_tp-followup_space-followup_desc-preproc_FLAIR.nii.gz"
        )
        for sample in ("000", "001"):
            stem = results / "supermix" / f"sub-{subject}" / f"sub-{subject}_sample-{sample}"
            record = json.loads(Path(f"{stem}_desc-supermix.json").read_text())
            label = nib.load(f"{stem}_desc-change_mask.nii.gz")
            assert label.shape == grid.shape
            np.testing.assert_allclose(label.affine, grid.affine, atol=1e-5)
            assert int(np.asarray(label.dataobj).sum()) == record["replaced_voxels"]
            assert record["vae_model"]["encoder"] == "maxpool"
    for figure in ("supermix_examples.png", "vae_encoders.png"):
        assert (results / "synthesis" / "figures" / figure).stat().st_size > 20_000


@pytest.mark.slow
def test_changing_supermix_reruns_only_synthesis(tiny_run, tmp_path):
    workdir, _ = tiny_run
    jobs = jobs_after_change(workdir, tmp_path, "synthesis", "tau", 0.95, subkey="supermix")
    jobs.pop("all", None)
    # The baseline does not learn from synthesis: its scores stay.
    assert jobs == {
        "supermix_subject": 2,
        "synthesis_figures": 1,
        "list_training_samples": 1,
        "train_detector": 2,
        "predict_pair": 2,
        "evaluate_pair": 4,
        **REPORT_JOBS,
    }


@pytest.mark.slow
def test_changing_the_vae_retrains_it_but_keeps_preprocessing(tiny_run, tmp_path):
    workdir, _ = tiny_run
    jobs = jobs_after_change(workdir, tmp_path, "synthesis", "kl_weight", 0.01, subkey="vae")
    jobs.pop("all", None)
    assert jobs == {
        "train_vae": 2,
        "supermix_subject": 2,
        "synthesis_figures": 1,
        "list_training_samples": 1,
        "train_detector": 2,
        "predict_pair": 2,
        "evaluate_pair": 4,
        **REPORT_JOBS,
    }


@pytest.mark.slow
def test_tiny_run_trains_the_detector_and_predicts_the_test_pair(tiny_run):
    workdir, _ = tiny_run
    results = workdir / "results"
    model_dir = results / "detector" / "model-siamese-inc-ag-ms-ds"
    log = pd.read_csv(model_dir / "training_log.tsv", sep="\t")
    assert list(log["iteration"]) == [1, 2] and (log["loss"] > 0).all()
    assert not (model_dir / "checkpoints").exists()
    metadata = torch.load(model_dir / "model.pt", weights_only=True)
    assert metadata["preprocessing"]["resolution_mm"] == 2.0  # what `mschange predict` uses
    assert metadata["architecture"]["channels"] == [8, 16]
    # Only the test pair (demo02) is predicted, on its native grid and on the 1 mm one.
    folder = results / "predict" / "model-siamese-inc-ag-ms-ds"
    assert sorted(p.name for p in folder.iterdir()) == ["sub-demo02"]
    raw = nib.load(results / "demo" / "sub-demo02" / "sub-demo02_tp-followup_FLAIR.nii.gz")
    files = prediction_paths(str(folder / "sub-demo02"), "demo02")
    for key in ("native_probability", "native_mask", "native_labels"):
        native = nib.load(files[key])
        assert native.shape == raw.shape
        np.testing.assert_allclose(native.affine, raw.affine, atol=1e-5)
    probability = nib.load(files["probability"]).get_fdata()
    assert probability.min() >= 0.0 and probability.max() <= 1.0
    table = pd.read_csv(files["lesions"], sep="\t")
    record = json.loads(Path(files["record"]).read_text())
    assert len(table) == record["changes"]
    assert int(np.asarray(nib.load(files["labels"]).dataobj).max()) == len(table)
    assert list(table.columns)[:3] == ["lesion_id", "voxels", "volume_mm3"]
    assert Path(files["figure"]).stat().st_size > 10_000


@pytest.mark.slow
def test_tiny_run_writes_a_bids_derivatives_dataset_of_the_main_models_predictions(tiny_run):
    """results/derivatives/mschange: the main model's prediction of the test pair, found
    by pybids with its entities and sidecars (the demo's scans are not BIDS: no session)."""
    from .test_bids import check_dataset

    workdir, _ = tiny_run
    root = workdir / "results" / "derivatives" / "mschange"
    followup = "sub-demo02_tp-followup_FLAIR.nii.gz"  # in the folder of both scans
    check_dataset(root, "demo02", None, f"bids:inputs:{followup}")
    # (.snakemake_timestamp: Snakemake's mark on a directory output; a dot file, which
    # BIDS tools skip)
    assert sorted(p.name for p in root.iterdir()) == [
        ".bidsignore",
        ".snakemake_timestamp",
        "dataset_description.json",
        "sub-demo02",
        "sub-demo02.html",  # the pair's summary; its viewer is in sub-demo02/figures/
    ]
    pages = pair_page_paths(str(root), PairEntities("demo02"))
    summary = json.loads(Path(pages["summary_json"]).read_text())
    assert (root / summary["viewer"]).resolve() == Path(pages["viewer"]).resolve()
    table = pd.read_csv(
        root / "sub-demo02" / "anat" / "sub-demo02_desc-changes_lesions.tsv", sep="\t"
    )
    assert summary["changes"]["new_or_enlarging"]["count"] == int(
        (table["direction"] == "brighter").sum()
    )
    assert set(table["location"]) <= {*LOCATION_CLASSES}
    # The pair's viewer works in a browser: every detection of the table is a click away.
    from .browser import find_chromium
    from .test_viewer import use_viewer

    if find_chromium() is not None:
        use_viewer(Path(pages["viewer"]), table)
    report = (workdir / "results" / "report" / "index.html").read_text()
    assert 'href="../derivatives/mschange/sub-demo02.html"' in report
    assert 'href="../derivatives/mschange/sub-demo02/figures/sub-demo02_desc-viewer.html"' in report
    flat = prediction_paths(
        str(workdir / "results" / "predict" / "model-siamese-inc-ag-ms-ds" / "sub-demo02"),
        "demo02",
    )
    copied = root / "sub-demo02" / "anat" / Path(flat["probability"]).name
    assert copied.read_bytes() == Path(flat["probability"]).read_bytes()


@pytest.mark.slow
def test_changing_the_detector_reruns_training_and_prediction_only(tiny_run, tmp_path):
    workdir, _ = tiny_run
    jobs = jobs_after_change(workdir, tmp_path, "detector", "gamma_final", 0.75, subkey="loss")
    jobs.pop("all", None)
    # The U-Net inherits gamma_final from `detector`: both models retrain and are
    # re-evaluated; preprocessing, synthesis and the baseline stay.
    assert jobs == {"train_detector": 2, "predict_pair": 2, "evaluate_pair": 4, **REPORT_JOBS}
    jobs = jobs_after_change(workdir, tmp_path, "detector", "l2", 1e-4, subkey="loss")
    jobs.pop("all", None)
    # The U-Net sets its own L2 (none): only the main model retrains.
    assert jobs == {"train_detector": 1, "predict_pair": 1, "evaluate_pair": 2, **REPORT_JOBS}
    jobs = jobs_after_change(workdir, tmp_path, "detector", "kappa", 0.2, subkey="inference")
    jobs.pop("all", None)
    assert jobs == {"predict_pair": 2, "evaluate_pair": 4, **REPORT_JOBS}


@pytest.mark.slow
def test_pretrained_weights_are_used_without_synthesis_or_training(tiny_run, tmp_path):
    workdir, _ = tiny_run
    trained = workdir / "results" / "detector" / "model-siamese-inc-ag-ms-ds"
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy, symlinks=True)
    config = write_config(
        tmp_path / "pretrained.yaml",
        **{
            **TINY,
            "detector": {
                **TINY["detector"],
                "name": "reused",
                "pretrained": str(trained / "model.pt"),
            },
            "experiments": {"compare": [], "min_blob_voxels": [3]},
        },
    )
    jobs = planned_jobs(snakemake(copy, "-n", "--quiet", "rules", configfile=config))
    jobs.pop("all", None)
    # Nothing is synthesised or trained: the weights are copied, then used as usual
    # (the baseline's evaluation at blob 3 is already there).
    assert jobs == {
        "use_pretrained_detector": 1,
        "predict_pair": 1,
        "evaluate_pair": 1,
        **REPORT_JOBS,
    }
    result = snakemake(copy, "--cores", "2", configfile=config)
    assert result.returncode == 0, result.stderr[-3000:]
    reused = copy / "results" / "detector" / "model-reused"
    assert (reused / "model.pt").read_bytes() == (trained / "model.pt").read_bytes()
    assert (reused / "training_log.tsv").read_text() == (trained / "training_log.tsv").read_text()
    assert not (reused / "model_last.pt").exists()
    metrics = pd.read_csv(copy / "results" / "report" / "tables" / "per_pair.tsv", sep="\t")
    assert set(metrics["method"]) == {"reused", "subtraction"}

    # A name that is neither a file nor a shipped model stops the run before any job.
    missing = write_config(
        tmp_path / "missing.yaml",
        **{**TINY, "detector": {**TINY["detector"], "pretrained": "no-such-model"}},
    )
    result = snakemake(copy, "-n", configfile=missing)
    assert result.returncode != 0
    assert "detector.pretrained: no model file 'no-such-model'" in result.stdout + result.stderr
    # So does a config that would preprocess pairs otherwise than the model's were.
    other = write_config(
        tmp_path / "other.yaml",
        **{
            **TINY,
            "preprocessing": {"resolution_mm": 1.5},
            "detector": {**TINY["detector"], "pretrained": str(trained / "model.pt")},
        },
    )
    result = snakemake(copy, "-n", configfile=other)
    assert result.returncode != 0
    assert "resolution_mm: the model's 2.0, the config's 1.5" in result.stdout + result.stderr


@pytest.mark.slow
def test_fine_tuning_on_annotated_pairs_is_a_model_of_its_own(tiny_run, tmp_path):
    workdir, _ = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy, symlinks=True)
    demo = copy / "results" / "demo" / "sub-demo02" / "sub-demo02"
    sheet = tmp_path / "annotated.tsv"
    # The demo's test pair once more, as an annotated training pair of its own.
    pd.DataFrame(
        [
            {
                "subject": "ann01",
                "baseline": f"{demo}_tp-baseline_FLAIR.nii.gz",
                "followup": f"{demo}_tp-followup_FLAIR.nii.gz",
                "split": "train",
                "change": "yes",
                "label": f"{demo}_tp-followup_desc-change_mask.nii.gz",
            }
        ]
    ).to_csv(sheet, sep="\t", index=False)
    main = "siamese-inc-ag-ms-ds"
    config = write_config(
        tmp_path / "finetune.yaml",
        **{
            **TINY,
            "cohort": {"source": "sheet", "sheet": str(sheet), "include_demo": True},
            "experiments": {
                "models": {
                    "tuned": {
                        "finetune_from": main,
                        "training": {
                            "iterations": 1,
                            "pairs_per_iteration": 2,
                            "learning_rate": 1e-4,
                        },
                    }
                },
                "compare": ["tuned"],
                "min_blob_voxels": [3],
            },
        },
    )
    result = snakemake(copy, "--cores", "2", configfile=config)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = {rule: count for rule, count in planned_jobs(result).items()}
    # The main model is not retrained; the fine-tuned one trains on the annotated pair.
    assert jobs["train_detector"] == 1 and jobs["annotated_change_mask"] == 1
    tuned = torch.load(
        copy / "results" / "detector" / "model-tuned" / "model.pt", weights_only=True
    )
    assert tuned["training"]["initial_model"].endswith(f"model-{main}/model.pt")
    assert tuned["training_data"]["finetuned_from"] == main
    assert list(tuned["training_data"]["annotated_pairs"]) == ["ann01"]
    table = pd.read_csv(copy / "results" / "detector" / "finetune_samples.tsv", sep="\t")
    assert len(table) == 1 and table["label"][0].endswith(
        "sub-ann01_space-followup_desc-change_mask.nii.gz"
    )
    label = nib.load(copy / table["label"][0])
    assert np.asarray(label.dataobj).sum() > 0
    metrics = pd.read_csv(copy / "results" / "report" / "tables" / "per_pair.tsv", sep="\t")
    assert set(metrics["method"]) == {main, "tuned", "subtraction"}

    # Fine-tuning needs annotated pairs.
    plain = write_config(
        tmp_path / "none.yaml",
        **{
            **TINY,
            "experiments": {"models": {"tuned": {"finetune_from": main}}, "compare": ["tuned"]},
        },
    )
    result = snakemake(copy, "-n", configfile=plain)
    assert result.returncode != 0
    assert "needs annotated training pairs" in result.stdout + result.stderr


@pytest.mark.slow
def test_tiny_run_scores_every_method_and_writes_the_report(tiny_run):
    workdir, _ = tiny_run
    results = workdir / "results"
    per_pair = pd.read_csv(results / "report" / "tables" / "per_pair.tsv", sep="\t")
    # demo02 (the test pair), 3 methods x 2 blob sizes.
    assert sorted(set(per_pair["method"])) == ["siamese-inc-ag-ms-ds", "subtraction", "unet-ftl"]
    assert sorted(set(per_pair["min_blob_voxels"])) == [3, 8]
    assert set(per_pair["subject"]) == {"demo02"} and len(per_pair) == 6
    # The demo's truth: its change mask, with lesions in it.
    truth = nib.load(
        results / "demo" / "sub-demo02" / "sub-demo02_tp-followup_desc-change_mask.nii.gz"
    )
    assert (per_pair["truth_lesions"] > 0).all()
    evaluated = nib.load(
        results
        / "evaluation"
        / "model-subtraction_minblob-3"
        / "sub-demo02"
        / "sub-demo02_space-native_desc-evaluated_mask.nii.gz"
    )
    assert evaluated.shape == truth.shape
    for column in ("msseg_dice", "to_ltpr", "krueger_sensitivity"):
        assert per_pair[column].between(0, 1).all(), per_pair[column]
    # The baseline finds something with a bigger blob size no more often than a smaller one.
    baseline = per_pair[per_pair["method"] == "subtraction"].set_index("min_blob_voxels")
    assert baseline.loc[8, "predicted_lesions"] <= baseline.loc[3, "predicted_lesions"]
    for name in ("summary", "table1", "directions", "per_pair", "wilcoxon", "threshold_sweep"):
        assert (results / "report" / "tables" / f"{name}.md").read_text().startswith("|")
    html = (results / "report" / "index.html").read_text()
    assert "Table 1 analogue" in html and "demo02" in html
    # 2 figures + 3 overlays (one per method) + 2 training curves + SuperMix examples.
    assert html.count("data:image/png;base64,") == 8
    # Cohort status: every pair complete, each at its last stage (training pairs end
    # synthesised, the test pair evaluated); the report's copy matches the run's table.
    status = pd.read_csv(results / "status" / "cohort_status.tsv", sep="\t", keep_default_na=False)
    assert status[["subject", "state", "stage_reached"]].values.tolist() == [
        ["demo01", "complete", "synthesised"],
        ["demo02", "complete", "evaluated"],
        ["demo03", "complete", "synthesised"],
    ]
    in_report = pd.read_csv(
        results / "report" / "tables" / "cohort_status.tsv", sep="\t", keep_default_na=False
    )
    pd.testing.assert_frame_equal(in_report, status)
    assert "Cohort status" in html and "3 pairs: 3 complete" in html


@pytest.mark.slow
def test_tiny_report_loads_every_image_in_chromium(tiny_run):
    from .browser import check_images_in_browser, find_chromium

    if find_chromium() is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium)")
    workdir, _ = tiny_run
    loaded, total = check_images_in_browser(workdir / "results" / "report" / "index.html")
    assert total == 8 and loaded == total


@pytest.mark.slow
def test_snakemake_report_has_the_evaluation_figures(tiny_run, tmp_path):
    import zipfile

    workdir, config = tiny_run
    archive = tmp_path / "report.zip"
    result = snakemake(workdir, "--report", str(archive), configfile=config)
    assert result.returncode == 0, result.stderr[-3000:]
    names = zipfile.ZipFile(archive).namelist()
    for figure in (
        "metric_boxplots.png",
        "threshold_curves.png",
        "sub-demo02_desc-evaluation_overlay.png",
        "index.html",
    ):
        assert any(name.endswith(figure) for name in names), (figure, names[:20])


@pytest.mark.slow
def test_detector_training_killed_mid_run_resumes_from_its_checkpoint(tiny_run, tmp_path):
    """A walltime kill (SIGKILL to Snakemake and its job) during detector training: the
    rerun resumes from the last checkpoint and ends with the weights of an unbroken run."""
    source, _ = tiny_run
    workdir = tmp_path / "run"
    shutil.copytree(source, workdir, symlinks=True)
    config = write_config(
        tmp_path / "longer.yaml",
        **{
            **TINY,
            "detector": {
                **TINY["detector"],
                "training": {**TINY["detector"]["training"], "iterations": 60},
            },
        },
    )
    model = "results/detector/model-siamese-inc-ag-ms-ds/model.pt"  # relative to workdir
    model_dir = (workdir / model).parent
    command = [
        *SNAKEMAKE,
        "--directory",
        str(workdir),
        "--configfile",
        str(config),
        "--cores",
        "2",
        "--rerun-incomplete",
        model,
    ]
    job = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    checkpoint = model_dir / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 600
    while not checkpoint.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert job.poll() is None, "Snakemake ended before the first checkpoint"
    os.killpg(job.pid, signal.SIGKILL)
    job.wait(timeout=60)
    assert checkpoint.exists(), "no checkpoint within 10 minutes"
    assert not (model_dir / "model.pt").exists()

    # The documented recovery: unlock (the killed Snakemake left its lock), run again.
    assert snakemake(workdir, "--unlock", configfile=config).returncode == 0
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (
        workdir / "results" / "logs" / "train_detector" / "model-siamese-inc-ag-ms-ds.log"
    ).read_text()
    resumed = re.findall(
        r"resuming detector training from the checkpoint at step (\d+) of "
        r"(\d+)",
        log,
    )
    assert len(resumed) == 1 and 0 < int(resumed[0][0]) < int(resumed[0][1]), log[-2000:]
    training = torch.load(model_dir / "model.pt", weights_only=True)["training"]
    assert training["resumed_from_step"] == int(resumed[0][0])
    assert training["steps_this_run"] == training["steps"] - training["resumed_from_step"]
    assert not checkpoint.exists()  # a finished training removes its checkpoint
    iterations = pd.read_csv(model_dir / "training_log.tsv", sep="\t")["iteration"]
    assert iterations.tolist() == list(range(1, 61))
    resumed_weights = torch.load(model_dir / "model.pt", weights_only=True)["state_dict"]

    # The same training without the kill gives the same weights.
    result = snakemake(
        workdir, "--cores", "2", "--forcerun", "train_detector", model, configfile=config
    )
    assert result.returncode == 0, result.stderr[-3000:]
    unbroken = torch.load(model_dir / "model.pt", weights_only=True)
    assert unbroken["training"]["resumed_from_step"] == 0
    for name, tensor in unbroken["state_dict"].items():
        assert torch.equal(tensor, resumed_weights[name]), name


def planned_resources(output: str) -> dict[str, tuple[int, dict[str, object]]]:
    """Rule -> (threads, resources) of each job a dry run lists (one per rule kept)."""
    planned: dict[str, tuple[int, dict[str, object]]] = {}
    rule, threads = None, 1
    for line in output.splitlines():
        if match := re.match(r"^\s*(?:local)?rule (\w+):", line):
            rule, threads = match.group(1), 1
        elif rule and (match := re.match(r"^\s+threads: (\d+)", line)):
            threads = int(match.group(1))
        elif rule and (match := re.match(r"^\s+resources: (.*)", line)):
            values = dict(item.split("=", 1) for item in match.group(1).split(", "))
            planned[rule] = (threads, values)
    return planned


def test_slurm_profile_sends_exactly_the_gpu_jobs_to_the_gpu_partition(tmp_path):
    """With device: cuda, the network rules ask for a GPU, and the SLURM plugin's own
    partition choice, fed profiles/slurm/partitions.yaml, puts them (and only them) on
    the GPU partition. (On CPU, tests/test_slurm.py runs everything on `cpu`.)"""
    import logging

    from snakemake_executor_plugin_slurm.partitions import (
        get_best_partition,
        read_partition_file,
    )

    config = write_config(tmp_path / "config.yaml", device="cuda")
    result = snakemake(tmp_path, "-n", configfile=config)
    assert result.returncode == 0, result.stderr[-3000:]
    planned = planned_resources(result.stdout + result.stderr)
    partitions = read_partition_file(REPO / "profiles" / "slurm" / "partitions.yaml")

    class PlannedJob:  # what the plugin reads of a job
        def __init__(self, name: str, threads: int, resources: dict[str, object]) -> None:
            self.name, self.threads, self.resources = name, threads, resources

    logger = logging.getLogger("test")
    chosen = {
        rule: get_best_partition(partitions, PlannedJob(rule, threads, resources), logger)
        for rule, (threads, resources) in planned.items()
        if "runtime" in resources
    }  # local rules get no resources
    network_rules = {
        "skullstrip_hdbet",
        "train_vae",
        "supermix_subject",
        "synthesis_figures",
        "train_detector",
        "predict_pair",
    }
    assert {rule for rule, (_, res) in planned.items() if res.get("gpu") == "1"} == network_rules
    assert {rule for rule, partition in chosen.items() if partition == "gpu"} == network_rules
    assert {partition for rule, partition in chosen.items() if rule not in network_rules} == {"cpu"}
    assert len(chosen) >= 12


def test_a_broken_pretrained_model_file_stops_before_any_job(tmp_path):
    folder = tmp_path / "mymodel"
    folder.mkdir()
    (folder / "model.pt").write_text("not a model")
    (folder / "training_log.tsv").write_text("step\tloss\n")
    (folder / "training_curve.png").write_bytes(b"")
    config = write_config(
        tmp_path / "config.yaml", detector={"pretrained": str(folder / "model.pt")}
    )
    result = snakemake(tmp_path, "-n", configfile=config)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"detector.pretrained: model file '{folder / 'model.pt'}'" in output
    assert "not a PyTorch model file" in output
    assert "Traceback" not in output


@pytest.mark.slow
def test_predict_gives_exactly_what_the_workflow_gives(tiny_run, tmp_path):
    """`mschange predict` and the workflow run one definition of the preprocessing: on
    the tiny run's test pair, with its trained model and inference settings, predict's
    preprocessed images and change probability equal the workflow's, voxel for voxel."""
    from mschange.cohort import read_cohort_sheet
    from mschange.config import validate_config
    from mschange.detection.pair import predict_pair

    from .workflow_comparison import _same_file, compare_results

    workdir, config_file = tiny_run
    config = validate_config(yaml.safe_load(config_file.read_text()))
    cohort = read_cohort_sheet(workdir / "results" / "demo" / "cohort.tsv")
    pair = cohort[cohort["split"] == "test"].iloc[0]
    model = config["detector"]["name"]
    out = tmp_path / "predict"
    predict_pair(
        pair["baseline"],
        pair["followup"],
        workdir / "results" / "detector" / f"model-{model}" / "model.pt",
        out,
        subject=pair["subject"],
        threads=2,
        overrides=config["detector"]["inference"],
    )
    subject = f"sub-{pair['subject']}"
    compared = compare_results(workdir / "results" / "preproc" / subject, out / "preproc" / subject)
    assert compared == 13  # every step's files of both time points, and the registration's
    workflow = prediction_paths(
        str(workdir / "results" / "predict" / f"model-{model}" / subject), pair["subject"]
    )
    predicted = bids_prediction_paths(str(out), PairEntities(bids_label(pair["subject"])))
    assert _same_file(Path(workflow["probability"]), Path(predicted["probability"])) is None
    # The QC numbers its summary shows are the workflow's QC record of the pair.
    qc_name = f"{subject}_desc-preproc_qc.json"
    assert (
        _same_file(workdir / "results" / "qc" / qc_name, out / "preproc" / "qc" / qc_name) is None
    )


def test_every_preprocessing_step_is_a_rule_of_the_workflow():
    """The pipeline's one definition names the workflow's rules, in the rules' order."""
    from mschange.preprocessing.pipeline import STEP_RULES

    result = subprocess.run(
        [*SNAKEMAKE, "--list-rules"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert set(STEP_RULES) <= set(result.stdout.split()), (STEP_RULES, result.stdout)
    defined = re.findall(r"^rule (\w+):", (REPO / "rules" / "preprocess.smk").read_text(), re.M)
    assert [rule for rule in defined if rule in STEP_RULES] == STEP_RULES
