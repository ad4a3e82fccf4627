"""Where and how the networks run: device choice, bf16 autocast on CUDA, CPU threads.

The VAE and the detector run on CUDA when the config asks for it and on CPU
otherwise (the demo, CI, laptops), so every training and inference path goes
through these helpers.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch


class DeviceError(RuntimeError):
    """The configured device cannot be used on this machine."""


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N`` as a :class:`torch.device`, or a clear error."""
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {name!r} was requested (config key `device`) but PyTorch sees no "
                "CUDA GPU here; set `device: cpu` or run the job on a GPU node"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {name!r}: only {torch.cuda.device_count()} GPU(s) are visible"
            )
    elif device.type != "cpu":
        raise DeviceError(f"device {name!r} is not supported (use cpu, cuda or cuda:N)")
    return device


def autocast(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """bf16 autocast on CUDA (Hopper/Ampere run it at full speed); plain float32 on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def cpu_threads(threads: int | None, device: torch.device | None = None) -> Iterator[None]:
    """Use ``threads`` intra-op threads (the job's Snakemake ``threads``) for a block.

    Nothing changes when the work runs on a GPU (``device`` not CPU).
    """
    if not threads or (device is not None and device.type != "cpu"):
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def flush_denormals() -> None:
    """Treat denormal floats as zero in this process, before any parallel work starts.

    Networks produce denormals in large empty backgrounds (HD-BET: 25x slower on CPU).
    The flag is per thread and CPU worker threads copy it when they are created, so
    it must be set before the first parallel operation: thread pools made earlier keep
    computing with denormals.
    """
    torch.set_flush_denormal(True)


def job_threads() -> int:
    """Threads granted to this process (CPU affinity), for scripts run outside Snakemake."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
