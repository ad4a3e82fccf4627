"""The detector's model file: weights plus everything needed to use them on a new pair.

A model file carries the architecture, the training summary, the workflow config
it was trained with (notably the preprocessing parameters, which a new pair must
go through identically) and the package version. Only tensors and plain values
are stored, so loading uses ``torch.load(weights_only=True)`` and never runs code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from mschange import __version__
from mschange.detection.network import ChangeDetector, DetectorArchitecture
from mschange.io import atomic_path

MODEL_KIND = "mschange-change-detector"


def save_detector(model: ChangeDetector, path: str | os.PathLike[str], *,
                  training: dict[str, Any], metadata: dict[str, Any]) -> Path:
    """Write the model file atomically. ``metadata``: at least ``preprocessing``."""
    payload = {
        "kind": MODEL_KIND,
        "package_version": __version__,
        "architecture": model.architecture.as_dict(),
        "training": training,
        **metadata,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_detector(path: str | os.PathLike[str], device: torch.device | str = "cpu"
                  ) -> tuple[ChangeDetector, dict[str, Any]]:
    """The model (eval mode, on ``device``) and the file's other contents."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"model file {str(path)!r} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file
        raise ValueError(f"{path} is not a readable mschange model file ({error})") from None
    if not isinstance(payload, dict) or payload.get("kind") != MODEL_KIND:
        raise ValueError(f"{path} is not an mschange change-detector model file")
    model = ChangeDetector(DetectorArchitecture.from_dict(payload["architecture"]))
    model.load_state_dict(payload["state_dict"])
    model.to(device).eval()
    return model, {k: v for k, v in payload.items() if k != "state_dict"}
