"""The resumable training loop (mschange.training_loop) and the tagged model files
(mschange.model_files), each test run on both trainers: the change detector and the VAE."""

from __future__ import annotations

import dataclasses
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from mschange.checkpoints import CheckpointMismatch, TrainingInterrupted
from mschange.detection import training as detector_training
from mschange.detection.loss import LossSettings
from mschange.detection.modelfile import MODEL_KIND, load_detector, save_detector
from mschange.detection.network import ChangeDetector, DetectorArchitecture
from mschange.detection.training import train_detector
from mschange.model_files import ModelFileError
from mschange.scancache import CACHE_FOLDER
from mschange.synthesis import vae_training
from mschange.synthesis.vae import VAE_KIND, Vae3d, load_vae, save_vae
from mschange.synthesis.vae_training import VaeTrainingSettings, train_vae

from .conftest import default_preprocessing, ellipsoid_phantom, oblique_affine
from .test_detection import RESUME_SETTINGS, Killed, _samples
from .test_synthesis import SHAPE, SPACING, TINY_ARCHITECTURE, _training_files

VAE_SETTINGS = VaeTrainingSettings(
    architecture=TINY_ARCHITECTURE,
    crop_size=(16, 16, 8),
    learning_rate=1e-3,
    batch_size=2,
    iterations=3,
    crops_per_iteration=4,
    checkpoint_every=100,
    seed=5,
)


def _vae_scans(tmp_path: Path) -> tuple[list[str], list[str]]:
    """Two textured phantom scans and their masks (test_synthesis' ``scan``, shifted)."""
    image, mask = ellipsoid_phantom(SHAPE, SPACING)
    texture = np.random.default_rng(3).normal(0.0, 0.05, SHAPE)
    data = (image / image.max() + texture * mask).astype(np.float32)
    return _training_files(tmp_path, (data, mask.astype(bool), oblique_affine(SPACING)))


@dataclass(frozen=True)
class Trainer:
    """One trainer as these tests drive it."""

    name: str
    settings: Any
    model_file: str
    log_file: str
    make_inputs: Callable[[Path], Any]
    first_input: Callable[[Any], str]
    run: Callable[..., dict[str, Any]]
    load: Callable[[Path], tuple[torch.nn.Module, dict[str, Any]]]
    changed: tuple[Any, str]  # other settings, and what the refusal names
    decoder: tuple[Any, str]  # (module, name) of what decodes a scan for the cache
    cache_files: int  # files in the scan cache after the first run
    check_resumed: Callable[[pd.DataFrame, dict[str, Any]], None]

    def train(
        self,
        tmp_path: Path,
        inputs: Any,
        name: str,
        settings: Any = None,
        on_step: Callable[[int, float], None] | None = None,
    ) -> dict[str, Any]:
        return self.run(tmp_path / name, inputs, settings or self.settings, on_step)


def _run_detector(folder, samples, settings, on_step):
    return train_detector(
        samples,
        settings,
        model_path=folder / "model.pt",
        log_tsv=folder / "log.tsv",
        curve_png=folder / "curve.png",
        checkpoint_dir=folder / "checkpoints",
        device=torch.device("cpu"),
        metadata={"preprocessing": default_preprocessing(2.0)},
        on_step=on_step,
    )


def _run_vae(folder, inputs, settings, on_step):
    images, masks = inputs
    return train_vae(
        images,
        masks,
        settings,
        model_path=folder / "vae.pt",
        loss_tsv=folder / "loss.tsv",
        curve_png=folder / "loss.png",
        checkpoint_dir=folder / "checkpoints",
        device=torch.device("cpu"),
        on_step=on_step,
    )


def _check_detector(log, metadata):
    assert log["learning_rate"].is_monotonic_decreasing
    assert metadata["preprocessing"] == default_preprocessing(2.0)
    assert metadata["training"]["settings"]["patch_size"] == [16, 16, 16]


def _check_vae(log, metadata):
    assert metadata["training"]["settings"]["crop_size"] == [16, 16, 8]
    assert metadata["architecture"]["channels"] == [4, 8]


TRAINERS = {
    "detector": Trainer(
        name="detector",
        settings=RESUME_SETTINGS,
        model_file="model.pt",
        log_file="log.tsv",
        make_inputs=_samples,
        first_input=lambda samples: samples[0].baseline,
        run=_run_detector,
        load=load_detector,
        changed=(dataclasses.replace(RESUME_SETTINGS, loss=LossSettings(l2=1e-4)), "l2"),
        decoder=(detector_training, "load_sample"),
        cache_files=10,  # per sample: its 4 arrays (.npy) and the entry (.json)
        check_resumed=_check_detector,
    ),
    "vae": Trainer(
        name="vae",
        settings=VAE_SETTINGS,
        model_file="vae.pt",
        log_file="loss.tsv",
        make_inputs=_vae_scans,
        first_input=lambda inputs: inputs[0][0],
        run=_run_vae,
        load=load_vae,
        changed=(
            dataclasses.replace(VAE_SETTINGS, learning_rate=5e-4),
            r"learning_rate: 0\.001 -> 0\.0005",
        ),
        decoder=(vae_training, "_load_scan"),
        cache_files=4,  # per scan: its crop region (.npy) and the entry (.json)
        check_resumed=_check_vae,
    ),
}


@pytest.fixture(params=sorted(TRAINERS))
def trainer(request) -> Trainer:
    return TRAINERS[request.param]


def _stop_at(step: int, how: str) -> Callable[[int, float], None]:
    """``on_step`` that kills the run (an exception, as a crash) or sends it SIGTERM."""

    def on_step(current: int, loss: float) -> None:
        if current == step:
            if how == "kill":
                raise Killed
            os.kill(os.getpid(), signal.SIGTERM)

    return on_step


def test_an_interrupted_training_resumes_to_the_same_weights(tmp_path, trainer):
    inputs = trainer.make_inputs(tmp_path)
    straight = trainer.train(tmp_path, inputs, "straight")
    assert straight["steps"] == 6
    assert straight["resumed_from_step"] == 0 and straight["steps_this_run"] == 6

    with pytest.raises(Killed):
        trainer.train(tmp_path, inputs, "resumed", on_step=_stop_at(5, "kill"))
    assert (tmp_path / "resumed" / "checkpoints" / "last.pt").is_file()
    assert not (tmp_path / "resumed" / trainer.model_file).exists()

    resumed = trainer.train(tmp_path, inputs, "resumed")
    # Checkpoints are written at each iteration's end (every 2 steps): step 4 survived.
    assert resumed["resumed_from_step"] == 4 and resumed["steps_this_run"] == 2
    assert not (tmp_path / "resumed" / "checkpoints").exists()  # cleared when done
    log = pd.read_csv(tmp_path / "resumed" / trainer.log_file, sep="\t")
    assert list(log["iteration"]) == [1, 2, 3] and list(log["step"]) == [2, 4, 6]
    # Optimiser and random states came back too: the weights equal an uninterrupted run's.
    first, _ = trainer.load(tmp_path / "straight" / trainer.model_file)
    again, metadata = trainer.load(tmp_path / "resumed" / trainer.model_file)
    for key, value in first.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    trainer.check_resumed(log, metadata)


def test_sigterm_checkpoints_then_stops_and_only_the_same_run_resumes(tmp_path, trainer):
    inputs = trainer.make_inputs(tmp_path)
    with pytest.raises(TrainingInterrupted, match="step 3"):
        trainer.train(tmp_path, inputs, "run", on_step=_stop_at(3, "sigterm"))
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    assert not (tmp_path / "run" / trainer.model_file).exists()
    # Other settings are another run: refused, naming what changed.
    changed, named = trainer.changed
    with pytest.raises(CheckpointMismatch, match=named):
        trainer.train(tmp_path, inputs, "run", changed)
    # Changed inputs are a different run too.
    first = Path(trainer.first_input(inputs))
    stat = first.stat()
    os.utime(first, ns=(1, 1))
    with pytest.raises(CheckpointMismatch, match="inputs"):
        trainer.train(tmp_path, inputs, "run")
    os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert trainer.train(tmp_path, inputs, "run")["resumed_from_step"] == 3


@pytest.mark.parametrize("how, resumed_from", [("kill", 2), ("sigterm", 3)])
def test_the_scan_cache_is_reused_on_resume_and_removed_when_done(
    tmp_path, trainer, monkeypatch, how, resumed_from
):
    inputs = trainer.make_inputs(tmp_path)
    cache = tmp_path / "run" / "checkpoints" / CACHE_FOLDER
    with pytest.raises(Killed if how == "kill" else TrainingInterrupted):
        trainer.train(tmp_path, inputs, "run", on_step=_stop_at(3, how))
    assert len(list(cache.glob("*.json"))) == 2  # one entry per sample or scan
    assert len(list(cache.iterdir())) == trainer.cache_files

    def no_decoding(*args):
        raise AssertionError("a scan was decoded again instead of read from the cache")

    monkeypatch.setattr(*trainer.decoder, no_decoding)
    resumed = trainer.train(tmp_path, inputs, "run")
    assert resumed["resumed_from_step"] == resumed_from
    assert not cache.exists() and not cache.parent.exists()  # gone with the checkpoints


# ------------------------------------------------------------------ model files


def _save_tiny(kind: str, path: Path) -> Path:
    if kind == "detector":
        return save_detector(
            ChangeDetector(DetectorArchitecture(channels=(8, 16))),
            path,
            training={"steps": 1},
            metadata={"preprocessing": default_preprocessing()},
        )
    return save_vae(Vae3d(TINY_ARCHITECTURE), path, training={"steps": 1})


@pytest.mark.parametrize("kind", ["detector", "vae"])
def test_both_model_files_are_tagged_and_read_safely(tmp_path, kind):
    load = load_detector if kind == "detector" else load_vae
    path = _save_tiny(kind, tmp_path / "model.pt")
    raw = torch.load(path, weights_only=True)  # plain values and tensors only
    assert raw["kind"] == (MODEL_KIND if kind == "detector" else VAE_KIND)
    assert list(raw)[:2] == ["kind", "package_version"] and list(raw)[-1] == "state_dict"
    assert all(value.device.type == "cpu" for value in raw["state_dict"].values())
    model, metadata = load(path)
    assert not model.training and metadata["training"] == {"steps": 1}

    damaged = bytearray(path.read_bytes())
    damaged[200:400] = bytes(200)  # the pickled values, inside an intact archive
    problems = {
        "empty.pt": (b"", "the file is empty"),
        "text.pt": (b"not a model", "not a PyTorch model file"),
        "cut.pt": (path.read_bytes()[:2000], "cut short"),
        "damaged.pt": (bytes(damaged), "the file is damaged"),
    }
    for name, (content, message) in problems.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ModelFileError, match=message):
            load(tmp_path / name)
    torch.save({"kind": raw["kind"], "evil": object()}, tmp_path / "code.pt")
    with pytest.raises(ModelFileError, match="can run code") as refused:
        load(tmp_path / "code.pt")
    assert "weights_only" not in str(refused.value)  # never torch's advice to load unsafely
    torch.save({"kind": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ModelFileError, match="not an mschange"):
        load(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load(tmp_path / "missing.pt")
