"""Which pairs of the cohort finished, and where those that did not stopped.

The workflow describes what each pair goes through as a list of stages, each made of
rules given by their output and log templates (:class:`StagePlan`). The status of a
pair is then read off the disk: a stage is done when every output of its jobs exists;
a job whose outputs are missing has failed when its log ends with a failure (every
step logs ``<step>: started``, then ``finished in`` or ``failed: <error>``), was
interrupted when its log ends with ``started`` (a walltime or memory kill), and is
pending when it has no log.
"""

from __future__ import annotations

import itertools
import os
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mschange.io import atomic_path

STATUS_COLUMNS = [
    "subject",
    "split",
    "change",
    "state",
    "stage_reached",
    "next_stage",
    "failed_rule",
    "log",
    "error",
]
# Stopped before the end: how a stage that is not done is described, worst first.
STATES = ("failed", "interrupted", "pending", "complete")
_STEP_EVENT = re.compile(
    r"^\S+ \S+ \w+ \S+: (?P<step>[\w-]+): (?P<event>started|finished in"
    r"|failed: (?P<error>.*))"
)


@dataclass(frozen=True)
class RulePlan:
    """One rule of a stage: output and log templates (Snakemake wildcards), and the role
    of the pairs it runs for (e.g. ``test``; every pair has the role ``all``)."""

    rule: str
    outputs: tuple[str, ...]
    log: str
    role: str = "all"


@dataclass(frozen=True)
class StagePlan:
    """A stage (e.g. ``preprocessed``): done for a pair when its rules' jobs are."""

    stage: str
    rules: tuple[RulePlan, ...]


@dataclass
class PairStatus:
    subject: str
    split: str
    change: str
    state: str = "complete"
    stage_reached: str = ""
    next_stage: str = ""
    failed_rule: str = ""
    log: str = ""
    error: str = ""


def template_wildcards(template: str) -> list[str]:
    """The wildcard names of a template, sorted."""
    return sorted({name for _, name, _, _ in string.Formatter().parse(template) if name})


def expand_template(
    template: str, fixed: Mapping[str, str], wildcard_values: Mapping[str, Sequence[str]]
) -> list[str]:
    """Every path a template stands for: ``fixed`` wildcards set, the others over their values."""
    others = [name for name in template_wildcards(template) if name not in fixed]
    paths = []
    for values in itertools.product(*(wildcard_values[name] for name in others)):
        paths.append(template.format(**fixed, **dict(zip(others, values, strict=True))))
    return paths


def rule_jobs(
    rule: RulePlan, subject: str, wildcard_values: Mapping[str, Sequence[str]]
) -> list[tuple[str, list[str]]]:
    """(log, outputs) of each job of a rule for one subject; the log names the job."""
    names = [name for name in template_wildcards(rule.log) if name != "subject"]
    jobs = []
    for values in itertools.product(*(wildcard_values[name] for name in names)):
        fixed = {"subject": subject, **dict(zip(names, values, strict=True))}
        outputs = [
            path
            for template in rule.outputs
            for path in expand_template(template, fixed, wildcard_values)
        ]
        jobs.append((rule.log.format(**fixed), outputs))
    return jobs


def last_step_event(log: Path) -> tuple[str, str]:
    """The last ``started``/``finished``/``failed`` event of a log, with the error if failed."""
    event, error = "", ""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return event, error
    for line in lines:
        match = _STEP_EVENT.match(line)
        if match:
            event = match.group("event").split(":")[0].split(" ")[0]
            error = match.group("error") or ""
    return event, error


def pair_status(
    subject: str,
    split: str,
    change: str,
    roles: Iterable[str],
    plan: Sequence[StagePlan],
    wildcard_values: Mapping[str, Sequence[str]],
    root: Path,
) -> PairStatus:
    """The stage a pair reached and, if it stopped, why (paths relative to ``root``)."""
    status = PairStatus(subject, split, change)
    roles = {"all", *roles}
    for stage in plan:
        rules = [rule for rule in stage.rules if rule.role in roles]
        if not rules:
            continue
        problems: list[tuple[int, str, str, str]] = []  # (severity, rule, log, error)
        for rule in rules:
            for log, outputs in rule_jobs(rule, subject, wildcard_values):
                if all((root / path).exists() for path in outputs):
                    continue
                event, error = last_step_event(root / log)
                state = {"failed": "failed", "started": "interrupted"}.get(event, "pending")
                problems.append(
                    (STATES.index(state), rule.rule, log if state != "pending" else "", error)
                )
        if not problems:
            status.stage_reached = stage.stage
            continue
        severity, rule_name, log, error = min(problems)
        status.state = STATES[severity]
        status.next_stage = stage.stage
        if status.state != "pending":
            status.failed_rule, status.log, status.error = rule_name, log, error
        break
    return status


def cohort_status(
    cohort: pd.DataFrame,
    roles: Mapping[str, Iterable[str]],
    plan: Sequence[StagePlan],
    wildcard_values: Mapping[str, Sequence[str]],
    root: str | os.PathLike[str] = ".",
) -> pd.DataFrame:
    """One row per pair of ``cohort`` (columns subject, split, change): :data:`STATUS_COLUMNS`."""
    rows = []
    for row in cohort.itertuples(index=False):
        status = pair_status(
            row.subject,
            row.split,
            row.change,
            roles[row.subject],
            plan,
            wildcard_values,
            Path(root),
        )
        rows.append({column: getattr(status, column) for column in STATUS_COLUMNS})
    return pd.DataFrame(rows, columns=STATUS_COLUMNS)


def write_cohort_status(table: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write the status table as TSV, atomically (a reader never sees half a table)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    return path


def status_summary(table: pd.DataFrame, path: str | os.PathLike[str] | None = None) -> str:
    """A few lines for the terminal: counts per state, then each failed pair and its log."""
    counts = table["state"].value_counts()
    parts = [f"{counts[state]} {state}" for state in reversed(STATES) if state in counts]
    lines = [
        f"Cohort status ({len(table)} pairs): {', '.join(parts)}"
        + (f"; table: {path}" if path else "")
    ]
    for row in table[table["state"].isin(["failed", "interrupted"])].itertuples(index=False):
        lines.append(
            f"  {row.subject}: {row.state} in {row.failed_rule} "
            f"({row.next_stage}); log: {row.log}" + (f"; error: {row.error}" if row.error else "")
        )
    return "\n".join(lines)


def plan_from_dict(stages: Sequence[Mapping[str, object]]) -> list[StagePlan]:
    """:class:`StagePlan` objects from their plain form (as passed through rule params)."""
    plan = []
    for stage in stages:
        rules = tuple(
            RulePlan(
                str(rule["rule"]),
                tuple(rule["outputs"]),
                str(rule["log"]),
                str(rule.get("role", "all")),
            )
            for rule in stage["rules"]  # type: ignore[attr-defined]
        )
        plan.append(StagePlan(str(stage["stage"]), rules))
    return plan


def status_from_request(
    request: Mapping[str, object], root: str | os.PathLike[str] = "."
) -> pd.DataFrame:
    """:func:`cohort_status` from the workflow's plain description (rules/status.smk).

    ``request`` has ``plan`` (stages, see :func:`plan_from_dict`), ``pairs`` (subject,
    split, change and roles of each pair) and ``wildcards`` (the values of each wildcard
    other than ``subject``).
    """
    pairs = pd.DataFrame(request["pairs"], columns=["subject", "split", "change", "roles"])
    roles = dict(zip(pairs["subject"], pairs["roles"], strict=True))
    return cohort_status(
        pairs,
        roles,
        plan_from_dict(request["plan"]),  # type: ignore[arg-type]
        request["wildcards"],  # type: ignore[arg-type]
        root,
    )
