"""The change detector: network variants, loss, training and resume, inference, CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from mschange import cli
from mschange.changemap import find_changes, to_native_grid
from mschange.detection.augment import AugmentationSettings
from mschange.detection.inference import (
    InferenceSettings,
    lesion_table,
    predict_probability,
)
from mschange.detection.loss import (
    LossSettings,
    detector_loss,
    focal_tversky_loss,
    tversky_index,
)
from mschange.detection.modelfile import load_detector, save_detector
from mschange.detection.network import AttentionGate, ChangeDetector, DetectorArchitecture
from mschange.detection.outputs import PairEntities, bids_prediction_paths
from mschange.detection.steps import predict_with_network, training_settings
from mschange.detection.training import (
    DetectorTrainingSettings,
    PairSampler,
    TrainingSample,
    cached_sample,
    load_sample,
)
from mschange.preprocessing.resample import isotropic_grid, resample_to_grid
from mschange.scancache import DiskArray, ScanCache

from .conftest import default_preprocessing, oblique_affine

TINY = DetectorArchitecture(channels=(8, 16, 32))

# The rows of To et al.'s Table 1 as architecture switches (loss rows differ in loss only).
TABLE1_VARIANTS = {
    "U-net": dict(
        siamese=False,
        inception=False,
        attention_gates=False,
        multiscale_inputs=False,
        deep_supervision=False,
    ),
    "U-net-AG-MS-DS": dict(siamese=False, inception=False),
    "U-net-Inc-AG-MS-DS": dict(siamese=False),
    "Siamese U-net": {},
    "Siamese, difference fusion": dict(fusion="difference"),
    "Siamese, plain blocks, no gates": dict(inception=False, attention_gates=False),
}


@pytest.mark.parametrize("name", TABLE1_VARIANTS)
def test_every_variant_maps_a_pair_to_change_logits(name):
    architecture = DetectorArchitecture(channels=(8, 16, 32), **TABLE1_VARIANTS[name])
    model = ChangeDetector(architecture)
    baseline, followup = torch.rand(2, 1, 24, 32, 16), torch.rand(2, 1, 24, 32, 16)
    maps = model(baseline, followup)
    # Final map at full size; with deep supervision, one more per intermediate level.
    expected = [(2, 1, 24, 32, 16)] + ([(2, 1, 12, 16, 8)] if architecture.deep_supervision else [])
    assert [tuple(m.shape) for m in maps] == expected
    assert architecture.n_outputs == len(expected)
    kernels = {tuple(m.kernel_size) for m in model.modules() if isinstance(m, nn.Conv3d)}
    assert ((5, 5, 5) in kernels) == architecture.inception
    gates = [m for m in model.modules() if isinstance(m, AttentionGate)]
    assert len(gates) == (2 if architecture.attention_gates else 0)
    first = model.encoder.blocks[0][0]
    first_conv = next(m for m in first.modules() if isinstance(m, nn.Conv3d))
    assert first_conv.in_channels == (2 if architecture.siamese else 3)
    assert len(model.encoder.input_convs) == (2 if architecture.multiscale_inputs else 0)


def test_siamese_branches_share_weights_and_see_the_difference_image():
    model = ChangeDetector(TINY).eval()
    same = torch.rand(1, 1, 16, 16, 16)
    other = same.clone()
    other[..., 4:8, 4:8, 4:8] += 0.5
    with torch.no_grad():
        unchanged = model(same, same)[0]
        changed = model(same, other)[0]
    # The output depends on the change, and most on the changed corner.
    assert not torch.allclose(unchanged, changed)
    # One encoder serves both branches (no second copy of the weights).
    encoders = [m for m in model.modules() if m.__class__.__name__ == "Encoder"]
    assert len(encoders) == 1


def test_attention_gate_weights_lie_in_zero_one_and_keep_shape():
    gate = AttentionGate(skip_channels=8, gating_channels=16)
    skip, gating = torch.randn(1, 8, 8, 8, 8), torch.randn(1, 16, 4, 4, 4)
    alpha = gate.coefficients(skip, gating)
    assert alpha.shape == (1, 1, 8, 8, 8)
    assert float(alpha.detach().min()) > 0.0 and float(alpha.detach().max()) < 1.0
    torch.testing.assert_close(gate(skip, gating), skip * alpha)


def test_architecture_checks():
    with pytest.raises(ValueError, match="multiples of 4"):
        DetectorArchitecture(channels=(6, 12))
    with pytest.raises(ValueError, match="fusion"):
        DetectorArchitecture(fusion="sum")
    with pytest.raises(ValueError, match="multiples of 8"):
        DetectorTrainingSettings(
            architecture=DetectorArchitecture(channels=(8, 16, 32, 64)), patch_size=(32, 32, 20)
        )


def test_focal_tversky_value_by_hand():
    probability = torch.tensor([[0.9, 0.2, 0.6, 0.0]])
    target = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    # TP = 0.9 + 0.2 = 1.1, FN = 0.1 + 0.8 = 0.9, FP = 0.6:
    # TI = 1.1 / (1.1 + 0.75 * 0.9 + 0.25 * 0.6) = 1.1 / 1.925 = 4/7.
    index = tversky_index(probability, target, alpha=0.75, beta=0.25, smooth=0.0)
    assert float(index) == pytest.approx(4 / 7)
    loss = focal_tversky_loss(probability, target, alpha=0.75, beta=0.25, gamma=0.75, smooth=0.0)
    assert float(loss) == pytest.approx((3 / 7) ** 0.75)
    # alpha > beta punishes a missed change more than a false alarm of the same size.
    missed = focal_tversky_loss(
        torch.tensor([[0.0, 1.0]]),
        torch.tensor([[1.0, 1.0]]),
        alpha=0.75,
        beta=0.25,
        gamma=1.0,
        smooth=0.0,
    )
    false_alarm = focal_tversky_loss(
        torch.tensor([[1.0, 1.0]]),
        torch.tensor([[0.0, 1.0]]),
        alpha=0.75,
        beta=0.25,
        gamma=1.0,
        smooth=0.0,
    )
    assert float(missed) == pytest.approx(1 - 1 / 1.75)
    assert float(false_alarm) == pytest.approx(1 - 1 / 1.25)


def test_empty_label_scores_zero_only_without_false_alarms():
    empty = torch.zeros(1, 10)
    assert float(
        focal_tversky_loss(torch.zeros(1, 10), empty, alpha=0.75, beta=0.25, gamma=1.0, smooth=1.0)
    ) == pytest.approx(0.0)
    # One whole false voxel: TI = 1 / (0.25 + 1).
    alarm = torch.zeros(1, 10)
    alarm[0, 3] = 1.0
    assert float(
        focal_tversky_loss(alarm, empty, alpha=0.75, beta=0.25, gamma=1.0, smooth=1.0)
    ) == pytest.approx(1 - 1 / 1.25)


def test_deep_supervision_terms_use_pooled_labels_and_l2_is_added():
    label = torch.zeros(1, 1, 4, 4, 4)
    label[..., :2, :2, :2] = 1.0  # one coarse voxel of the 2x2x2 level, fully changed
    huge = 30.0
    final = torch.where(label > 0, huge, -huge)
    coarse = torch.full((1, 1, 2, 2, 2), -huge)
    coarse[..., 0, 0, 0] = huge
    settings = LossSettings(gamma_final=1.0, gamma_intermediate=0.75, smooth=0.0)
    total, parts = detector_loss([final, coarse], label, settings)
    assert float(total) == pytest.approx(0.0, abs=1e-6)
    assert parts["final"] == pytest.approx(0.0, abs=1e-6)
    assert parts["deep1"] == pytest.approx(0.0, abs=1e-6)
    wrong = -coarse  # the coarse map marks the seven unchanged voxels only
    _, parts = detector_loss([final, wrong], label, settings)
    assert parts["deep1"] == pytest.approx(1.0**0.75, abs=1e-5)  # TP = 0
    bce, parts = detector_loss([final, coarse], label, LossSettings(kind="bce"))
    assert float(bce) == pytest.approx(0.0, abs=1e-6)
    model = nn.Sequential(nn.Conv3d(1, 1, 1, bias=True))
    with torch.no_grad():
        model[0].weight.fill_(2.0)
        model[0].bias.fill_(5.0)
    _, parts = detector_loss([final], label, LossSettings(l2=1e-4), model)
    assert parts["l2"] == pytest.approx(1e-4 * 4.0)  # kernel only, bias excluded


def test_overfitting_a_tiny_batch_drives_the_loss_down():
    torch.manual_seed(0)
    model = ChangeDetector(TINY)
    baseline = torch.rand(2, 1, 16, 16, 16) * 0.2 + 0.4
    followup = baseline.clone()
    label = torch.zeros_like(baseline)
    followup[0, :, 3:8, 4:9, 5:10] += 0.4
    label[0, :, 3:8, 4:9, 5:10] = 1.0
    followup[1, :, 9:14, 2:6, 8:12] -= 0.3
    label[1, :, 9:14, 2:6, 8:12] = 1.0
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss, _ = detector_loss(model(baseline, followup), label, LossSettings())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.3 * losses[0], losses
    with torch.no_grad():
        probability = torch.sigmoid(model(baseline, followup)[0])
    assert float(probability[label > 0].mean()) > 0.7
    assert float(probability[label == 0].mean()) < 0.2


def test_learning_rate_decays_like_keras():
    settings = DetectorTrainingSettings()
    assert settings.learning_rate_at(0) == pytest.approx(2e-4)
    assert settings.learning_rate_at(1000) == pytest.approx(1e-4)
    assert settings.total_steps == 60 * 50


# ------------------------------------------------------------------ training samples
# (resuming and stopping: tests/test_training_loop.py)


def _samples(tmp_path: Path, n: int = 2) -> list[TrainingSample]:
    rng = np.random.default_rng(3)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    samples = []
    for index in range(n):
        reference = np.zeros((24, 24, 20), dtype=np.float32)
        reference[3:21, 3:21, 3:17] = rng.uniform(0.3, 0.6, (18, 18, 14))
        synthesised = reference.copy()
        label = np.zeros(reference.shape, dtype=np.uint8)
        label[6 + index : 11 + index, 8:12, 6:10] = 1
        synthesised[label > 0] += 0.3
        paths = []
        for name, data in (
            ("reference", reference),
            ("synthesised", synthesised),
            ("label", label),
        ):
            path = tmp_path / "samples" / f"s{index}_{name}.nii.gz"
            path.parent.mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(data, affine), path)
            paths.append(str(path))
        samples.append(TrainingSample(*paths))
    return samples


RESUME_SETTINGS = DetectorTrainingSettings(
    architecture=DetectorArchitecture(channels=(8, 16)),
    iterations=3,
    pairs_per_iteration=4,
    patch_size=(16, 16, 16),
    checkpoint_every=100,
    seed=5,
    learning_rate=1e-3,
)


class Killed(Exception):
    pass


@pytest.mark.parametrize(
    "patch_size, augmentation", [((16, 16, 16), False), ((8, 16, 8), True), (None, False)]
)
def test_samples_from_the_disk_cache_give_the_in_memory_batches(tmp_path, patch_size, augmentation):
    samples = _samples(tmp_path, n=3)
    settings = dataclasses.replace(
        RESUME_SETTINGS,
        patch_size=patch_size,
        augmentation=AugmentationSettings(enabled=augmentation),
    )
    cache = ScanCache(tmp_path / "cache")
    on_disk = PairSampler(
        [cached_sample(s, cache) for s in samples], settings, np.random.default_rng(3)
    )
    in_memory = PairSampler([load_sample(s) for s in samples], settings, np.random.default_rng(3))
    assert on_disk.shape == in_memory.shape
    for _ in range(7):  # more than one shuffled pass over the 3 samples
        for a, b in zip(on_disk.batch(), in_memory.batch(), strict=True):
            assert torch.equal(a, b)
    assert on_disk.order == in_memory.order
    # The disk sampler holds no voxels: every array is a file read per batch.
    for sample in on_disk.samples:
        for name in ("baseline", "followup", "label", "changed"):
            assert isinstance(getattr(sample, name), DiskArray), name
    assert cache.built == 3 and len(list(cache.folder.glob("*.npy"))) == 12


def test_model_file_loads_safely_and_rejects_other_files(tmp_path):
    model = ChangeDetector(TINY)
    path = save_detector(
        model,
        tmp_path / "m.pt",
        training={"steps": 1},
        metadata={"preprocessing": default_preprocessing()},
    )
    raw = torch.load(path, weights_only=True)  # plain values and tensors only
    assert raw["architecture"]["channels"] == [8, 16, 32]
    loaded, metadata = load_detector(path)
    assert loaded.architecture == TINY and metadata["package_version"]
    torch.save({"kind": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an mschange change-detector"):
        load_detector(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_detector(tmp_path / "missing.pt")


def _config_without_detector() -> dict:
    import yaml

    from .conftest import REPO

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    del config["detector"]
    return config


def test_config_section_builds_the_settings():
    from mschange.config import validate_config

    config = validate_config(_config_without_detector())
    settings = training_settings(config["detector"], seed=7)
    # Schema defaults are the paper's set-up.
    assert settings.architecture == DetectorArchitecture()
    assert settings.loss.alpha == 0.75 and settings.loss.gamma_final == 1.0
    assert settings.patch_size is None and settings.total_steps == 3000
    assert settings.seed == 7
    with pytest.raises(ValueError, match="patch_size"):
        validate_config(
            {**_config_without_detector(), "detector": {"training": {"patch_size": [30, 32, 32]}}}
        )


# ------------------------------------------------------------------ inference and grids


class DifferenceNetwork(ChangeDetector):
    """A transparent stand-in for a trained network: change where |difference| > 0.25.

    It keeps the real class (and its input-size rules) so the whole inference path runs;
    only the learned mapping is replaced by a known one, to check geometry exactly.
    """

    def forward(self, baseline, followup):
        return [40.0 * (torch.abs(followup - baseline) - 0.25)]


def test_find_changes_thresholds_keeps_big_blobs_and_orders_them():
    probability = np.zeros((20, 20, 20), dtype=np.float32)
    probability[2:5, 2:5, 2:5] = 0.5  # 27 voxels
    probability[10:16, 10:16, 10:16] = 0.9  # 216 voxels
    probability[18, 18, 18] = 0.95  # 1 voxel: dropped
    probability[0, 10, 10] = 0.1  # not above kappa
    probability[5, 5, 5] = 0.6  # touches the first blob at a corner (26-conn.)
    labels = find_changes(probability, kappa=0.1, min_blob_voxels=20)
    assert labels.max() == 2
    assert (labels == 1).sum() == 216 and (labels == 2).sum() == 28
    assert labels[18, 18, 18] == 0 and labels[0, 10, 10] == 0


def test_changes_are_found_at_the_right_scanner_place_on_the_native_grid(tmp_path):
    # A native follow-up like a clinical scan: anisotropic, oblique, stored LPS.
    spacing = (0.9, 0.9, 3.0)
    native_shape = (90, 100, 24)
    native_affine = oblique_affine(spacing, angle_deg=12.0)
    centres = np.indices(native_shape).reshape(3, -1).T
    scanner = nib.affines.apply_affine(native_affine, centres).reshape(*native_shape, 3)
    middle = nib.affines.apply_affine(native_affine, (np.array(native_shape) - 1) / 2)
    blob_centre = middle + np.array([10.0, -6.0, 4.0])
    distance = np.linalg.norm(scanner - blob_centre, axis=-1)
    brain = np.linalg.norm((scanner - middle) / [35, 40, 30], axis=-1) < 1
    baseline_native = np.where(brain, 0.4, 0.0).astype(np.float32)
    followup_native = baseline_native + 0.5 * (distance < 5.0)  # a bright new lesion, r = 5 mm

    # The pipeline's 1 mm follow-up grid; the images there, as after preprocessing.
    grid_shape, grid_affine = isotropic_grid(native_shape, native_affine, 1.0)
    files = {}
    for name, data in (
        ("baseline", baseline_native),
        ("followup", followup_native),
        ("mask", brain.astype(np.float32)),
    ):
        resampled = resample_to_grid(data, native_affine, grid_shape, grid_affine, order=1)
        if name == "mask":
            resampled = (resampled > 0.5).astype(np.uint8)
        files[name] = tmp_path / f"{name}_1mm.nii.gz"
        nib.save(nib.Nifti1Image(resampled, grid_affine), files[name])
    native_file = tmp_path / "followup_native.nii.gz"
    nib.save(nib.Nifti1Image(followup_native.astype(np.float32), native_affine), native_file)

    outputs = {
        key: tmp_path / "out" / f"{key}.nii.gz"
        for key in (
            "probability",
            "mask",
            "labels",
            "native_probability",
            "native_mask",
            "native_labels",
        )
    }
    outputs["lesions"] = tmp_path / "out" / "lesions.tsv"
    outputs["record"] = tmp_path / "out" / "record.json"
    outputs["figure"] = tmp_path / "out" / "overlay.png"
    network = DifferenceNetwork(DetectorArchitecture(channels=(8, 16, 32)))
    settings = InferenceSettings(window=(32, 32, 32), overlap=8, kappa=0.1, min_blob_voxels=20)
    record = predict_with_network(
        network,
        files["baseline"],
        files["followup"],
        [files["mask"]],
        native_file,
        outputs,
        subject="blob",
        settings=settings,
        device=torch.device("cpu"),
    )
    assert record["changes"] == 1 and record["brighter_at_followup"] == 1

    native_mask = nib.load(outputs["native_mask"])
    assert native_mask.shape == native_shape
    np.testing.assert_allclose(native_mask.affine, native_affine, atol=1e-6)
    assert nib.load(outputs["native_probability"]).shape == native_shape
    found = np.asarray(native_mask.dataobj) > 0
    found_centre = scanner[found].mean(axis=0)
    assert np.linalg.norm(found_centre - blob_centre) < 1.5, (found_centre, blob_centre)
    # It overlays the change it came from: most marked voxels are inside the lesion.
    assert (distance[found] < 5.5).mean() > 0.9
    one_mm = nib.load(outputs["mask"])
    assert one_mm.shape == grid_shape
    np.testing.assert_allclose(one_mm.affine, grid_affine, atol=1e-6)

    table = pd.read_csv(outputs["lesions"], sep="\t")
    assert len(table) == 1 and table.loc[0, "direction"] == "brighter"
    centroid = table.loc[0, ["centroid_x_mm", "centroid_y_mm", "centroid_z_mm"]].to_numpy()
    assert np.linalg.norm(centroid.astype(float) - blob_centre) < 1.0
    # A 5 mm ball is 524 mm3; trilinear edges make the detected one a little different.
    assert 350 < table.loc[0, "volume_mm3"] < 700
    assert json.loads(outputs["record"].read_text())["changes"] == 1
    assert outputs["figure"].stat().st_size > 5_000


def test_sliding_windows_agree_with_one_whole_volume_pass():
    rng = np.random.default_rng(0)
    baseline = rng.uniform(0.2, 0.6, (40, 36, 28)).astype(np.float32)
    followup = baseline + (rng.random(baseline.shape) < 0.02) * 0.5
    brain = np.ones(baseline.shape, dtype=bool)
    network = DifferenceNetwork(DetectorArchitecture(channels=(8, 16)))
    affine = np.diag([-1.0, 1.0, 1.0, 1.0])  # LAS: predictions come back in input order
    tiled = predict_probability(
        network,
        baseline,
        followup,
        brain,
        affine,
        InferenceSettings(window=(16, 16, 16), overlap=4, margin=0),
    )
    whole = predict_probability(
        network, baseline, followup, brain, affine, InferenceSettings(window=None, margin=0)
    )
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    expected = 1 / (1 + np.exp(-40.0 * (np.abs(followup - baseline) - 0.25)))
    np.testing.assert_allclose(whole, expected, atol=1e-5)


def test_windows_without_brain_are_skipped():
    calls = []

    class Counting(DifferenceNetwork):
        def forward(self, baseline, followup):
            calls.append(tuple(baseline.shape[2:]))
            return super().forward(baseline, followup)

    rng = np.random.default_rng(1)
    baseline = rng.uniform(0.2, 0.6, (48, 48, 48)).astype(np.float32)
    followup = baseline + 0.5
    brain = np.zeros(baseline.shape, dtype=bool)
    brain[2:46, 2:46, 2:46] = True
    brain[20:46, 20:46, 20:46] = False  # an L-shaped "brain": one octant of the box is empty
    network = Counting(DetectorArchitecture(channels=(8, 16)))
    probability = predict_probability(
        network,
        baseline,
        followup,
        brain,
        np.eye(4),
        InferenceSettings(window=(24, 24, 24), overlap=0, margin=0),
    )
    assert len(calls) == 7  # 8 windows, the empty octant skipped
    assert probability[brain].min() > 0.99 and probability[~brain].max() == 0.0


def test_thin_changes_survive_on_a_thick_slice_grid():
    affine = np.eye(4)
    labels = np.zeros((10, 10, 12), dtype=np.int32)
    labels[4:7, 4:7, 4] = 1  # one 1 mm slice, between two 3 mm slice centres
    probability = (labels > 0).astype(np.float32)
    native_affine = np.diag([1.0, 1.0, 3.0, 1.0])
    native_affine[2, 3] = 2.0  # slice centres at z = 2, 5, 8 ...: none inside the change
    _, mask = to_native_grid(probability, labels, affine, (10, 10, 4), native_affine)
    # Only the native voxel holding the centroid (5, 5, 4 mm) is marked.
    assert mask.sum() == 1 and mask[5, 5, 1] == 1


def test_lesion_table_direction_and_volume():
    labels = np.zeros((10, 10, 10), dtype=np.int32)
    labels[1:3, 1:3, 1:3] = 1
    labels[6:9, 6:9, 6:9] = 2
    baseline = np.full(labels.shape, 0.5, dtype=np.float32)
    followup = baseline.copy()
    followup[labels == 1] = 0.9
    followup[labels == 2] = 0.2
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    table = lesion_table(labels, np.where(labels > 0, 0.8, 0.0), baseline, followup, affine)
    assert list(table["direction"]) == ["brighter", "darker"]
    assert list(table["volume_mm3"]) == [64.0, 216.0]
    assert table.loc[0, "centroid_x_mm"] == pytest.approx(3.0)


# ------------------------------------------------------------------ the one-pair command


def test_subject_ids_from_file_names():
    from mschange.detection.pair import subject_from_path

    assert subject_from_path("/x/sub-p01_ses-2_FLAIR.nii.gz") == "p01"
    assert subject_from_path("p7 follow_up.nii") == "p7-follow-up"


def test_predict_cli_names_a_missing_file_and_writes_nothing(tmp_path, capsys, phantom_file):
    model = save_detector(
        ChangeDetector(TINY),
        tmp_path / "m.pt",
        training={},
        metadata={"preprocessing": default_preprocessing()},
    )
    out = tmp_path / "out"
    code = cli.main(
        [
            "predict",
            "--baseline",
            str(tmp_path / "nope.nii.gz"),
            "--followup",
            str(phantom_file),
            "--model",
            str(model),
            "--out",
            str(out),
        ]
    )
    assert code == 2
    error = capsys.readouterr().err
    assert "nope.nii.gz" in error and "does not exist" in error
    assert not out.exists()
    copy = tmp_path / "copy.nii.gz"
    copy.write_bytes(phantom_file.read_bytes())
    code = cli.main(
        [
            "predict",
            "--baseline",
            str(phantom_file),
            "--followup",
            str(copy),
            "--model",
            str(tmp_path / "missing.pt"),
            "--out",
            str(out),
        ]
    )
    assert code == 2 and "missing.pt" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_predict_cli_on_a_demo_pair(tmp_path, capsys):
    from mschange.config import validate_config
    from mschange.demo import make_demo_subject

    paths = make_demo_subject(
        "demo02", tmp_path / "demo", has_change=True, seed=4, voxel_size_mm=2.0
    )
    config = _config_without_detector()
    config["preprocessing"]["resolution_mm"] = 2.0
    config = validate_config(config)
    model = save_detector(
        ChangeDetector(TINY),
        tmp_path / "m.pt",
        training={},
        metadata={"preprocessing": config["preprocessing"], "seed": 1},
    )
    torch.manual_seed(1)
    second = save_detector(
        ChangeDetector(TINY),
        tmp_path / "m2.pt",
        training={},
        metadata={"preprocessing": config["preprocessing"], "seed": 1},
    )
    out = tmp_path / "out"
    code = cli.main(
        [
            "predict",
            "--baseline",
            str(paths.baseline),
            "--followup",
            str(paths.followup),
            "--model",
            str(model),
            "--model",
            str(second),
            "--out",
            str(out),
            "--threads",
            "2",
            "--min-blob-voxels",
            "3",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "[1/7] resampling the baseline and the follow-up" in captured.err
    assert "[6/7] detecting changes" in captured.err
    assert "[7/7] writing the QC picture, the viewer and the summary" in captured.err
    assert "change(s)" in captured.out
    assert "(summary)" in captured.out and "_desc-viewer.html (viewer)" in captured.out
    raw = nib.load(paths.followup)
    # The subject id comes from the BIDS-like file name (no dataset: no session).
    files = bids_prediction_paths(str(out), PairEntities("demo02"))
    for key in ("native_probability", "native_mask", "native_labels"):
        native = nib.load(files[key])
        assert native.shape == raw.shape
        np.testing.assert_allclose(native.affine, raw.affine, atol=1e-5)
    record = json.loads(Path(files["record"]).read_text())
    assert record["settings"]["min_blob_voxels"] == 3
    assert record["model"]["path"] == str(model)
    assert [m["path"] for m in record["ensemble"]] == [str(model), str(second)]
    assert record["raw_inputs"]["followup"] == str(paths.followup)
    table = pd.read_csv(files["lesions"], sep="\t")
    assert len(table) == record["changes"]
    assert Path(files["figure"]).stat().st_size > 5_000
    assert (out / "dataset_description.json").is_file()
    assert (
        out / "preproc" / "sub-demo02" / "sub-demo02_tp-baseline_space-followup_desc-"
        "preproc_FLAIR.nii.gz"
    ).is_file()
