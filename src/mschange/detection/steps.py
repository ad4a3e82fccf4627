"""File-level detector steps (one per workflow rule): training and prediction of a pair.

Paths in, paths out; every output is written atomically.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from mschange.changemap import find_changes, to_native_grid
from mschange.detection.augment import augmentation_settings
from mschange.detection.inference import (
    BRIGHTER,
    InferenceSettings,
    lesion_table,
    predict_probability,
)
from mschange.detection.loss import LossSettings
from mschange.detection.modelfile import load_detector
from mschange.detection.network import ChangeDetector, DetectorArchitecture
from mschange.detection.training import (
    DetectorTrainingSettings,
    TrainingSample,
    Validator,
    train_detector,
)
from mschange.io import (
    atomic_path,
    brain_intersection,
    load_checked_image,
    load_float_image,
    save_json,
    save_nifti,
)
from mschange.preprocessing.resample import resample_to_grid
from mschange.torchrun import cpu_threads, flush_denormals, resolve_device

log = logging.getLogger(__name__)
PathLike = str | os.PathLike[str]

# ------------------------------------------------------------------ settings from config


def training_settings(detector: Mapping[str, Any], *, seed: int) -> DetectorTrainingSettings:
    """The ``detector`` config section as training settings."""
    architecture = dict(detector["architecture"])
    training, loss = detector["training"], detector["loss"]
    patch = training["patch_size"]
    return DetectorTrainingSettings(
        architecture=DetectorArchitecture.from_dict(architecture),
        loss=LossSettings(
            kind=str(loss["kind"]), **{k: float(v) for k, v in loss.items() if k != "kind"}
        ),
        learning_rate=float(training["learning_rate"]),
        learning_rate_decay=float(training["learning_rate_decay"]),
        batch_size=int(training["batch_size"]),
        iterations=int(training["iterations"]),
        pairs_per_iteration=int(training["pairs_per_iteration"]),
        patch_size=None if patch is None else (int(patch[0]), int(patch[1]), int(patch[2])),
        foreground_share=float(training["foreground_share"]),
        checkpoint_every=int(training["checkpoint_every"]),
        validate_every=int(training.get("validate_every", 0)),
        seed=int(seed),
        augmentation=augmentation_settings(training.get("augmentation")),
    )


def inference_settings(config: Mapping[str, Any]) -> InferenceSettings:
    """The ``detector.inference`` config section as inference settings."""
    window = config["window"]
    return InferenceSettings(
        window=None if window is None else (int(window[0]), int(window[1]), int(window[2])),
        overlap=int(config["overlap"]),
        kappa=float(config.get("kappa", InferenceSettings.kappa)),
        min_blob_voxels=int(config["min_blob_voxels"]),
        margin=int(config.get("margin", InferenceSettings.margin)),
        harmonise=bool(config.get("harmonise", False)),
        mirror_axes=tuple(int(a) for a in config.get("mirror_axes", ())),
        edge_margin_mm=float(config.get("edge_margin_mm", 0.0)),
        min_lesion_contrast=float(config.get("min_lesion_contrast", 0.0)),
    )


# ------------------------------------------------------------------ steps


def train_detector_step(
    samples: Sequence[TrainingSample],
    *,
    model: PathLike,
    log_tsv: PathLike,
    curve_png: PathLike,
    checkpoint_dir: PathLike,
    settings: DetectorTrainingSettings,
    metadata: dict[str, Any],
    device: str,
    threads: int | None = None,
    last_model: PathLike | None = None,
    validate: Validator | None = None,
    initial_model: PathLike | None = None,
) -> None:
    """Rule train_detector. ``validate`` scores the validation set; ``initial_model``
    gives the starting weights, whose architecture replaces the configured one
    (fine-tuning; see :func:`mschange.detection.training.train_detector`)."""
    torch_device = resolve_device(device)
    if initial_model is not None:
        start, _ = load_detector(initial_model)
        if start.architecture != settings.architecture:
            log.info("fine-tuning %s: its architecture replaces the configured one", initial_model)
            settings = dataclasses.replace(settings, architecture=start.architecture)
    every = max(1, settings.total_steps // 20)

    def progress(step: int, loss: float) -> None:
        if step % every == 0 or step == settings.total_steps:
            log.info(
                "step %d/%d (%.0f%%): loss %.4f",
                step,
                settings.total_steps,
                100.0 * step / settings.total_steps,
                loss,
            )

    with cpu_threads(threads, torch_device):
        summary = train_detector(
            samples,
            settings,
            model_path=model,
            log_tsv=log_tsv,
            curve_png=curve_png,
            checkpoint_dir=checkpoint_dir,
            device=torch_device,
            metadata=metadata,
            on_step=progress,
            validate=validate,
            last_model_path=last_model,
            initial_model=initial_model,
        )
    log.info(
        "detector trained: %d steps (%d this run, resumed from %d), final loss %s, %.0f s",
        summary["steps"],
        summary["steps_this_run"],
        summary["resumed_from_step"],
        summary["final_loss"],
        summary["elapsed_s"],
    )


def predict_pair_step(
    *,
    baseline: PathLike,
    followup: PathLike,
    masks: Sequence[PathLike],
    native_followup: PathLike,
    model: PathLike,
    outputs: Mapping[str, PathLike],
    subject: str,
    settings: InferenceSettings,
    device: str,
    threads: int | None = None,
    on_window: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Predict the changes of one preprocessed pair with the model file ``model``.

    ``baseline``/``followup`` are the preprocessed scans on the 1 mm follow-up grid,
    ``masks`` their brain masks (changes are looked for where both show brain),
    ``native_followup`` the user's follow-up file, whose grid the native outputs share.
    ``outputs`` maps the keys of ``mschange.detection.outputs.PREDICTION_SUFFIXES`` to
    paths (``figure``, a QC picture, may be left out; others are ignored). Returns the
    record.
    """
    torch_device = resolve_device(device)
    network, metadata = load_detector(model, torch_device)
    with cpu_threads(threads, torch_device):
        return predict_with_network(
            network,
            baseline,
            followup,
            masks,
            native_followup,
            outputs,
            subject=subject,
            settings=settings,
            device=torch_device,
            on_window=on_window,
            record_extra={"model": model_summary(model, metadata)},
        )


def model_summary(model: PathLike, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """What a prediction record says about the model file that made it."""
    return {
        "path": str(model),
        "package_version": metadata.get("package_version"),
        "name": metadata.get("name"),
    }


def predict_with_network(
    network: ChangeDetector | Sequence[ChangeDetector],
    baseline: PathLike,
    followup: PathLike,
    masks: Sequence[PathLike],
    native_followup: PathLike,
    outputs: Mapping[str, PathLike],
    *,
    subject: str,
    settings: InferenceSettings,
    device: torch.device,
    on_window: Callable[[int, int], None] | None = None,
    record_extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """:func:`predict_pair_step` with a network (or an ensemble) already in memory;
    writes every output.

    ``record_extra`` is added to the JSON record (e.g. which model file was used).
    """
    started = time.perf_counter()
    if device.type == "cpu":
        flush_denormals()  # activations in the empty background decay to denormals
    baseline_data, _ = load_float_image(baseline)
    followup_data, image = load_float_image(followup)
    brain = brain_intersection(*masks)
    native = load_checked_image(native_followup, subject)
    native_shape = (int(native.shape[0]), int(native.shape[1]), int(native.shape[2]))

    probability = predict_probability(
        network,
        baseline_data,
        followup_data,
        brain,
        image.affine,
        settings,
        device=device,
        on_window=on_window,
    )
    seconds_network = time.perf_counter() - started
    labels = find_changes(probability, settings.kappa, settings.min_blob_voxels)
    table = lesion_table(
        labels, probability, baseline_data, followup_data, image.affine, brain_mask=brain
    )
    native_probability, native_labels = to_native_grid(
        probability, labels, image.affine, native_shape, native.affine
    )
    label_type = np.uint16 if int(labels.max(initial=0)) < 2**16 else np.int32

    save_nifti(probability, image.affine, outputs["probability"], header=image.header)
    save_nifti(
        (labels > 0).astype(np.uint8),
        image.affine,
        outputs["mask"],
        header=image.header,
        dtype=np.uint8,
    )
    save_nifti(
        native_probability, native.affine, outputs["native_probability"], header=native.header
    )
    save_nifti(
        (native_labels > 0).astype(np.uint8),
        native.affine,
        outputs["native_mask"],
        header=native.header,
        dtype=np.uint8,
    )
    # The changes labelled 1..n (``lesion_id`` of the lesion table) on both grids.
    save_nifti(labels, image.affine, outputs["labels"], header=image.header, dtype=label_type)
    save_nifti(
        native_labels,
        native.affine,
        outputs["native_labels"],
        header=native.header,
        dtype=label_type,
    )
    with atomic_path(outputs["lesions"]) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.4f")
    if "figure" in outputs:
        from mschange.detection.figures import plot_prediction

        plot_prediction(
            baseline_data,
            followup_data,
            labels,
            image.affine,
            table,
            outputs["figure"],
            title=f"sub-{subject}: {len(table)} change(s), "
            f"p > {settings.kappa}, >= {settings.min_blob_voxels} voxels",
        )
    brighter = int((table["direction"] == BRIGHTER).sum()) if len(table) else 0
    record = {
        "subject": subject,
        "inputs": {
            "baseline": str(baseline),
            "followup": str(followup),
            "brain_masks": [str(m) for m in masks],
            "native_followup": str(native_followup),
        },
        "settings": settings.as_dict(),
        "device": str(device),
        "changes": len(table),
        "brighter_at_followup": brighter,
        "darker_at_followup": len(table) - brighter,
        "changed_volume_mm3": float(table["volume_mm3"].sum()) if len(table) else 0.0,
        "seconds_network": seconds_network,
        "seconds_total": time.perf_counter() - started,
        **(record_extra or {}),
    }
    save_json(record, outputs["record"])
    log.info(
        "%s: %d change(s) (%d brighter, %d darker at follow-up), %.0f mm3, network %.1f s",
        subject,
        record["changes"],
        brighter,
        record["darker_at_followup"],
        record["changed_volume_mm3"],
        seconds_network,
    )
    return record


def augmentation_figure_step(
    baseline: PathLike,
    followup: PathLike,
    masks: Sequence[PathLike],
    *,
    settings: Mapping[str, Any],
    seed: int,
    png: PathLike,
    patch_size: Sequence[int] = (144, 176, 48),
) -> list[str]:
    """Rule augmentation_figure: each augmentation alone on a patch of one training pair
    (RAS axis order, centred on the brain)."""
    from mschange.detection.augment import plot_augmentation_gallery
    from mschange.imagespace import to_ras_axes

    baseline_data, _ = load_float_image(baseline)
    followup_data, image = load_float_image(followup)
    brain, _ = to_ras_axes(brain_intersection(*masks), image.affine)
    centre = np.round(np.argwhere(brain).mean(axis=0)).astype(int)
    region = tuple(
        slice(max(int(c) - n // 2, 0), max(int(c) - n // 2, 0) + n)
        for c, n in zip(centre, patch_size, strict=True)
    )
    pair = [to_ras_axes(data, image.affine)[0][region] for data in (baseline_data, followup_data)]
    return plot_augmentation_gallery(
        pair[0], pair[1], augmentation_settings(settings), png, seed=seed
    )


def annotated_change_mask_step(
    label: PathLike, followup: PathLike, output: PathLike, *, subject: str
) -> int:
    """Rule annotated_change_mask: an annotated pair's change label (on its native
    follow-up grid) on the preprocessed 1 mm follow-up grid, where the detector trains:
    the mask's partial-volume fraction at each voxel centre (trilinear), kept above 1/2.
    Returns the number of changed voxels."""
    image = load_checked_image(label, subject)
    _, grid = load_float_image(followup)
    shape = (int(grid.shape[0]), int(grid.shape[1]), int(grid.shape[2]))
    fraction = resample_to_grid(
        (np.asarray(image.dataobj) > 0).astype(np.float32),
        image.affine,
        shape,
        grid.affine,
        order=1,
    )
    mask = (fraction > 0.5).astype(np.uint8)
    save_nifti(mask, grid.affine, output, dtype=np.uint8)
    log.info("%s: change label on the follow-up grid, %d voxels", subject, int(mask.sum()))
    return int(mask.sum())
