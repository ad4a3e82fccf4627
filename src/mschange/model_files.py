"""Tagged model files: a network's weights and plain values, written atomically, read safely.

Both networks, the change detector (:mod:`mschange.detection.modelfile`) and the VAE
(:mod:`mschange.synthesis.vae`), are stored as one ``torch.save`` of a dict: ``kind`` (what
the file holds), ``package_version``, the network's own fields and ``state_dict``. Only
tensors and plain values go in, so :func:`read_model_payload` loads with
``torch.load(weights_only=True)`` and never runs code; it says in the user's terms why a
file cannot be read (never torch's advice to load it unsafely).
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mschange import __version__
from mschange.io import atomic_path


def save_model_file(
    model: nn.Module, path: str | os.PathLike[str], kind: str, fields: dict[str, Any]
) -> Path:
    """Write ``{kind, package_version, **fields, state_dict}`` (weights on the CPU) to
    ``path`` atomically."""
    payload = {
        "kind": kind,
        "package_version": __version__,
        **fields,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


class ModelFileError(ValueError):
    """A model file that cannot be used; the message names the file and every problem."""

    def __init__(self, path: str | os.PathLike[str], problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"model file {str(path)!r}: " + "; ".join(problems))


def read_model_payload(path: str | os.PathLike[str]) -> Any:
    """The file's contents (tensors and plain values only), or :class:`ModelFileError`
    saying in the user's terms why not (never torch's advice to load unsafely)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file {str(path)!r} does not exist")
    if path.is_dir():
        inside = " (the model file inside it is model.pt)" if (path / "model.pt").is_file() else ""
        raise ModelFileError(path, [f"this is a folder, not a model file{inside}"])
    if path.stat().st_size == 0:
        raise ModelFileError(path, ["the file is empty"])
    if not zipfile.is_zipfile(path):
        raise ModelFileError(
            path,
            [
                "not a PyTorch model file (those are zip archives; this "
                "one is not: another format, or cut short)"
            ],
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "GLOBAL" in str(error):  # torch's safe unpickler met a class or function
            raise ModelFileError(
                path,
                [
                    "it holds Python objects other than tensors and plain values; mschange "
                    "refuses to load it, because loading such a file can run code it contains"
                ],
            ) from None
        raise ModelFileError(
            path, ["the file is damaged (its contents cannot be decoded)"]
        ) from None
    except Exception as error:  # a damaged archive: torch raises several types
        raise ModelFileError(
            path, [f"the file is damaged or cut short ({type(error).__name__})"]
        ) from None
