"""Detectors shipped with the package (``src/mschange/models/<name>/``), ready to use.

Each folder holds ``model.pt`` (an ordinary model file: weights, architecture,
preprocessing, the settings it was trained with, the data it saw), its training log
and curve, and a model card (``README.md``). The files live inside the package so that
every install (editable, wheel, the workflow's conda environments) carries them.

A shipped model file also stores the inference settings chosen for it on the
validation set (``inference``), which ``mschange predict`` uses unless told otherwise,
and the SHA-256 of every file it learned from (``data_fingerprints``).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mschange.io import atomic_path, file_sha256

if TYPE_CHECKING:
    from mschange.detection.inference import InferenceSettings

PathLike = str | os.PathLike[str]

# The model `mschange predict` uses without --model (models/<name>/).
DEFAULT_MODEL = "flair-lesions-v1"
# What a shipped model folder holds besides the card: the workflow's training outputs.
SHIPPED_FILES = ("model.pt", "training_log.tsv", "training_curve.png")


def models_folder() -> Path:
    return Path(str(resources.files("mschange") / "models"))


# Preprocessing settings that trade speed against run-to-run reproducibility or a
# fraction of a millimetre of registration, without changing what the network sees.
SPEED_SETTINGS = {"registration": ("threads", "sampling_points")}


def preprocessing_differences(model: PathLike, preprocessing: Mapping[str, Any]) -> list[str]:
    """Where a model file's preprocessing differs from ``preprocessing`` (a config's):
    a pair prepared otherwise is not what the network learned from. Speed settings
    (:data:`SPEED_SETTINGS`) do not count. The model file is checked whole first
    (:class:`~mschange.detection.modelfile.ModelFileError`)."""
    from mschange.detection.modelfile import read_model_file

    stored = read_model_file(model)["preprocessing"]

    def relevant(key: str, value: Any) -> Any:
        if isinstance(value, Mapping) and key in SPEED_SETTINGS:
            return {k: v for k, v in value.items() if k not in SPEED_SETTINGS[key]}
        return value

    return [
        f"{key}: the model's {stored.get(key)!r}, the config's {value!r}"
        for key, value in preprocessing.items()
        if relevant(key, stored.get(key)) != relevant(key, value)
    ]


def available_models() -> list[str]:
    folder = models_folder()
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if (p / "model.pt").is_file())


def resolve_model(model: PathLike | None) -> Path:
    """A model file: ``model`` itself when it is a file, else the shipped model of that
    name; the default shipped model when ``model`` is None."""
    if model is not None and Path(model).is_file():
        return Path(model)
    if (
        model is not None
        and Path(model).exists()
        and not (models_folder() / str(model) / "model.pt").is_file()
    ):
        return Path(model)  # a folder: the model file's check says what is wrong
    name = DEFAULT_MODEL if model is None else str(model)
    path = models_folder() / name / "model.pt"
    if path.is_file():
        return path
    shipped = ", ".join(available_models()) or "none"
    raise FileNotFoundError(
        f"no model file {str(name)!r}, and no shipped model of that name (shipped: {shipped})"
    )


def inference_for(
    metadata: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
) -> InferenceSettings:
    """Inference settings for a model file: the defaults (the paper's), then those
    stored in the file (chosen for it on the validation set), then ``overrides``."""
    from mschange.config import check_setting
    from mschange.detection.inference import InferenceSettings

    stored = dict(metadata.get("inference") or {})
    values = {**stored, **(overrides or {})}
    fields = {f.name for f in dataclasses.fields(InferenceSettings)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"unknown inference settings {unknown}; known: {sorted(fields)}")
    problems = [
        f"inference setting {key!r}: {problem}"
        for key, value in values.items()
        if (
            problem := check_setting(
                list(value) if isinstance(value, tuple) else value, "detector", "inference", key
            )
        )
    ]
    if problems:
        raise ValueError("; ".join(problems))
    for key in ("window", "mirror_axes"):
        if values.get(key) is not None:
            values[key] = tuple(int(v) for v in values[key])
    return dataclasses.replace(InferenceSettings(), **values)


def data_fingerprints(
    training_data: Mapping[str, Any], extra: Sequence[PathLike] = ()
) -> dict[str, str]:
    """SHA-256 of every scan of the training pairs (``training_data`` of a model file,
    paths relative to the working folder they were trained in) and of ``extra`` files."""
    paths = [
        path
        for scans in training_data.get("training_pairs", {}).values()
        for path in scans.values()
    ]
    return {str(path): file_sha256(path) for path in sorted({*map(str, paths), *map(str, extra)})}


def ship_model(
    trained: PathLike,
    name: str,
    *,
    inference: Mapping[str, Any],
    extra_data: Sequence[PathLike] = (),
    models: PathLike | None = None,
) -> Path:
    """Copy a workflow-trained detector folder (``results/detector/model-<m>/``, run
    from its working folder) into ``models/<name>/``, adding the chosen inference
    settings and the data fingerprints to the model file. Returns the new model file."""
    import torch

    from mschange.detection.modelfile import load_detector

    source = Path(trained)
    target = Path(models or models_folder()) / name
    target.mkdir(parents=True, exist_ok=True)
    payload = torch.load(source / "model.pt", map_location="cpu", weights_only=True)
    inference_for({"inference": inference})  # refuses unknown keys and bad values
    payload["inference"] = dict(inference)
    payload["name"] = name
    payload["data_fingerprints"] = data_fingerprints(payload.get("training_data", {}), extra_data)
    with atomic_path(target / "model.pt") as tmp:
        torch.save(payload, tmp)
    for file in SHIPPED_FILES[1:]:
        shutil.copyfile(source / file, target / file)
    load_detector(target / "model.pt")  # the shipped file loads
    return target / "model.pt"
