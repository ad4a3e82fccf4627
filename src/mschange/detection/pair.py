"""One pair, outside Snakemake: preprocessing and change detection with a trained model.

This is what ``mschange predict`` runs. The pair goes through the same steps as in
the workflow (resampling, HD-BET, rigid registration onto the follow-up, N4,
intensity normalisation), with the preprocessing parameters stored in the model
file, so that the network sees what it was trained on. Intermediates stay under
``OUT/preproc/``; the results sit in ``OUT/`` with the workflow's file names.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mschange.config import schema_default
from mschange.detection.modelfile import load_detector
from mschange.detection.outputs import prediction_paths
from mschange.detection.steps import model_summary, predict_with_network
from mschange.io import load_checked_image
from mschange.preprocessing import steps as preprocessing
from mschange.pretrained import inference_for, resolve_model
from mschange.torchrun import cpu_threads, job_threads, resolve_device

PathLike = str | os.PathLike[str]


def output_paths(out_dir: Path, subject: str) -> dict[str, Path]:
    """Result files of one pair, named like the workflow's."""
    return {key: Path(path) for key, path in prediction_paths(str(out_dir), subject).items()}


def subject_from_path(path: PathLike) -> str:
    """A subject id from a file name: the BIDS subject (``sub-01_ses-2_FLAIR`` -> ``01``),
    else the letters and digits of the stem, dashes between (``p7 fu.nii`` -> ``p7-fu``)."""
    stem = Path(path).name.removesuffix(".gz").removesuffix(".nii")
    bids = re.match(r"sub-([A-Za-z0-9]+)_", stem)
    if bids:
        return bids.group(1)
    parts = "".join(c if c.isalnum() else " " for c in stem).split()
    return "-".join(parts) or "pair"


class Progress:
    """Numbered stage lines with timings, on stderr (stdout stays for results)."""

    def __init__(self, total: int, stream: Any = None) -> None:
        self.total = total
        self.done = 0
        self.stream = stream or sys.stderr

    def say(self, text: str, end: str = "\n") -> None:
        print(text, end=end, file=self.stream, flush=True)

    @contextmanager
    def stage(self, text: str) -> Iterator[None]:
        self.done += 1
        started = time.perf_counter()
        self.say(f"[{self.done}/{self.total}] {text} ...")
        yield
        self.say(f"[{self.done}/{self.total}] {text}: done in "
                 f"{time.perf_counter() - started:.1f} s")

    def windows(self) -> Callable[[int, int], None]:
        def show(done: int, total: int) -> None:
            self.say(f"\r      network window {done}/{total}",
                     end="\n" if done == total else "")
        return show


def predict_pair(baseline: PathLike, followup: PathLike,
                 model: PathLike | Sequence[PathLike] | None, out_dir: PathLike,
                 *, subject: str | None = None, device: str = "cpu",
                 threads: int | None = None, overrides: dict[str, Any] | None = None,
                 progress: Progress | None = None) -> dict[str, Any]:
    """Preprocess a raw pair and detect its changes; returns the prediction record.

    ``model``: a model file or the name of a shipped one (None: the default shipped
    model, :data:`mschange.pretrained.DEFAULT_MODEL`); several make an ensemble (the
    mean of their probabilities; they must share the preprocessing). Inference
    settings are those stored in the (first) model file, else the paper's;
    ``overrides`` replaces any (e.g. ``kappa``, ``min_blob_voxels``, ``mirror_axes``).
    Inputs and models are checked before anything is written.
    """
    subject = subject or subject_from_path(followup)
    progress = progress or Progress(total=7)
    threads = threads or job_threads()
    # Fail on bad inputs before creating any output.
    for path in (baseline, followup):
        load_checked_image(path, subject)
    torch_device = resolve_device(device)
    requested = [model] if model is None or isinstance(model, str | os.PathLike) else model
    model_files = [resolve_model(m) for m in requested]
    loaded = [load_detector(path, torch_device) for path in model_files]
    networks = [network for network, _ in loaded]
    metadata = loaded[0][1]
    prep = metadata["preprocessing"]
    for path, (_, other) in zip(model_files[1:], loaded[1:], strict=True):
        if other["preprocessing"] != prep:
            raise ValueError(f"{path}: an ensemble's models must share their preprocessing; "
                             f"it differs from {model_files[0]}'s")
    settings = inference_for(metadata, overrides)

    out = Path(out_dir)
    work = out / "preproc"
    work.mkdir(parents=True, exist_ok=True)
    files = {tp: {kind: work / f"sub-{subject}_tp-{tp}_{kind}.nii.gz"
                  for kind in ("desc-resampled_FLAIR", "desc-brain_FLAIR", "desc-brain_mask",
                               "space-followup_desc-brain_FLAIR",
                               "space-followup_desc-brain_mask", "space-followup_desc-n4_FLAIR",
                               "space-followup_desc-preproc_FLAIR")}
             for tp in ("baseline", "followup")}
    # The follow-up is the reference: its own brain is already "on the follow-up grid".
    for kind in ("FLAIR", "mask"):
        files["followup"][f"space-followup_desc-brain_{kind}"] = \
            files["followup"][f"desc-brain_{kind}"]
    raw = {"baseline": baseline, "followup": followup}
    # Speed settings are not part of what the model learned from (SPEED_SETTINGS): they
    # come from the schema, so that predict registers as fast as the workflow and, with
    # one ANTs thread, reproducibly.
    registration = {key: schema_default("preprocessing", "registration", key)
                    for key in ("threads", "sampling_points")}

    for tp in ("baseline", "followup"):
        with progress.stage(f"resampling the {tp} to {prep['resolution_mm']} mm"):
            preprocessing.resample_step(raw[tp], files[tp]["desc-resampled_FLAIR"],
                                        subject=subject, resolution_mm=prep["resolution_mm"],
                                        order=prep["interpolation_order"])
        with progress.stage(f"skull stripping the {tp} (HD-BET, {prep['skullstrip']['mode']})"):
            preprocessing.skullstrip_step(
                files[tp]["desc-resampled_FLAIR"], files[tp]["desc-brain_FLAIR"],
                files[tp]["desc-brain_mask"], subject=subject,
                mode=prep["skullstrip"]["mode"], tta=prep["skullstrip"]["tta"], device=device,
                threads=threads)
    with progress.stage("registering the baseline onto the follow-up (ANTs rigid)"):
        preprocessing.register_step(
            followup_brain=files["followup"]["desc-brain_FLAIR"],
            baseline_brain=files["baseline"]["desc-brain_FLAIR"],
            baseline_mask=files["baseline"]["desc-brain_mask"],
            transform_output=work / f"sub-{subject}_from-baseline_to-followup_mode-image_xfm.mat",
            moved_brain_output=files["baseline"]["space-followup_desc-brain_FLAIR"],
            moved_mask_output=files["baseline"]["space-followup_desc-brain_mask"],
            subject=subject,
            transform=prep["registration"]["transform"],
            sampling_points=registration["sampling_points"], seed=int(metadata.get("seed", 1)),
            threads=registration["threads"])
    with progress.stage("N4 bias correction and intensity normalisation"):
        for tp in ("baseline", "followup"):
            brain = files[tp]["space-followup_desc-brain_FLAIR"]
            mask = files[tp]["space-followup_desc-brain_mask"]
            preprocessing.n4_step(brain, mask, files[tp]["space-followup_desc-n4_FLAIR"],
                                  subject=subject, threads=threads, **prep["n4"])
            preprocessing.normalize_step(files[tp]["space-followup_desc-n4_FLAIR"], mask,
                                         files[tp]["space-followup_desc-preproc_FLAIR"],
                                         subject=subject, **prep["normalize"])
    outputs = output_paths(out, subject)
    with progress.stage(f"detecting changes on {torch_device}"), \
            cpu_threads(threads, torch_device):
        record = predict_with_network(
            networks, files["baseline"]["space-followup_desc-preproc_FLAIR"],
            files["followup"]["space-followup_desc-preproc_FLAIR"],
            [files["baseline"]["space-followup_desc-brain_mask"],
             files["followup"]["desc-brain_mask"]],
            followup, outputs, subject=subject, settings=settings, device=torch_device,
            on_window=progress.windows(),
            record_extra={"model": model_summary(model_files[0], metadata),
                          **({"ensemble": [model_summary(path, other) for path, (_, other)
                                           in zip(model_files, loaded, strict=True)]}
                             if len(loaded) > 1 else {}),
                          "raw_inputs": {"baseline": str(baseline),
                                         "followup": str(followup)}})
    return record
