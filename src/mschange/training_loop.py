"""The resumable training loop both networks share (the change detector and the VAE).

A run keeps its state in a checkpoint folder beside its outputs
(:mod:`mschange.checkpoints`) and, rerun after a kill, resumes to the weights an
uninterrupted run would have reached: weights, optimiser, random states and the log's
rows are saved at the end of every iteration but the last, every ``checkpoint_every``
steps, and when SIGTERM or SIGINT arrives (training then stops with
:class:`~mschange.checkpoints.TrainingInterrupted`). A resumed run restarts the current
iteration's statistics, not its steps. The training scans are decoded once into a
:class:`~mschange.scancache.ScanCache` in that folder, which goes with the checkpoints
when training ends.

:class:`ResumableTraining` owns that loop, as nnU-Net's trainer base class does: seeding,
resuming, the optimiser step, the per-iteration rows of the log, the checkpoint cadence,
the signal stop, the summary, and the log table with its curve. A trainer subclasses it
and supplies its network, its sampler, the loss of one step, the values its rows add,
and its model files.
"""

from __future__ import annotations

import json
import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from torch import nn

from mschange.checkpoints import (
    CheckpointFolder,
    TrainingInterrupted,
    fingerprint_of_files,
    random_states,
    restore_random_states,
    stop_on_signals,
)
from mschange.io import atomic_path
from mschange.scancache import CACHE_FOLDER, ScanCache


class LoopSettings(Protocol):
    """What the loop reads from a trainer's settings (a frozen dataclass)."""

    @property
    def seed(self) -> int: ...
    @property
    def learning_rate(self) -> float: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def iterations(self) -> int: ...
    @property
    def checkpoint_every(self) -> int: ...
    @property
    def steps_per_iteration(self) -> int: ...
    @property
    def total_steps(self) -> int: ...
    def as_dict(self) -> dict[str, Any]: ...


SettingsT = TypeVar("SettingsT", bound=LoopSettings)
ModelT = TypeVar("ModelT", bound=nn.Module)

# Draws one more panel of the training curve on the axis it is given.
Panel = Callable[[Axes], None]


def write_log_and_curve(
    rows: list[dict[str, Any]],
    columns: list[str],
    log_tsv: str | os.PathLike[str],
    curve_png: str | os.PathLike[str],
    *,
    title: str,
    second_curve: tuple[str, str] | None = None,
    log_scale: bool = False,
    na_rep: str = "",
    more: Callable[[pd.DataFrame], Panel | None] | None = None,
) -> None:
    """The log table (one row per iteration) and its curve: the mean loss per iteration,
    with ``second_curve`` (column, label) beside it, and to the right the panel that
    ``more(table)`` gives, if any."""
    table = pd.DataFrame(rows, columns=columns)
    with atomic_path(log_tsv) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.6g", na_rep=na_rep)
    panel = None if more is None else more(table)
    panels = 2 if panel is not None else 1
    figure, axes = plt.subplots(1, panels, figsize=(6 * panels, 3.5), dpi=100, squeeze=False)
    axis = axes[0, 0]
    axis.plot(table["iteration"], table["loss"], marker="o", label="total")
    if second_curve is not None:
        column, label = second_curve
        axis.plot(table["iteration"], table[column], marker=".", label=label)
    axis.set_xlabel("iteration")
    axis.set_ylabel("loss (mean per iteration)")
    if log_scale and (table["loss"] > 0).all():
        axis.set_yscale("log")
    axis.set_title(title)
    axis.legend()
    if panel is not None:
        panel(axes[0, 1])
    figure.tight_layout()
    with atomic_path(curve_png) as tmp:
        figure.savefig(tmp)
    plt.close(figure)


class ResumableTraining(ABC, Generic[SettingsT, ModelT]):
    """One training run; :meth:`run` trains (or resumes) and writes its outputs.

    A subclass sets :attr:`name`, :attr:`unit`, :attr:`columns` and :attr:`logger` and
    supplies the hooks below. While :meth:`run` runs, ``self.model``, ``self.optimiser``,
    ``self.rng`` (NumPy, checkpointed) and ``self.rows`` (the log's rows) are set.
    """

    name: str  # in log messages: "detector", "VAE"
    unit: str  # what a batch holds ("pairs", "crops"): the count column
    columns: list[str]  # the log table's columns
    logger: logging.Logger  # the trainer's module logger
    second_curve: tuple[str, str] | None = None  # (column, label) plotted beside the loss
    log_scale = False  # plot the loss on a log scale (when all positive)
    na_rep = ""  # how the log table writes a missing value

    model: ModelT
    optimiser: torch.optim.Optimizer
    rng: np.random.Generator

    def __init__(
        self,
        settings: SettingsT,
        *,
        inputs: Sequence[str],
        checkpoint_dir: str | os.PathLike[str],
        log_tsv: str | os.PathLike[str],
        curve_png: str | os.PathLike[str],
        device: torch.device,
        on_step: Callable[[int, float], None] | None = None,
    ) -> None:
        self.settings = settings
        self.inputs = list(inputs)
        self.checkpoint_dir = checkpoint_dir
        self.log_tsv, self.curve_png = log_tsv, curve_png
        self.device = device
        self.on_step = on_step
        self.rows: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ hooks

    @abstractmethod
    def build_model(self) -> ModelT:
        """The network with its starting weights (``torch`` is seeded just before)."""

    @property
    @abstractmethod
    def samples_per_iteration(self) -> int:
        """Samples per iteration, for the log (``pairs_per_iteration``, ...)."""

    @abstractmethod
    def load_data(self, cache: ScanCache) -> None:
        """Make the sampler, drawing from ``self.rng``, its scans decoded into ``cache``."""

    @abstractmethod
    def loss(self, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Step ``step`` (from 1) before the optimiser's: one batch's loss, and the other
        columns averaged over the iteration (each a mean per sample of the batch)."""

    def iteration_values(self) -> dict[str, Any]:
        """Columns of the row at the end of an iteration beside the averaged ones."""
        return {}

    @abstractmethod
    def end_of_iteration(self, row: dict[str, Any]) -> None:
        """Log the iteration's row (validation may add columns to it), before the
        checkpoint."""

    def state(self) -> dict[str, Any]:
        """More of the trainer's state for the checkpoint (tensors and plain values)."""
        return {}

    def restore(self, saved: dict[str, Any]) -> None:
        """Undo :meth:`state` from a checkpoint (after :meth:`load_data`)."""

    def summary_values(self) -> dict[str, Any]:
        """The summary's entries after the shared ones."""
        return {}

    def curve_title(self) -> str:
        return self.name

    def more_curves(self, table: pd.DataFrame) -> Panel | None:
        """A second panel of the training curve, or ``None``."""
        return None

    @abstractmethod
    def save_models(self, summary: dict[str, Any]) -> None:
        """Write the model file(s) at the end of training."""

    # ------------------------------------------------------------------ the loop

    def run(self) -> dict[str, Any]:
        """Train (or resume), write the log, its curve and the model files; the summary."""
        settings, device, log = self.settings, self.device, self.logger
        checkpoints = CheckpointFolder(
            self.checkpoint_dir,
            {"settings": settings.as_dict(), "inputs": fingerprint_of_files(self.inputs)},
        )
        saved = checkpoints.load()

        torch.manual_seed(settings.seed)  # before building: the initial weights come from it
        self.model = self.build_model()
        self.optimiser = torch.optim.Adam(self.model.parameters(), lr=settings.learning_rate)
        self.rng = np.random.default_rng(settings.seed)
        start_step, elapsed_before = 0, 0.0
        if saved is not None:
            self.model.load_state_dict(saved["model"])
            self.optimiser.load_state_dict(saved["optimiser"])
            restore_random_states(saved, self.rng, device)
            self.rows = json.loads(saved["rows"])
            start_step, elapsed_before = int(saved["step"]), float(saved["elapsed_s"])
            log.info(
                f"resuming {self.name} training from the checkpoint at step %d of %d (%s)",
                start_step,
                settings.total_steps,
                checkpoints.state_path,
            )
        else:
            log.info(
                f"training the {self.name} from scratch: %d steps (%d iterations x %d "
                f"{self.unit}, batch %d) on %s",
                settings.total_steps,
                settings.iterations,
                self.samples_per_iteration,
                settings.batch_size,
                device,
            )
        self.load_data(ScanCache(Path(self.checkpoint_dir) / CACHE_FOLDER))
        if saved is not None:
            self.restore(saved)

        def checkpoint(step: int, elapsed: float) -> None:
            checkpoints.save(
                {
                    "model": self.model.state_dict(),
                    "optimiser": self.optimiser.state_dict(),
                    "step": step,
                    "elapsed_s": elapsed,
                    "rows": json.dumps(self.rows),
                    **random_states(self.rng, device),
                    **self.state(),
                }
            )

        self.model.train()
        run_started = iteration_started = time.perf_counter()
        sums: dict[str, float] = {"loss": 0.0}
        count = 0
        step = start_step
        with stop_on_signals() as stop:
            for step in range(start_step + 1, settings.total_steps + 1):
                loss, parts = self.loss(step)
                self.optimiser.zero_grad(set_to_none=True)
                loss.backward()
                self.optimiser.step()
                value = float(loss.detach())
                sums["loss"] += value * settings.batch_size
                for key, part in parts.items():
                    sums[key] = sums.get(key, 0.0) + part * settings.batch_size
                count += settings.batch_size
                if self.on_step is not None:
                    self.on_step(step, value)
                elapsed = elapsed_before + time.perf_counter() - run_started
                at_boundary = step % settings.steps_per_iteration == 0
                if at_boundary:
                    self.rows.append(
                        {
                            "iteration": step // settings.steps_per_iteration,
                            "step": step,
                            self.unit: count,
                            **{key: total / count for key, total in sums.items()},
                            **self.iteration_values(),
                            f"{self.unit}_per_second": count
                            / (time.perf_counter() - iteration_started),
                            "elapsed_s": elapsed,
                        }
                    )
                    self.end_of_iteration(self.rows[-1])
                    sums, count = {"loss": 0.0}, 0
                    iteration_started = time.perf_counter()
                if (
                    stop
                    or (at_boundary and step < settings.total_steps)
                    or step % settings.checkpoint_every == 0
                ):
                    checkpoint(step, elapsed)
                if stop:
                    raise TrainingInterrupted(
                        f"stopped by signal {stop.signal_number} at step {step}; the "
                        f"checkpoint in {self.checkpoint_dir} resumes it on the next run"
                    )

        elapsed = elapsed_before + time.perf_counter() - run_started
        summary = {
            "settings": settings.as_dict(),
            "steps": settings.total_steps,
            "resumed_from_step": start_step,
            "steps_this_run": step - start_step,
            "final_loss": self.rows[-1]["loss"] if self.rows else None,
            "elapsed_s": elapsed,
            "device": str(device),
            **self.summary_values(),
        }
        write_log_and_curve(
            self.rows,
            self.columns,
            self.log_tsv,
            self.curve_png,
            title=self.curve_title(),
            second_curve=self.second_curve,
            log_scale=self.log_scale,
            na_rep=self.na_rep,
            more=self.more_curves,
        )
        self.save_models(summary)
        checkpoints.clear()
        return summary
