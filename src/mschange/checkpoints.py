"""Training checkpoints that survive a walltime kill, and refuse to mix configurations.

A training job keeps its latest state (weights, optimiser, step, random states) in
a folder Snakemake does not manage, so that a rerun after a kill or a crash picks
up where it stopped. The folder also holds the fingerprint of the run (settings and
inputs); a rerun whose fingerprint differs is refused instead of silently mixing
two configurations. A finished training removes its checkpoints.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch

from mschange.io import atomic_path

log = logging.getLogger(__name__)

STATE_FILE = "last.pt"
FINGERPRINT_FILE = "fingerprint.json"


class CheckpointMismatch(RuntimeError):
    """A checkpoint exists but was written by a run with other settings or inputs."""


class TrainingInterrupted(RuntimeError):
    """Training stopped on a signal after saving a checkpoint; a rerun resumes."""


def fingerprint_of_files(paths: list[str]) -> list[list[Any]]:
    """Path, size and modification time of each input: a rerun on changed inputs starts over."""
    rows: list[list[Any]] = []
    for path in paths:
        stat = os.stat(path)
        rows.append([str(path), stat.st_size, stat.st_mtime_ns])
    return rows


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    lines: list[str] = []
    for key in keys:
        where = f"{prefix}{key}"
        before, after = old.get(key, "(absent)"), new.get(key, "(absent)")
        if isinstance(before, dict) and isinstance(after, dict):
            lines += _differences(before, after, prefix=f"{where}.")
        elif before != after:
            shown_before = json.dumps(before)[:120]
            shown_after = json.dumps(after)[:120]
            lines.append(f"{where}: {shown_before} -> {shown_after}")
    return lines


class CheckpointFolder:
    """The latest training state of one run, in ``folder``, tagged with its fingerprint."""

    def __init__(self, folder: str | os.PathLike[str], fingerprint: dict[str, Any]) -> None:
        self.folder = Path(folder)
        # Round-trip through JSON so tuples and lists compare equal to what was stored.
        self.fingerprint: dict[str, Any] = json.loads(json.dumps(fingerprint))

    @property
    def state_path(self) -> Path:
        return self.folder / STATE_FILE

    def load(self) -> dict[str, Any] | None:
        """The saved state, ``None`` when there is none; raise if it belongs to another run."""
        if not self.state_path.is_file():
            return None
        stored_path = self.folder / FINGERPRINT_FILE
        stored = json.loads(stored_path.read_text()) if stored_path.is_file() else {}
        if stored != self.fingerprint:
            changes = "\n".join(f"    {line}" for line in _differences(stored, self.fingerprint))
            raise CheckpointMismatch(
                f"the checkpoint in {self.folder} was written by a training run with other "
                f"settings or inputs; refusing to resume across the change:\n{changes}\n"
                f"Delete {self.folder} to start this training from scratch."
            )
        state: dict[str, Any] = torch.load(self.state_path, map_location="cpu", weights_only=True)
        return state

    def save(self, state: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.folder / FINGERPRINT_FILE) as tmp:
            tmp.write_text(json.dumps(self.fingerprint, indent=1))
        with atomic_path(self.state_path) as tmp:
            torch.save(state, tmp)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def random_states(rng: np.random.Generator, device: torch.device) -> dict[str, Any]:
    """NumPy, torch and (on CUDA) GPU random states, for a checkpoint."""
    states: dict[str, Any] = {
        "numpy_rng": json.dumps(rng.bit_generator.state),
        "torch_rng": torch.get_rng_state(),
    }
    if device.type == "cuda":
        states["cuda_rng"] = torch.cuda.get_rng_state(device)
    return states


def restore_random_states(
    saved: dict[str, Any], rng: np.random.Generator, device: torch.device
) -> None:
    """Undo :func:`random_states`, so a resumed run draws what the first one would have."""
    rng.bit_generator.state = json.loads(saved["numpy_rng"])
    torch.set_rng_state(saved["torch_rng"])
    if device.type == "cuda" and "cuda_rng" in saved:
        torch.cuda.set_rng_state(saved["cuda_rng"], device)


class StopRequest:
    """Set when SIGTERM or SIGINT arrives, so the loop can checkpoint before exiting.

    SLURM sends SIGTERM ahead of the walltime kill; Snakemake sends it on Ctrl-C.
    """

    def __init__(self) -> None:
        self.signal_number: int | None = None

    def __bool__(self) -> bool:
        return self.signal_number is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signal_number = signum
        log.warning("received signal %d: saving a checkpoint, then stopping", signum)


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Catch SIGTERM/SIGINT for the block (main thread only; elsewhere nothing is caught)."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {sig: signal.signal(sig, request._handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
