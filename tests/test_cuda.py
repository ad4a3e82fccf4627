"""The CUDA code paths: training, SuperMix and prediction on a GPU, under bf16 autocast.

Skipped where PyTorch sees no GPU. ``benchmarks/gpu_check.sh`` runs them on a GPU
machine (``pytest -m cuda tests/test_cuda.py``). With ``MSCHANGE_TEST_DEVICE=cpu`` the
same tests run on the CPU (the script does that in CI, so that they cannot rot); the
comparisons with the CPU are then met trivially. Tiny volumes: seconds each.

Only modules that a bare GPU machine can import are used here (no ``mschange.cli``
or ``mschange.config``, which need jsonschema).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from mschange.checkpoints import random_states, restore_random_states
from mschange.detection.inference import InferenceSettings, predict_probability
from mschange.detection.loss import LossSettings, detector_loss
from mschange.detection.modelfile import load_detector
from mschange.detection.network import ChangeDetector, DetectorArchitecture
from mschange.detection.outputs import prediction_paths
from mschange.detection.steps import predict_pair_step
from mschange.detection.training import DetectorTrainingSettings, TrainingSample, train_detector
from mschange.pretrained import resolve_model
from mschange.synthesis.reconstruction import TilingSettings, reconstruct_volume
from mschange.synthesis.steps import supermix_settings, supermix_step, tiling_settings
from mschange.synthesis.vae import Vae3d, VaeArchitecture, load_vae, save_vae
from mschange.synthesis.vae_training import VaeTrainingSettings, train_vae
from mschange.torchrun import autocast, resolve_device

from .conftest import default_preprocessing, ellipsoid_phantom, oblique_affine

DEVICE_NAME = os.environ.get("MSCHANGE_TEST_DEVICE", "cuda")
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        DEVICE_NAME.startswith("cuda") and not torch.cuda.is_available(),
        reason="no CUDA GPU (MSCHANGE_TEST_DEVICE=cpu runs these on the CPU)",
    ),
]
CPU = torch.device("cpu")
TINY_VAE = VaeArchitecture(encoder="maxpool", channels=(4, 8), latent_channels=2)
SHIPPED = "flair-lesions-v1"


@pytest.fixture(scope="module")
def device() -> torch.device:
    return resolve_device(DEVICE_NAME)


@pytest.fixture(scope="module")
def head():
    """A normalised 1 mm phantom brain (LPS-stored oblique affine) with its mask."""
    spacing = (1.0, 1.0, 1.0)
    shape = (40, 48, 32)
    image, mask = ellipsoid_phantom(shape, spacing, radii_mm=(15.0, 19.0, 12.0))
    texture = np.random.default_rng(3).normal(0.0, 0.03, shape)
    data = np.where(mask, image / image.max() * 0.7 + texture, 0.0).astype(np.float32)
    return data, mask, oblique_affine(spacing)


def _save(data, affine, path: Path, dtype=np.float32) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=dtype), affine), path)
    return str(path)


def _pair_files(folder: Path, head) -> dict[str, str]:
    """Baseline, follow-up with two new bright lesions, masks and the change label."""
    data, mask, affine = head
    followup = data.copy()
    label = np.zeros(data.shape, dtype=np.uint8)
    for centre in ((16, 20, 14), (24, 28, 18)):
        ball = sum((np.indices(data.shape)[a] - centre[a]) ** 2 for a in range(3)) <= 6
        followup[ball & mask] = 0.95
        label[ball & mask] = 1
    return {
        "baseline": _save(data + 0.01, affine, folder / "baseline.nii.gz"),
        "followup": _save(followup, affine, folder / "followup.nii.gz"),
        "baseline_mask": _save(mask, affine, folder / "baseline_mask.nii.gz", np.uint8),
        "followup_mask": _save(mask, affine, folder / "followup_mask.nii.gz", np.uint8),
        "label": _save(label, affine, folder / "label.nii.gz", np.uint8),
    }


def _flat(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.detach().float().cpu().reshape(-1) for v in state.values()])


def _assert_resumed_like_straight(straight, resumed, initial) -> None:
    """Same weights as the uninterrupted run; on CUDA up to its non-deterministic
    kernels (3D pooling and trilinear upsampling backward), so within a small share of
    how far training moved the weights."""
    moved = float((_flat(straight) - _flat(initial)).norm())
    apart = float((_flat(resumed) - _flat(straight)).norm())
    assert moved > 0
    assert apart <= 0.05 * moved, (apart, moved)


class Killed(Exception):
    pass


def _kill_at(step_to_kill: int):
    def on_step(step: int, loss: float) -> None:
        if step == step_to_kill:
            raise Killed

    return on_step


# ------------------------------------------------------------------ device and precision


def test_device_autocast_and_a_training_step(device):
    if device.type == "cuda":
        assert resolve_device("cuda:0").index == 0
    torch.manual_seed(0)
    model = ChangeDetector(DetectorArchitecture(channels=(8, 16, 32), modules_per_block=1)).to(
        device
    )
    baseline = torch.rand(2, 1, 16, 16, 16, device=device)
    followup = baseline.clone()
    label = torch.zeros_like(baseline)
    label[..., 4:9, 4:9, 4:9] = 1.0
    followup[label > 0] += 0.4
    with autocast(device):
        logits = model(baseline, followup)
    expected = torch.bfloat16 if device.type == "cuda" else torch.float32
    assert [t.dtype for t in logits] == [expected] * len(logits)
    loss, _ = detector_loss(logits, label, LossSettings(l2=1e-6), model)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.dtype == torch.float32, name
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name


def test_random_states_survive_a_checkpoint(device):
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    torch.save(random_states(rng, device), buffer)
    drawn = (torch.randn(4, device=device).cpu(), torch.rand(2), rng.random())
    buffer.seek(0)
    saved = torch.load(buffer, map_location="cpu", weights_only=True)  # as a checkpoint
    restore_random_states(saved, rng, device)
    again = (torch.randn(4, device=device).cpu(), torch.rand(2), rng.random())
    assert torch.equal(drawn[0], again[0]) and torch.equal(drawn[1], again[1])
    assert drawn[2] == again[2]


# ------------------------------------------------------------------ VAE and SuperMix


def test_vae_trains_and_resumes_on_the_device(tmp_path, device, head):
    data, mask, affine = head
    images = [
        _save(data, affine, tmp_path / "a.nii.gz"),
        _save(data + 0.05, affine, tmp_path / "b.nii.gz"),
    ]
    masks = [_save(mask, affine, tmp_path / f"{n}_mask.nii.gz", np.uint8) for n in "ab"]
    settings = VaeTrainingSettings(
        architecture=TINY_VAE,
        crop_size=(16, 16, 8),
        learning_rate=1e-3,
        batch_size=2,
        iterations=3,
        crops_per_iteration=4,
        checkpoint_every=100,
        seed=5,
    )

    def train(name: str, on_step=None):
        folder = tmp_path / name
        return train_vae(
            images,
            masks,
            settings,
            model_path=folder / "vae.pt",
            loss_tsv=folder / "loss.tsv",
            curve_png=folder / "loss.png",
            checkpoint_dir=folder / "checkpoints",
            device=device,
            on_step=on_step,
        )

    straight = train("straight")
    assert straight["device"] == str(device) and straight["steps_this_run"] == 6
    with pytest.raises(Killed):
        train("resumed", on_step=_kill_at(5))
    resumed = train("resumed")
    assert resumed["resumed_from_step"] == 4 and resumed["steps_this_run"] == 2
    losses = pd.read_csv(tmp_path / "resumed" / "loss.tsv", sep="\t")
    assert np.isfinite(losses[["loss", "l1", "kl"]].to_numpy()).all()
    first, _ = load_vae(tmp_path / "straight" / "vae.pt")  # CPU tensors in the file
    again, _ = load_vae(tmp_path / "resumed" / "vae.pt", device)
    torch.manual_seed(settings.seed)
    initial = Vae3d(TINY_VAE).state_dict()
    _assert_resumed_like_straight(first.state_dict(), again.state_dict(), initial)


def test_reconstruction_on_the_device_matches_the_cpu(device, head):
    data, mask, affine = head
    torch.manual_seed(0)
    vae = Vae3d(TINY_VAE).eval()
    tiling = TilingSettings(tile_size=(16, 16, 8), overlap=4, margin=2)
    on_cpu = reconstruct_volume(
        vae, data, mask, affine, seed=1, delta=None, tiling=tiling, device=CPU, sample=False
    )
    on_device = reconstruct_volume(
        vae.to(device),
        data,
        mask,
        affine,
        seed=1,
        delta=None,
        tiling=tiling,
        device=device,
        sample=False,
    )
    assert on_device.dtype == np.float32 and on_device.shape == data.shape
    difference = float(np.abs(on_device - on_cpu).mean())
    assert difference <= 0.05 * float(np.abs(on_cpu).mean()) + 1e-4, difference
    perturbed = reconstruct_volume(
        vae, data, mask, affine, seed=1, delta=5.0, tiling=tiling, device=device
    )
    assert np.isfinite(perturbed).all()


def test_supermix_step_on_the_device(tmp_path, device, head):
    files = _pair_files(tmp_path / "pair", head)
    torch.manual_seed(0)
    model = save_vae(Vae3d(TINY_VAE), tmp_path / "vae.pt", training={})
    config = {
        "tau": 0.7,
        "n_segments": [20, 60],
        "delta": 5.0,
        "compactness": 0.1,
        "slic_iterations": 5,
        "tile_overlap": 4,
    }
    written = {}
    for name in ("cpu", DEVICE_NAME):
        folder = tmp_path / name.replace(":", "")
        outputs = {
            kind: [folder / f"s0_{kind}.nii.gz"] for kind in ("synthesised", "reference", "label")
        }
        outputs["record"] = [folder / "s0.json"]
        folder.mkdir(parents=True, exist_ok=True)
        supermix_step(
            {"baseline": files["baseline"], "followup": files["followup"]},
            [files["baseline_mask"], files["followup_mask"]],
            model,
            outputs,
            subject="gpu01",
            seed=7,
            settings=supermix_settings(config),
            tiling=tiling_settings((16, 16, 8), config),
            device=name,
            threads=1,
        )
        written[name] = {
            kind: np.asarray(nib.load(paths[0]).dataobj)
            for kind, paths in outputs.items()
            if kind != "record"
        }
        written[name]["record"] = json.loads(outputs["record"][0].read_text())
    cpu, gpu = written["cpu"], written[DEVICE_NAME]
    # SLIC and the random draws do not depend on the device: the same voxels change.
    assert np.array_equal(cpu["label"], gpu["label"]) and gpu["label"].any()
    source = np.asarray(nib.load(files[gpu["record"]["synthesised_timepoint"]]).dataobj)
    changed = gpu["label"] > 0
    np.testing.assert_array_equal(gpu["synthesised"][~changed], source[~changed])
    inside = np.abs(gpu["synthesised"][changed] - cpu["synthesised"][changed]).mean()
    assert np.isfinite(gpu["synthesised"]).all() and inside <= 0.05, inside


# ------------------------------------------------------------------ detector


def _samples(folder: Path, head) -> list[TrainingSample]:
    files = _pair_files(folder, head)
    return [TrainingSample(files["baseline"], files["followup"], files["label"])]


def test_detector_fine_tunes_with_validation_on_the_device(tmp_path, device, head):
    """Starts from the shipped model, scores a validation pair every iteration with the
    network on the device, keeps the best weights (copied to the CPU) and the last."""
    samples = _samples(tmp_path / "pair", head)
    start, _ = load_detector(resolve_model(SHIPPED))
    settings = DetectorTrainingSettings(
        architecture=start.architecture,
        iterations=2,
        pairs_per_iteration=4,
        patch_size=(16, 16, 16),
        foreground_share=1.0,
        checkpoint_every=100,
        validate_every=1,
        seed=3,
        learning_rate=1e-3,
    )
    data, mask, affine = head
    seen = []

    def validate(network, where):
        seen.append((next(network.parameters()).device.type, network.training))
        probability = predict_probability(
            network, data, data, mask, affine, InferenceSettings(), device=where
        )
        assert np.isfinite(probability).all()
        score = 1.0 - float(probability.mean())
        return {
            "val_f1": score,
            "val_ltpr": score,
            "val_ppv": score,
            "val_kappa": 0.1,
            "val_fp_nochange": 0.0,
        }

    summary = train_detector(
        samples,
        settings,
        model_path=tmp_path / "model.pt",
        log_tsv=tmp_path / "log.tsv",
        curve_png=tmp_path / "curve.png",
        checkpoint_dir=tmp_path / "checkpoints",
        device=device,
        metadata={"preprocessing": default_preprocessing()},
        validate=validate,
        last_model_path=tmp_path / "model_last.pt",
        initial_model=resolve_model(SHIPPED),
    )
    assert seen == [(device.type, False)] * 2
    assert summary["selected"]["by"] == "validation" and summary["device"] == str(device)
    log = pd.read_csv(tmp_path / "log.tsv", sep="\t")
    assert np.isfinite(log[["loss", "loss_final", "val_f1"]].to_numpy()).all()
    raw = torch.load(tmp_path / "model.pt", weights_only=True)  # tensors where saved
    assert {t.device.type for t in raw["state_dict"].values()} == {"cpu"}
    best, _ = load_detector(tmp_path / "model.pt", device)
    last, _ = load_detector(tmp_path / "model_last.pt")
    assert next(best.parameters()).device.type == device.type
    assert best.architecture == last.architecture == start.architecture


def test_detector_training_resumes_on_the_device(tmp_path, device, head):
    samples = _samples(tmp_path / "pair", head)
    settings = DetectorTrainingSettings(
        architecture=DetectorArchitecture(channels=(8, 16)),
        iterations=3,
        pairs_per_iteration=4,
        patch_size=(16, 16, 16),
        checkpoint_every=100,
        seed=5,
        learning_rate=1e-3,
    )

    def train(name: str, on_step=None):
        folder = tmp_path / name
        return train_detector(
            samples,
            settings,
            model_path=folder / "model.pt",
            log_tsv=folder / "log.tsv",
            curve_png=folder / "curve.png",
            checkpoint_dir=folder / "checkpoints",
            device=device,
            metadata={"preprocessing": default_preprocessing()},
            on_step=on_step,
        )

    train("straight")
    with pytest.raises(Killed):
        train("resumed", on_step=_kill_at(5))
    resumed = train("resumed")
    assert resumed["resumed_from_step"] == 4 and resumed["steps_this_run"] == 2
    first, _ = load_detector(tmp_path / "straight" / "model.pt")
    again, _ = load_detector(tmp_path / "resumed" / "model.pt")
    torch.manual_seed(settings.seed)
    initial = ChangeDetector(settings.architecture).state_dict()
    _assert_resumed_like_straight(first.state_dict(), again.state_dict(), initial)


def test_prediction_on_the_device_matches_the_cpu(tmp_path, device, head):
    files = _pair_files(tmp_path / "pair", head)
    data, mask, affine = head
    followup = np.asarray(nib.load(files["followup"]).dataobj, dtype=np.float32)
    settings = InferenceSettings()
    models = {
        where: [
            load_detector(resolve_model(name), where)[0] for name in (SHIPPED, "real-lesions-v0")
        ]
        for where in (CPU, device)
    }
    for ensemble in (False, True):
        pick = slice(None) if ensemble else slice(0, 1)
        on_cpu = predict_probability(
            models[CPU][pick], data, followup, mask, affine, settings, device=CPU
        )
        on_device = predict_probability(
            models[device][pick], data, followup, mask, affine, settings, device=device
        )
        assert on_device.dtype == np.float32 and np.isfinite(on_device).all()
        difference = np.abs(on_device - on_cpu)
        assert difference.max() <= 0.1 and difference.mean() <= 0.005, (
            ensemble,
            difference.max(),
            difference.mean(),
        )

    outputs = prediction_paths(str(tmp_path / "predict"), "gpu01")
    record = predict_pair_step(
        baseline=files["baseline"],
        followup=files["followup"],
        masks=[files["baseline_mask"], files["followup_mask"]],
        native_followup=files["followup"],
        model=resolve_model(SHIPPED),
        outputs=outputs,
        subject="gpu01",
        settings=settings,
        device=DEVICE_NAME,
        threads=1,
    )
    assert record["device"] == str(device)
    for key, path in outputs.items():
        assert Path(path).is_file(), key
