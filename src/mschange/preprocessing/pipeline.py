"""The preprocessing of one pair, defined once (To et al., sec. 3.1).

:data:`STEPS` lists the steps in order, each the name of its workflow rule (one rule per
step in ``rules/preprocess.smk``) and whether it runs once per time point or once per
pair. :func:`plan_pair` turns them into the calls of :mod:`mschange.preprocessing.steps`
for one pair, with every path from :mod:`mschange.layout`; ``mschange predict``, the
preprocessing benchmark and the real-data tests run that plan, and the QC table, the
status plan and the workflow's step lists read :data:`STEPS`. Kept free of heavy
imports: the workflow reads it while building the job graph.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mschange.layout import (
    PREPROC_DIR,
    TIMEPOINTS,
    brain_on_followup_grid,
    registration_files,
    timepoint_files,
)

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class Step:
    """One preprocessing step: its rule (and benchmark folder) and what it does."""

    rule: str
    per_timepoint: bool
    function: str  # in mschange.preprocessing.steps
    does: str  # for progress lines: "<does> the baseline"


STEPS = (
    Step("resample_isotropic", True, "resample_step", "resampling"),
    Step("skullstrip_hdbet", True, "skullstrip_step", "skull stripping (HD-BET)"),
    Step(
        "register_baseline_to_followup",
        False,
        "register_step",
        "registering the baseline onto the follow-up (ANTs rigid)",
    ),
    Step("correct_bias_n4", True, "n4_step", "N4 bias correction of"),
    Step("normalize_intensity", True, "normalize_step", "intensity normalisation of"),
)
STEP_RULES = [step.rule for step in STEPS]
PER_TIMEPOINT_RULES = [step.rule for step in STEPS if step.per_timepoint]


@dataclass(frozen=True)
class StepCall:
    """One call of a step function: which step, for which time point (None: the pair),
    and its keyword arguments."""

    step: Step
    tp: str | None
    kwargs: dict[str, Any]

    @property
    def label(self) -> str:
        return self.step.does if self.tp is None else f"{self.step.does} the {self.tp}"

    def run(self) -> None:
        from mschange.preprocessing import steps

        getattr(steps, self.step.function)(**self.kwargs)


def plan_pair(
    raw: Mapping[str, PathLike],
    *,
    subject: str,
    settings: Mapping[str, Any],
    folder: str = PREPROC_DIR,
    seed: int = 1,
    device: str = "cpu",
    threads: int | None = None,
    registration_threads: int | None = None,
) -> list[StepCall]:
    """Every step call that preprocesses the raw scans ``raw`` (``baseline``,
    ``followup``) of one pair into ``folder``, as the workflow's rules do; ``settings``:
    the config's (or a model file's) ``preprocessing`` section. Missing speed settings
    (``registration.threads``, ``sampling_points``) come from the schema."""
    from mschange.config import schema_default

    files = {tp: timepoint_files(subject, tp, folder) for tp in TIMEPOINTS}
    on_followup = {tp: brain_on_followup_grid(tp, subject, folder) for tp in TIMEPOINTS}
    moved = registration_files(subject, folder)
    registration = {
        key: settings["registration"].get(key, schema_default("preprocessing", "registration", key))
        for key in ("threads", "sampling_points")
    }
    arguments = {
        "resample_isotropic": lambda tp: {
            "scan": raw[tp],
            "output": files[tp]["resampled"],
            "resolution_mm": settings["resolution_mm"],
            "order": settings["interpolation_order"],
        },
        "skullstrip_hdbet": lambda tp: {
            "scan": files[tp]["resampled"],
            "brain_output": files[tp]["brain"],
            "mask_output": files[tp]["brain_mask"],
            "mode": settings["skullstrip"]["mode"],
            "tta": settings["skullstrip"]["tta"],
            "device": device,
            "threads": threads,
            "source": raw[tp],
        },
        "register_baseline_to_followup": lambda tp: {
            "followup_brain": files["followup"]["brain"],
            "baseline_brain": files["baseline"]["brain"],
            "baseline_mask": files["baseline"]["brain_mask"],
            "transform_output": moved["transform"],
            "moved_brain_output": moved["brain"],
            "moved_mask_output": moved["mask"],
            "transform": settings["registration"]["transform"],
            "sampling_points": registration["sampling_points"],
            "seed": seed,
            "threads": registration_threads or registration["threads"],
        },
        "correct_bias_n4": lambda tp: {
            "brain": on_followup[tp]["brain"],
            "mask": on_followup[tp]["mask"],
            "output": files[tp]["n4"],
            "threads": threads,
            **settings["n4"],
        },
        "normalize_intensity": lambda tp: {
            "brain": files[tp]["n4"],
            "mask": on_followup[tp]["mask"],
            "output": files[tp]["preproc"],
            **settings["normalize"],
        },
    }
    return [
        StepCall(step, tp, {**arguments[step.rule](tp), "subject": subject})
        for step in STEPS
        for tp in (TIMEPOINTS if step.per_timepoint else (None,))
    ]
