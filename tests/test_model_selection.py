"""Inference options (histogram matching, mirroring, edge margin) and model selection on
the validation set during training."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from mschange.detection.inference import InferenceSettings, mirrorings, predict_probability
from mschange.detection.modelfile import load_detector
from mschange.detection.network import DetectorArchitecture
from mschange.detection.training import train_detector
from mschange.evaluation.baseline import subtraction_zmap
from mschange.evaluation.metrics import MetricSettings
from mschange.evaluation.validation import (
    TrainingValidation,
    ValidationPair,
    best_pooled_scores,
)
from mschange.preprocessing.normalize import match_intensities

from .conftest import default_preprocessing
from .test_detection import RESUME_SETTINGS, DifferenceNetwork, Killed, _samples


def _brain_pair(seed: int = 0, shape=(40, 36, 28)):
    rng = np.random.default_rng(seed)
    brain = np.zeros(shape, dtype=bool)
    brain[4:-4, 4:-4, 4:-4] = True
    baseline = np.where(brain, rng.uniform(0.2, 0.8, shape), 0.0).astype(np.float32)
    return baseline, brain


# ------------------------------------------------------------------ histogram matching


def test_matching_undoes_a_contrast_change_inside_the_mask_only():
    baseline, brain = _brain_pair()
    followup = np.where(brain, baseline**2 * 0.9, 0.3).astype(np.float32)
    matched = match_intensities(followup, baseline, brain)
    assert np.abs(followup - baseline)[brain].mean() > 0.1
    assert np.abs(matched - baseline)[brain].max() < 0.01  # same ranks, same values
    np.testing.assert_array_equal(matched[~brain], followup[~brain])
    with pytest.raises(ValueError, match="empty"):
        match_intensities(followup, baseline, np.zeros_like(brain))


def test_a_small_bright_change_survives_matching():
    baseline, brain = _brain_pair(1)
    followup = baseline.copy()
    followup[18:22, 16:20, 12:16] = 1.0  # 64 voxels of a 12,000-voxel brain
    matched = match_intensities(followup, baseline, brain)
    assert (matched - baseline)[18:22, 16:20, 12:16].mean() > 0.15
    assert np.abs(matched - baseline)[brain].mean() < 0.01


def test_matched_subtraction_ignores_a_global_contrast_change():
    baseline, brain = _brain_pair(2)
    followup = np.where(brain, baseline**1.6, 0.0).astype(np.float32)
    followup[18:22, 16:20, 12:16] += 0.5
    plain = subtraction_zmap(baseline, followup, brain, (1, 1, 1), sigma_mm=1.0)
    matched = subtraction_zmap(baseline, followup, brain, (1, 1, 1), sigma_mm=1.0, harmonise=True)
    lesion = np.zeros_like(brain)
    lesion[18:22, 16:20, 12:16] = True
    # Without matching the gamma change dominates |z| > 3 outside the lesion; with it
    # the lesion is (nearly) all that is left.
    assert (np.abs(plain) > 3)[brain & ~lesion].sum() > (np.abs(matched) > 3)[brain & ~lesion].sum()
    assert (matched > 3)[lesion].mean() > 0.5


def test_detector_inputs_are_matched_when_set():
    baseline, brain = _brain_pair(3)
    followup = np.where(brain, baseline * 0.5, 0.0).astype(np.float32)  # darker overall
    network = DifferenceNetwork(DetectorArchitecture(channels=(8, 16)))
    plain = predict_probability(
        network, baseline, followup, brain, np.eye(4), InferenceSettings(margin=0)
    )
    matched = predict_probability(
        network, baseline, followup, brain, np.eye(4), InferenceSettings(margin=0, harmonise=True)
    )
    assert (plain > 0.5).sum() > 1000 and (matched > 0.5).sum() == 0


# ------------------------------------------------------------------ mirroring, edge margin


def test_mirrorings_are_every_combination_of_flips():
    assert mirrorings(()) == [()]
    assert mirrorings((0,)) == [(), (0,)]
    assert sorted(mirrorings((0, 2))) == [(), (0,), (0, 2), (2,)]
    with pytest.raises(ValueError, match="distinct"):
        InferenceSettings(mirror_axes=(0, 0))
    with pytest.raises(ValueError, match="distinct"):
        InferenceSettings(mirror_axes=(3,))


class LeftRightRamp(DifferenceNetwork):
    """Logits that grow along the first axis: a mirror pass sees the ramp reversed."""

    calls = 0

    def forward(self, baseline, followup):
        LeftRightRamp.calls += 1
        ramp = torch.linspace(-4.0, 4.0, baseline.shape[2]).view(1, 1, -1, 1, 1)
        return [ramp.expand_as(baseline).clone()]


def test_mirroring_averages_flipped_passes_flipped_back():
    baseline, brain = _brain_pair(4, shape=(32, 32, 32))
    brain[:] = True
    network = LeftRightRamp(DetectorArchitecture(channels=(8, 16)))
    LeftRightRamp.calls = 0
    plain = predict_probability(
        network, baseline, baseline, brain, np.eye(4), InferenceSettings(margin=0)
    )
    assert LeftRightRamp.calls == 1
    mirrored = predict_probability(
        network, baseline, baseline, brain, np.eye(4), InferenceSettings(margin=0, mirror_axes=(0,))
    )
    assert LeftRightRamp.calls == 3
    assert plain[0].max() < 0.05 and plain[-1].min() > 0.95
    # sigmoid(r) and sigmoid(-r) average to 1/2 everywhere.
    np.testing.assert_allclose(mirrored, 0.5, atol=1e-6)
    # Flips of axes the output does not depend on change nothing.
    other = predict_probability(
        network,
        baseline,
        baseline,
        brain,
        np.eye(4),
        InferenceSettings(margin=0, mirror_axes=(1, 2)),
    )
    np.testing.assert_allclose(other, plain, atol=1e-6)


def test_edge_margin_clears_the_rim_in_millimetres():
    baseline, brain = _brain_pair(5)
    followup = baseline + 0.5 * brain
    network = DifferenceNetwork(DetectorArchitecture(channels=(8, 16)))
    affine = np.diag([2.0, 2.0, 2.0, 1.0])  # 2 mm voxels: a 4 mm margin is 2 voxels
    probability = predict_probability(
        network, baseline, followup, brain, affine, InferenceSettings(margin=0, edge_margin_mm=4.0)
    )
    inner = np.zeros_like(brain)
    inner[6:-6, 6:-6, 6:-6] = True
    assert probability[inner].min() > 0.99
    assert probability[brain & ~inner].max() == 0.0


# ------------------------------------------------------------------ validation scores


def _rows(threshold, truth, tp_truth, predicted, tp_predicted, kind="painted"):
    return {
        "threshold": threshold,
        "kind": kind,
        "to_truth_blobs": truth,
        "to_tp_truth": tp_truth,
        "to_predicted_blobs": predicted,
        "to_tp_predicted": tp_predicted,
        "predicted_lesions": predicted,
    }


def test_pooled_scores_count_no_change_detections_as_false_positives():
    rows = pd.DataFrame(
        [
            _rows(0.1, 4, 3, 4, 3),
            _rows(0.1, 0, 0, 6, 0, kind="no-change"),
            _rows(0.5, 4, 2, 2, 2),
            _rows(0.5, 0, 0, 0, 0, kind="no-change"),
        ]
    )
    best = best_pooled_scores(rows)
    # kappa 0.1: LTPR 3/4, PPV 3/10, F1 0.4286; kappa 0.5: LTPR 1/2, PPV 1, F1 0.6667
    assert best["val_kappa"] == 0.5
    assert best["val_f1"] == pytest.approx(2 / 3)
    assert best["val_ltpr"] == 0.5 and best["val_ppv"] == 1.0
    assert best["val_fp_nochange"] == 0.0


def _save(data, path: Path) -> str:
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), np.eye(4)), path)
    return str(path)


def test_training_validation_scores_real_files(tmp_path):
    baseline, brain = _brain_pair(6)
    followup = baseline.copy()
    followup[10:14, 10:14, 10:14] += 0.6  # found by the difference network
    followup[25:28, 25:28, 18:21] += 0.1  # too faint: missed
    label = np.zeros_like(brain)
    label[10:14, 10:14, 10:14] = True
    label[25:28, 25:28, 18:21] = True
    nochange = baseline.copy()
    nochange[26:30, 8:12, 8:12] += 0.6  # an acquisition difference: a false positive
    files = {
        name: _save(data, tmp_path / f"{name}.nii.gz")
        for name, data in (
            ("baseline", baseline),
            ("followup", followup),
            ("label", label),
            ("nochange", nochange),
            ("brain", brain),
        )
    }
    pairs = [
        ValidationPair(
            "a-painted",
            "a",
            files["baseline"],
            files["followup"],
            (files["brain"], files["brain"]),
            files["label"],
        ),
        ValidationPair(
            "a-nochange",
            "a",
            files["baseline"],
            files["nochange"],
            (files["brain"], files["brain"]),
            None,
        ),
    ]
    validate = TrainingValidation(
        pairs, InferenceSettings(margin=0, min_blob_voxels=5), MetricSettings(), kappas=[0.5, 0.9]
    )
    scores = validate(
        DifferenceNetwork(DetectorArchitecture(channels=(8, 16))), torch.device("cpu")
    )
    assert scores["val_ltpr"] == 0.5 and scores["val_ppv"] == 0.5
    assert scores["val_f1"] == pytest.approx(0.5) and scores["val_fp_nochange"] == 1.0
    assert scores["val_kappa"] == 0.1  # the model's own kappa is always tried, first


class ScriptedValidation:
    """Validation F1 by call: the second validation is the best."""

    def __init__(self, values):
        self.values = list(values)
        self.calls = 0

    def __call__(self, network, device):
        value = self.values[self.calls]
        self.calls += 1
        return {
            "val_f1": value,
            "val_ltpr": value,
            "val_ppv": value,
            "val_kappa": 0.2,
            "val_fp_nochange": 1.0,
        }


def _train_validated(tmp_path, name, validate, on_step=None, samples=None):
    settings = dataclasses.replace(RESUME_SETTINGS, validate_every=1)
    folder = tmp_path / name
    return train_detector(
        samples or _samples(tmp_path),
        settings,
        model_path=folder / "model.pt",
        last_model_path=folder / "model_last.pt",
        log_tsv=folder / "log.tsv",
        curve_png=folder / "curve.png",
        checkpoint_dir=folder / "checkpoints",
        device=torch.device("cpu"),
        metadata={"preprocessing": default_preprocessing()},
        on_step=on_step,
        validate=validate,
    )


def test_the_best_validated_weights_are_kept_and_the_last_beside_them(tmp_path):
    validate = ScriptedValidation([0.2, 0.6, 0.4])
    samples = _samples(tmp_path)
    summary = _train_validated(tmp_path, "run", validate, samples=samples)
    assert validate.calls == 3  # after each of the 3 iterations
    assert summary["selected"]["iteration"] == 2 and summary["selected"]["val_f1"] == 0.6
    log = pd.read_csv(tmp_path / "run" / "log.tsv", sep="\t")
    assert list(log["val_f1"]) == [0.2, 0.6, 0.4]
    best, metadata = load_detector(tmp_path / "run" / "model.pt")
    last, last_metadata = load_detector(tmp_path / "run" / "model_last.pt")
    assert metadata["training"]["selected"]["iteration"] == 2
    assert last_metadata["training"]["selected"] == {"by": "last", "iteration": 3}
    assert any(not torch.equal(v, last.state_dict()[k]) for k, v in best.state_dict().items())

    # The same run without validation: its last weights equal the validated run's last.
    plain = train_detector(
        samples,
        RESUME_SETTINGS,
        model_path=tmp_path / "plain" / "model.pt",
        log_tsv=tmp_path / "plain" / "log.tsv",
        curve_png=tmp_path / "plain" / "curve.png",
        checkpoint_dir=tmp_path / "plain" / "checkpoints",
        device=torch.device("cpu"),
        metadata={"preprocessing": default_preprocessing()},
    )
    assert plain["selected"] == {"by": "last", "iteration": 3}
    unvalidated, _ = load_detector(tmp_path / "plain" / "model.pt")
    for key, value in unvalidated.state_dict().items():
        assert torch.equal(value, last.state_dict()[key]), key


def test_the_best_weights_survive_an_interruption(tmp_path):
    samples = _samples(tmp_path)
    straight = _train_validated(
        tmp_path, "straight", ScriptedValidation([0.2, 0.6, 0.4]), samples=samples
    )

    def kill_at_step_5(step, loss):
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        _train_validated(
            tmp_path,
            "resumed",
            ScriptedValidation([0.2, 0.6, 0.4]),
            on_step=kill_at_step_5,
            samples=samples,
        )
    # The rerun validates only the iteration still to do.
    resumed = _train_validated(tmp_path, "resumed", ScriptedValidation([0.4]), samples=samples)
    assert resumed["resumed_from_step"] == 4
    assert resumed["selected"]["iteration"] == straight["selected"]["iteration"] == 2
    first, _ = load_detector(tmp_path / "straight" / "model.pt")
    again, _ = load_detector(tmp_path / "resumed" / "model.pt")
    for key, value in first.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key


def test_validate_every_needs_a_validation_set(tmp_path):
    with pytest.raises(ValueError, match="no validation set"):
        _train_validated(tmp_path, "run", None)


# ------------------------------------------------------------------ fine-tuning


def test_fine_tuning_starts_from_the_given_weights(tmp_path):
    samples = _samples(tmp_path)
    source = tmp_path / "source"
    train_detector(
        samples,
        RESUME_SETTINGS,
        model_path=source / "model.pt",
        log_tsv=source / "log.tsv",
        curve_png=source / "curve.png",
        checkpoint_dir=source / "checkpoints",
        device=torch.device("cpu"),
        metadata={"preprocessing": default_preprocessing()},
    )

    def finetune(name, settings):
        folder = tmp_path / name
        return train_detector(
            samples,
            settings,
            model_path=folder / "model.pt",
            log_tsv=folder / "log.tsv",
            curve_png=folder / "curve.png",
            checkpoint_dir=folder / "checkpoints",
            device=torch.device("cpu"),
            metadata={"preprocessing": default_preprocessing()},
            initial_model=source / "model.pt",
        )

    # With a zero learning rate, fine-tuning keeps the source's weights exactly ...
    frozen = finetune("frozen", dataclasses.replace(RESUME_SETTINGS, learning_rate=0.0, seed=9))
    assert frozen["initial_model"] == str(source / "model.pt")
    start, _ = load_detector(source / "model.pt")
    kept, _ = load_detector(tmp_path / "frozen" / "model.pt")
    for key, value in start.state_dict().items():
        assert torch.equal(value, kept.state_dict()[key]), key
    # ... with a positive one it moves away from them.
    finetune("tuned", dataclasses.replace(RESUME_SETTINGS, learning_rate=1e-3, seed=9))
    tuned, _ = load_detector(tmp_path / "tuned" / "model.pt")
    assert any(not torch.equal(v, tuned.state_dict()[k]) for k, v in start.state_dict().items())
    other = dataclasses.replace(
        RESUME_SETTINGS, architecture=DetectorArchitecture(channels=(8, 16, 32))
    )
    with pytest.raises(ValueError, match="architecture"):
        finetune("mismatch", other)


def test_an_annotated_label_lands_on_the_follow_up_grid(tmp_path):
    from mschange.detection.steps import annotated_change_mask_step

    # A clinical label: 1 x 1 x 3 mm voxels; a lesion of 6 x 6 x 2 voxels = 216 mm3.
    native = np.diag([1.0, 1.0, 3.0, 1.0])
    label = np.zeros((40, 40, 14), dtype=np.uint8)
    label[10:16, 20:26, 5:7] = 1
    nib.save(nib.Nifti1Image(label, native), tmp_path / "label.nii.gz")
    grid = np.eye(4)
    grid[2, 3] = -1.0  # the 1 mm grid's voxel centres sit on the native slices' centres
    nib.save(
        nib.Nifti1Image(np.zeros((40, 40, 42), np.float32), grid), tmp_path / "followup.nii.gz"
    )
    voxels = annotated_change_mask_step(
        tmp_path / "label.nii.gz",
        tmp_path / "followup.nii.gz",
        tmp_path / "mask.nii.gz",
        subject="p1",
    )
    mask = nib.load(tmp_path / "mask.nii.gz")
    np.testing.assert_allclose(mask.affine, grid)
    assert 180 <= voxels <= 252  # 216 mm3, up to a 1 mm slab either way at the slab edges
    assert np.asarray(mask.dataobj)[10:16, 20:26].sum() == voxels


class ConstantLogit(DifferenceNetwork):
    def __init__(self, architecture, logit):
        super().__init__(architecture)
        self.logit = logit

    def forward(self, baseline, followup):
        return [torch.full_like(baseline, self.logit)]


def test_an_ensemble_averages_its_models_probabilities():
    baseline, brain = _brain_pair(7)
    architecture = DetectorArchitecture(channels=(8, 16))
    models = [ConstantLogit(architecture, 2.0), ConstantLogit(architecture, -1.0)]
    probability = predict_probability(
        models, baseline, baseline, brain, np.eye(4), InferenceSettings(margin=0)
    )
    expected = (1 / (1 + np.exp(-2.0)) + 1 / (1 + np.exp(1.0))) / 2
    np.testing.assert_allclose(probability[brain], expected, atol=1e-6)
    assert probability[~brain].max() == 0.0


# ------------------------------------------------------------------ shipping a model


def test_a_shipped_model_carries_its_settings_and_data_fingerprints(tmp_path, monkeypatch):
    from mschange.io import file_sha256
    from mschange.pretrained import inference_for, resolve_model, ship_model

    samples = _samples(tmp_path)
    trained = tmp_path / "results" / "detector" / "model-m"
    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(b"not really a scan")
    train_detector(
        samples,
        RESUME_SETTINGS,
        model_path=trained / "model.pt",
        log_tsv=trained / "training_log.tsv",
        curve_png=trained / "training_curve.png",
        checkpoint_dir=trained / "checkpoints",
        device=torch.device("cpu"),
        metadata={
            "preprocessing": default_preprocessing(),
            "training_data": {"training_pairs": {"s1": {"followup": str(scan)}}},
        },
    )
    models = tmp_path / "models"
    with pytest.raises(ValueError, match="unknown inference settings"):
        ship_model(trained, "tiny", inference={"kapa": 0.2}, models=models)
    path = ship_model(
        trained,
        "tiny",
        inference={"kappa": 0.3, "mirror_axes": [0]},
        extra_data=[samples[0].label],
        models=models,
    )
    _, metadata = load_detector(path)
    assert metadata["name"] == "tiny"
    assert metadata["data_fingerprints"] == {
        str(scan): file_sha256(scan),
        samples[0].label: file_sha256(samples[0].label),
    }
    settings = inference_for(metadata)
    assert settings.kappa == 0.3 and settings.mirror_axes == (0,)
    assert settings.min_blob_voxels == 20  # not stored: the paper's default
    assert inference_for(metadata, {"kappa": 0.5}).kappa == 0.5
    assert (models / "tiny" / "training_log.tsv").read_bytes() == (
        trained / "training_log.tsv"
    ).read_bytes()

    # A name resolves to the package's models folder; a file path to itself.
    monkeypatch.setattr("mschange.pretrained.models_folder", lambda: models)
    assert resolve_model("tiny") == path
    assert resolve_model(trained / "model.pt") == trained / "model.pt"
    with pytest.raises(FileNotFoundError, match="shipped: tiny"):
        resolve_model("other")


def test_changes_are_kept_only_where_a_time_point_is_lesion_bright():
    rng = np.random.default_rng(8)
    brain = np.zeros((40, 36, 28), dtype=bool)
    brain[4:-4, 4:-4, 4:-4] = True
    baseline = np.where(brain, rng.uniform(0.45, 0.55, brain.shape), 0.0).astype(np.float32)
    followup = baseline.copy()
    followup[10:14, 10:14, 10:14] = 0.95  # a new bright lesion: kept
    followup[24:28, 20:24, 14:18] = 0.1  # a dark difference in normal tissue: dropped
    network = DifferenceNetwork(DetectorArchitecture(channels=(8, 16)))
    plain = predict_probability(
        network, baseline, followup, brain, np.eye(4), InferenceSettings(margin=0)
    )
    kept = predict_probability(
        network,
        baseline,
        followup,
        brain,
        np.eye(4),
        InferenceSettings(margin=0, min_lesion_contrast=1.4),
    )
    assert plain[10:14, 10:14, 10:14].min() > 0.9 and plain[24:28, 20:24, 14:18].min() > 0.9
    assert kept[10:14, 10:14, 10:14].min() > 0.9
    assert kept[24:28, 20:24, 14:18].max() == 0.0


def test_the_shipped_model_is_complete_and_label_free():
    from mschange.pretrained import DEFAULT_MODEL, SHIPPED_FILES, inference_for, resolve_model

    path = resolve_model(None)
    assert path.parent.name == DEFAULT_MODEL
    for name in (*SHIPPED_FILES, "README.md"):
        assert (path.parent / name).is_file(), name
    assert path.stat().st_size < 5_000_000  # small enough to live in the repository
    network, metadata = load_detector(path)
    assert metadata["name"] == DEFAULT_MODEL
    # Trained without any change label, selected on the validation set.
    assert metadata["training_data"]["labels_used"].startswith("none")
    assert metadata["training"]["selected"]["by"] == "validation"
    assert len(metadata["data_fingerprints"]) >= 14
    assert all(len(digest) == 64 for digest in metadata["data_fingerprints"].values())
    # The inference settings chosen for it are what predict uses by default.
    settings = inference_for(metadata)
    assert settings.kappa == metadata["inference"]["kappa"]
    card = (path.parent / "README.md").read_text()
    for needed in ("CC-BY", "ISBI", "Carass", "Lesjak", "subtraction", "validation"):
        assert needed in card, needed
    with torch.no_grad():
        out = network(torch.zeros(1, 1, 16, 16, 16), torch.zeros(1, 1, 16, 16, 16))
    assert out[0].shape == (1, 1, 16, 16, 16)


def test_registration_speed_settings_do_not_make_a_model_refuse_a_config():
    """A model trained with ANTs' default sampling on one thread still serves a config
    that registers faster (SPEED_SETTINGS); a different transform type is refused."""
    import copy

    from mschange.config import schema_default, validate_config
    from mschange.pretrained import preprocessing_differences, resolve_model

    model = resolve_model(None)
    stored = torch.load(model, map_location="cpu", weights_only=True)["preprocessing"]
    assert "sampling_points" not in stored["registration"]  # trained before it existed
    preprocessing = copy.deepcopy(stored)
    preprocessing["registration"].update(
        threads=2,
        sampling_points=schema_default("preprocessing", "registration", "sampling_points"),
    )
    assert preprocessing_differences(model, preprocessing) == []
    preprocessing["registration"]["transform"] = "DenseRigid"
    (difference,) = preprocessing_differences(model, preprocessing)
    assert difference.startswith("registration:") and "DenseRigid" in difference
    # The schema's default is the one a validated config gets.
    config = validate_config(yaml_config())
    assert (
        config["preprocessing"]["registration"]["sampling_points"]
        == schema_default("preprocessing", "registration", "sampling_points")
        == 225000
    )


def yaml_config() -> dict:
    import yaml

    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "config.yaml").read_text())
    config["preprocessing"]["registration"].pop("sampling_points", None)
    return config
