"""The detector's model file: weights plus everything needed to use them on a new pair.

A model file carries the architecture, the training summary, the workflow config
it was trained with (notably the preprocessing parameters, which a new pair must
go through identically) and the package version. Only tensors and plain values
are stored, so loading uses ``torch.load(weights_only=True)`` and never runs code.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any

import torch

from mschange.config import load_schema
from mschange.detection.network import ChangeDetector, DetectorArchitecture
from mschange.model_files import ModelFileError, read_model_payload, save_model_file
from mschange.pretrained import SPEED_SETTINGS

MODEL_KIND = "mschange-change-detector"


def save_detector(
    model: ChangeDetector,
    path: str | os.PathLike[str],
    *,
    training: dict[str, Any],
    metadata: dict[str, Any],
) -> Path:
    """Write the model file atomically. ``metadata``: at least ``preprocessing``."""
    return save_model_file(
        model,
        path,
        MODEL_KIND,
        {"architecture": model.architecture.as_dict(), "training": training, **metadata},
    )


# Settings a model file may lack: they change speed, not what the network sees, and were
# added after the first models shipped.
OPTIONAL_PREPROCESSING = SPEED_SETTINGS


def _all_required(schema: dict[str, Any], path: tuple[str, ...] = ()) -> dict[str, Any]:
    """``schema`` with every property of every object required, except those in
    :data:`OPTIONAL_PREPROCESSING`: a model file must say exactly how its data was made."""
    strict = copy.deepcopy(schema)
    properties = strict.get("properties")
    if isinstance(properties, dict):
        optional = OPTIONAL_PREPROCESSING.get(path[-1], ()) if path else ()
        strict["required"] = [key for key in properties if key not in optional]
        strict["properties"] = {
            key: _all_required(value, (*path, key)) for key, value in properties.items()
        }
    return strict


def _schema_problems(value: Any, schema: dict[str, Any], where: str) -> list[str]:
    try:
        import jsonschema
    except ImportError:  # only outside an install (benchmarks/gpu_check.py on a bare GPU
        return []  # machine): the package's own dependencies include it
    problems = []
    for error in jsonschema.Draft202012Validator(schema).iter_errors(value):
        at = ".".join([where, *map(str, error.absolute_path)])
        problems.append(f"{at}: {error.message}")
    return problems


def check_payload(payload: Any) -> list[str]:
    """Every structural problem of a loaded model file (empty when it can be used)."""
    if not isinstance(payload, dict):
        return [f"holds a {type(payload).__name__}, not an mschange model"]
    if payload.get("kind") != MODEL_KIND:
        return [f"not an mschange change-detector model file (kind {payload.get('kind')!r})"]
    problems = [
        f"the key {key!r} is missing"
        for key in ("architecture", "preprocessing", "state_dict")
        if key not in payload
    ]
    config = load_schema("config")["properties"]
    if "preprocessing" in payload:
        problems += _schema_problems(
            payload["preprocessing"], _all_required(config["preprocessing"]), "preprocessing"
        )
    if payload.get("inference") is not None:
        inference = config["detector"]["properties"]["inference"]
        problems += _schema_problems(payload["inference"], inference, "inference")
        problems += [
            f"inference.{key}: {value} is not a finite number"
            for key, value in payload["inference"].items()
            if isinstance(value, float) and not math.isfinite(value)
        ]
    if "seed" in payload and (not isinstance(payload["seed"], int) or payload["seed"] < 0):
        problems.append(f"seed: {payload['seed']!r} is not a non-negative integer")
    architecture = payload.get("architecture")
    if architecture is not None:
        if not isinstance(architecture, dict):
            problems.append("architecture: not a mapping")
        else:
            unknown = sorted(set(architecture) - set(DetectorArchitecture.__dataclass_fields__))
            if unknown:
                problems.append(
                    f"architecture: unknown key(s) {unknown}; known: "
                    f"{sorted(DetectorArchitecture.__dataclass_fields__)}"
                )
            else:
                try:
                    DetectorArchitecture.from_dict(architecture)
                except (TypeError, ValueError) as error:
                    problems.append(f"architecture: {error}")
    state = payload.get("state_dict")
    if state is not None and not (
        isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    ):
        problems.append("state_dict: not a mapping of names to tensors")
    return problems


def read_model_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A model file's contents, checked whole (:func:`check_payload`); a problem is a
    :class:`ModelFileError` listing each one."""
    payload = read_model_payload(path)
    problems = check_payload(payload)
    if problems:
        raise ModelFileError(path, problems)
    checked: dict[str, Any] = payload
    return checked


def load_detector(
    path: str | os.PathLike[str], device: torch.device | str = "cpu"
) -> tuple[ChangeDetector, dict[str, Any]]:
    """The model (eval mode, on ``device``) and the file's other contents.

    The whole file is checked first (:func:`check_payload`): a problem is a
    :class:`ModelFileError` listing each one, raised before anything is built.
    """
    payload = read_model_file(path)
    model = ChangeDetector(DetectorArchitecture.from_dict(payload["architecture"]))
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as error:  # missing, unexpected or misshapen weights
        first = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)
        raise ModelFileError(path, [f"the weights do not fit the architecture ({first})"]) from None
    model.to(device).eval()
    return model, {k: v for k, v in payload.items() if k != "state_dict"}
