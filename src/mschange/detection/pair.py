"""One pair, outside Snakemake: preprocessing and change detection with a trained model.

This is what ``mschange predict`` runs. The pair goes through the same steps as in
the workflow (resampling, HD-BET, rigid registration onto the follow-up, N4,
intensity normalisation), with the preprocessing parameters stored in the model
file, so that the network sees what it was trained on. ``OUT`` is a BIDS derivatives
dataset (:mod:`mschange.bids`, docs/bids.md): ``dataset_description.json``, the results
in ``OUT/sub-<label>/[ses-<label>/]anat/`` with the workflow's file names and a JSON
sidecar each, the QC picture in ``OUT/sub-<label>/figures/``; the preprocessed
intermediates stay under ``OUT/preproc/`` (left out of the dataset by ``.bidsignore``).

Everything is checked before anything is written (the inputs by the cohort sheet's own
checks, the model file's whole structure, every option). A run writes into a fresh
partial folder beside ``OUT`` and moves the finished set into place at the end, so ``OUT``
only ever holds one run's complete results: a run that fails or is killed leaves ``OUT``
as it was, and the next run removes the partial folder a killed run left behind.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import pandas as pd

from mschange.bids import (
    DATASET_FILES,
    PairPrediction,
    is_mschange_dataset,
    pair_entities,
    write_dataset,
)
from mschange.cohort import CohortError, check_cohort_images, check_cohort_table
from mschange.detection.modelfile import load_detector
from mschange.detection.outputs import (
    BIDS_LABEL,
    PREDICTION_SUFFIXES,
    PairEntities,
    bids_prediction_paths,
    pair_page_paths,
)
from mschange.detection.steps import model_summary, predict_with_network
from mschange.io import InputError, save_json
from mschange.layout import preprocessed_pair
from mschange.preprocessing.pipeline import STEPS, plan_pair
from mschange.pretrained import inference_for, resolve_model
from mschange.subject_id import is_subject_id
from mschange.torchrun import cpu_threads, job_threads, resolve_device
from mschange.viewer import check_niivue

if TYPE_CHECKING:
    import torch

    from mschange.detection.inference import InferenceSettings
    from mschange.detection.network import ChangeDetector

PathLike = str | os.PathLike[str]


def output_paths(out_dir: Path, entities: PairEntities) -> dict[str, Path]:
    """Result files of one pair in the dataset ``out_dir``, named like the workflow's."""
    return {key: Path(path) for key, path in bids_prediction_paths(str(out_dir), entities).items()}


def check_subject_id(subject: str) -> str:
    """``subject`` if it follows the one subject-id rule (:mod:`mschange.subject_id`):
    ids become file and folder names, so nothing else is allowed."""
    if not is_subject_id(subject):
        raise InputError(
            f"{subject!r} is not a valid subject id: use ASCII letters and "
            "digits, with single hyphens between them (as in a cohort sheet); "
            "it becomes part of every output file name"
        )
    return subject


def subject_from_path(path: PathLike) -> str:
    """A subject id from a file name: the BIDS subject (``sub-01_ses-2_FLAIR`` -> ``01``),
    else the ASCII letters and digits of the stem, dashes between (``p7 fu.nii`` ->
    ``p7-fu``); ``pair`` when none is left."""
    stem = Path(path).name.removesuffix(".gz").removesuffix(".nii")
    bids = re.match(r"sub-([A-Za-z0-9]+)_", stem)
    if bids:
        return bids.group(1)
    parts = re.sub(r"[^A-Za-z0-9]+", " ", stem).split()
    return "-".join(parts) or "pair"


# predict's progress stages: each preprocessing step (both time points), the network, then
# the pages (QC, viewer, summary).
STAGES = len(STEPS) + 2


class Progress:
    """Numbered stage lines with timings, on stderr (stdout stays for results)."""

    def __init__(self, total: int | None = None, stream: Any = None) -> None:
        self.total = total or STAGES
        self.done = 0
        self.current = "checking the inputs"
        self.stream = stream or sys.stderr

    def say(self, text: str, end: str = "\n") -> None:
        print(text, end=end, file=self.stream, flush=True)

    @contextmanager
    def stage(self, text: str) -> Iterator[None]:
        self.done += 1
        started = time.perf_counter()
        self.current = f"[{self.done}/{self.total}] {text}"
        self.say(f"{self.current} ...")
        yield
        self.say(
            f"[{self.done}/{self.total}] {text}: done in {time.perf_counter() - started:.1f} s"
        )

    def windows(self) -> Callable[[int, int], None]:
        def show(done: int, total: int) -> None:
            self.say(f"\r      network window {done}/{total}", end="\n" if done == total else "")

        return show


class Interrupted(Exception):
    """A signal stopped ``predict`` (see :func:`interrupt_on_signals`)."""

    def __init__(self, signal_number: int) -> None:
        self.signal_number = signal_number
        super().__init__(f"stopped by {signal.Signals(signal_number).name}")


@contextmanager
def interrupt_on_signals(*signals: int) -> Iterator[None]:
    """Turn ``signals`` (default SIGTERM, what SLURM and ``kill`` send) into
    :class:`Interrupted` in the main thread, so that clean-up runs and the user is told."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, stop) for sig in signals or (signal.SIGTERM,)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# Beside OUT while a run works (".OUT.mschange-partial-HOST-PID"), and the previous results
# for the moment they are swapped out.
PARTIAL_TAG = "mschange-partial"
REPLACED_TAG = "mschange-replaced"


def _sibling(out: Path, tag: str) -> Path:
    """This process's folder beside ``out`` (``out`` absolute, so that ``.`` has a name)."""
    return out.parent / f".{out.name}.{tag}-{socket.gethostname()}-{os.getpid()}"


# A pair's folder and its page at the root of predict's dataset.
_PAIR_FOLDER = re.compile(rf"sub-{BIDS_LABEL}")
_PAIR_PAGE = re.compile(rf"sub-{BIDS_LABEL}(?:_ses-{BIDS_LABEL})?\.html")
# What predict wrote before its folder was a BIDS dataset: the results flat in it.
_FLAT_RESULT = re.compile(
    r"sub-[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*_(?:space-(?:followup|native)_)?desc-changes?_"
    r"(?:probseg\.nii\.gz|mask\.nii\.gz|lesions\.tsv|prediction\.json|overlay\.png)"
)


def _written_by_predict(entry: Path, dataset: bool) -> bool:
    """Whether ``entry`` (at the top of an output folder) is one that ``predict`` writes;
    ``dataset``: the folder is a dataset mschange wrote (its dataset_description.json
    says so), without which only the preprocessing folder and (older versions') flat
    result files count: a raw BIDS dataset's ``sub-*`` folders are never predict's."""
    name = entry.name
    if name == "preproc":
        return entry.is_dir()
    if dataset and (
        name in DATASET_FILES
        or (_PAIR_FOLDER.fullmatch(name) is not None and entry.is_dir())
        or (_PAIR_PAGE.fullmatch(name) is not None and entry.is_file())
    ):
        return True
    return _FLAT_RESULT.fullmatch(name) is not None and entry.is_file()


def check_output_folder(out: Path) -> None:
    """Refuse an ``--out`` that a finished run could not replace without harm: a file, or a
    folder holding files that ``predict`` did not write (they would be deleted)."""
    if out.exists() and not out.is_dir():
        raise InputError("--out is a file, not a folder", out)
    dataset = out.is_dir() and is_mschange_dataset(out)
    other = (
        sorted(e.name for e in out.iterdir() if not _written_by_predict(e, dataset))
        if out.is_dir()
        else []
    )
    if other:
        raise InputError(
            f"--out already holds files that mschange predict did not write "
            f"({', '.join(other[:3])}{', ...' if len(other) > 3 else ''}); a finished run "
            "replaces the whole folder, so give a new or empty folder",
            out,
        )


def remove_stale_partial_folders(out: Path) -> list[Path]:
    """Remove what runs into ``out`` on this machine left when they were killed (their
    process is gone); returns the folders removed."""
    host = socket.gethostname()
    removed: list[Path] = []
    pattern = re.compile(
        rf"\.{re.escape(out.name)}\.(?:{PARTIAL_TAG}|{REPLACED_TAG})-"
        rf"{re.escape(host)}-(\d+)"
    )
    if not out.parent.is_dir():
        return removed
    for folder in out.parent.iterdir():
        match = pattern.fullmatch(folder.name)
        if match and folder.is_dir() and not _process_alive(int(match.group(1))):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def publish(partial: Path, out: Path) -> None:
    """Put a finished run's folder in place of ``out`` (two renames on one file system:
    ``out`` is never a mix of two runs). SIGTERM and SIGINT wait until both renames are
    done: stopping between them would leave no ``out`` at all."""
    held = {signal.SIGTERM, signal.SIGINT}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        if out.exists():
            replaced = _sibling(out, REPLACED_TAG)
            os.replace(out, replaced)
            os.replace(partial, out)
        else:
            os.replace(partial, out)
            replaced = None
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    if replaced is not None:
        shutil.rmtree(replaced)


def _moved_paths(value: Any, old: str, new: str) -> Any:
    """``value`` with every path string under the folder ``old`` moved under ``new``."""
    if isinstance(value, dict):
        return {k: _moved_paths(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_moved_paths(v, old, new) for v in value]
    if isinstance(value, str) and (value == old or value.startswith(old + os.sep)):
        return new + value[len(old) :]
    return value


def check_inputs(
    baseline: PathLike, followup: PathLike, subject: str, label: PathLike | None = None
) -> list[str]:
    """The cohort sheet's checks on one pair, as a test pair (with its label, if given: a
    change mask on the follow-up's grid); one set of rules for the workflow and
    ``predict``. Raises :class:`CohortError` naming each problem, returns the warnings."""
    row = {
        "subject": subject,
        "baseline": str(baseline),
        "followup": str(followup),
        "split": "test",
        "change": "unknown",
        **({"label": str(label)} if label is not None else {}),
    }
    try:
        cohort = check_cohort_table(
            pd.DataFrame([row]),
            base_dir=Path.cwd(),
            source="--baseline and --followup",
            line_numbers=[0],
        )
        return check_cohort_images(cohort)
    except CohortError as error:
        raise CohortError(error.problems, one_line=True) from None


def predict_pair(
    baseline: PathLike,
    followup: PathLike,
    model: PathLike | Sequence[PathLike] | None,
    out_dir: PathLike,
    *,
    subject: str | None = None,
    device: str = "cpu",
    threads: int | None = None,
    overrides: dict[str, Any] | None = None,
    progress: Progress | None = None,
    label: PathLike | None = None,
) -> dict[str, Any]:
    """Preprocess a raw pair and detect its changes; returns the prediction record.

    ``label``: a ground-truth change mask on the follow-up's grid, shown in the viewer
    (checked as a cohort sheet's label; nothing is scored).

    ``model``: a model file or the name of a shipped model (None: the default shipped
    model, :data:`mschange.pretrained.DEFAULT_MODEL`); several make an ensemble (the
    mean of their probabilities; they must share the preprocessing). Inference
    settings are the paper's (the config schema's defaults), replaced by those stored
    in the (first) model file, replaced by ``overrides`` (e.g. ``kappa``,
    ``min_blob_voxels``, ``mirror_axes``). The inputs, the model files, the settings and
    ``out_dir`` are checked before anything is written; ``out_dir`` is replaced as a
    whole by the finished run (see the module's docstring).
    """
    progress = progress or Progress()
    named = subject is not None
    subject = check_subject_id(subject if subject is not None else subject_from_path(followup))
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, not {threads}")
    threads = threads or job_threads()
    out = Path(os.path.abspath(out_dir))
    # Fail on bad inputs before creating any output.
    for warning in check_inputs(baseline, followup, subject, label):
        progress.say(f"mschange: warning: {warning}")
    # Subject and session of a BIDS follow-up carry over (--subject names the subject).
    entities = pair_entities(subject, followup, subject_from_scan=not named)
    check_output_folder(out)
    check_niivue()  # the viewer is an output: without NiiVue nothing is written
    torch_device = resolve_device(device)
    requested = [model] if model is None or isinstance(model, str | os.PathLike) else model
    model_files = [resolve_model(m) for m in requested]
    loaded = [load_detector(path, torch_device) for path in model_files]
    prep = loaded[0][1]["preprocessing"]
    for path, (_, other) in zip(model_files[1:], loaded[1:], strict=True):
        if other["preprocessing"] != prep:
            raise ValueError(
                f"{path}: an ensemble's models must share their preprocessing; "
                f"it differs from {model_files[0]}'s"
            )
    settings = inference_for(loaded[0][1], overrides)

    for removed in remove_stale_partial_folders(out):
        progress.say(f"removed {removed}, left by a run that was killed")
    partial = _sibling(out, PARTIAL_TAG)
    try:
        partial.mkdir(parents=True)
        record = _run(
            baseline,
            followup,
            model_files,
            loaded,
            partial,
            subject=subject,
            entities=entities,
            settings=settings,
            device=device,
            torch_device=torch_device,
            threads=threads,
            progress=progress,
        )
        record = _moved_paths(record, str(partial), str(out))
        record["outputs"] = {key: str(p) for key, p in output_paths(out, entities).items()}
        paths = output_paths(partial, entities)
        with progress.stage("writing the QC picture, the viewer and the summary"):
            summary = _write_pages(partial, subject=subject, entities=entities, label=label)
        record["pages"] = pair_page_paths(str(out), entities)
        record["qc"] = summary["qc"]
        save_json(record, paths["record"])
        write_dataset(
            partial,
            [
                PairPrediction(
                    entities,
                    {key: str(p) for key, p in paths.items()},
                    os.path.abspath(baseline),
                    os.path.abspath(followup),
                    record,
                )
            ],
        )
        publish(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return record


def _write_pages(
    dataset: Path, *, subject: str, entities: PairEntities, label: PathLike | None
) -> dict[str, Any]:
    """The pair's QC (picture and numbers), viewer and summary, in the dataset's folders."""
    from mschange.config import section_defaults
    from mschange.pair_pages import write_pair_pages
    from mschange.preprocessing.steps import qc_pair_step
    from mschange.summary import qc_thresholds

    ready = preprocessed_pair(subject, str(dataset / "preproc"))
    pages = pair_page_paths(str(dataset), entities)
    # Beside the preprocessed files, as the workflow's results/qc/ is beside results/preproc/.
    qc_record = dataset / "preproc" / "qc" / f"sub-{subject}_desc-preproc_qc.json"
    qc_record.parent.mkdir(parents=True, exist_ok=True)
    results = output_paths(dataset, entities)
    Path(pages["viewer"]).parent.mkdir(parents=True, exist_ok=True)
    thresholds = qc_thresholds(section_defaults("qc"))
    qc_pair_step(
        ready["followup"],
        ready["baseline"],
        ready["followup_mask"],
        ready["baseline_mask"],
        pages["qc_figure"],
        qc_record,
        subject=subject,
        min_similarity=thresholds["min_similarity"],
        max_contrast=thresholds["max_contrast"],
    )
    return write_pair_pages(
        baseline=ready["baseline"],
        followup=ready["followup"],
        masks=[ready["baseline_mask"], ready["followup_mask"]],
        probability=results["probability"],
        labels=results["labels"],
        lesions=results["lesions"],
        record=results["record"],
        qc=qc_record,
        qc_thresholds=thresholds,
        outputs=pages,
        subject=entities.subject,
        session=entities.session,
        label=label,
        qc_figure=pages["qc_figure"],
    )


def _run(
    baseline: PathLike,
    followup: PathLike,
    model_files: Sequence[Path],
    loaded: Sequence[tuple[ChangeDetector, dict[str, Any]]],
    out: Path,
    *,
    subject: str,
    entities: PairEntities,
    settings: InferenceSettings,
    device: str,
    torch_device: torch.device,
    threads: int,
    progress: Progress,
) -> dict[str, Any]:
    """The preprocessing steps and the detection, one progress stage each, writing into
    ``out`` (the run's partial folder)."""
    networks = [network for network, _ in loaded]
    metadata = loaded[0][1]
    work = str(out / "preproc")
    plan = plan_pair(
        {"baseline": baseline, "followup": followup},
        subject=subject,
        settings=metadata["preprocessing"],
        folder=work,
        seed=int(metadata.get("seed", 1)),
        device=device,
        threads=threads,
    )
    for step in STEPS:  # one progress stage per step, both time points in it
        calls = [call for call in plan if call.step == step]
        with progress.stage(
            calls[0].label if len(calls) == 1 else f"{step.does} the baseline and the follow-up"
        ):
            for call in calls:
                call.run()
    ready = preprocessed_pair(subject, work)
    outputs = {key: output_paths(out, entities)[key] for key in PREDICTION_SUFFIXES}
    with progress.stage(f"detecting changes on {torch_device}"), cpu_threads(threads, torch_device):
        record = predict_with_network(
            networks,
            ready["baseline"],
            ready["followup"],
            [ready["baseline_mask"], ready["followup_mask"]],
            followup,
            outputs,
            subject=subject,
            settings=settings,
            device=torch_device,
            on_window=progress.windows(),
            record_extra={
                "model": model_summary(model_files[0], metadata),
                **(
                    {
                        "ensemble": [
                            model_summary(path, other)
                            for path, (_, other) in zip(model_files, loaded, strict=True)
                        ]
                    }
                    if len(loaded) > 1
                    else {}
                ),
                "raw_inputs": {"baseline": str(baseline), "followup": str(followup)},
            },
        )
    return record
