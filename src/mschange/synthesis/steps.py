"""File-level synthesis steps (one per workflow rule): simulated rescans, VAE training,
SuperMix samples and the synthesis figures. Paths in, paths out; outputs atomic."""

from __future__ import annotations

import json
import logging
import os
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mschange.io import (
    brain_intersection,
    file_sha256,
    load_checked_image,
    load_float_image,
    save_json,
    save_nifti,
)
from mschange.synthesis.reconstruction import TilingSettings
from mschange.synthesis.rescan import RescanSettings, simulate_rescan
from mschange.synthesis.supermix import (
    SuperMixSettings,
    draw_choices,
    sample_seed,
    synthesise,
)
from mschange.synthesis.vae import VaeArchitecture, load_vae
from mschange.synthesis.vae_training import VaeTrainingSettings, train_vae
from mschange.torchrun import cpu_threads, resolve_device

log = logging.getLogger(__name__)
PathLike = str | os.PathLike[str]


# ------------------------------------------------------------------ settings from config


def rescan_settings(config: Mapping[str, Any]) -> RescanSettings:
    return RescanSettings(
        max_rotation_deg=float(config["max_rotation_deg"]),
        max_translation_mm=float(config["max_translation_mm"]),
        slice_thickness_factor=tuple(config["slice_thickness_factor"]),
        bias_field_strength=float(config["bias_field_strength"]),
        noise_fraction=tuple(config["noise_fraction"]),
        gamma=tuple(config["gamma"]),
    )


def vae_settings(config: Mapping[str, Any], *, encoder: str, seed: int) -> VaeTrainingSettings:
    architecture = VaeArchitecture(
        encoder=encoder,
        channels=tuple(int(c) for c in config["channels"]),
        latent_channels=int(config["latent_channels"]),
    )
    return VaeTrainingSettings(
        architecture=architecture,
        crop_size=tuple(int(c) for c in config["crop_size"]),  # type: ignore[arg-type]
        kl_weight=float(config["kl_weight"]),
        learning_rate=float(config["learning_rate"]),
        batch_size=int(config["batch_size"]),
        iterations=int(config["iterations"]),
        crops_per_iteration=int(config["crops_per_iteration"]),
        checkpoint_every=int(config["checkpoint_every"]),
        seed=int(seed),
    )


def supermix_settings(config: Mapping[str, Any]) -> SuperMixSettings:
    return SuperMixSettings(
        tau=float(config["tau"]),
        n_segments=tuple(int(n) for n in config["n_segments"]),  # type: ignore[arg-type]
        delta=float(config["delta"]),
        compactness=float(config["compactness"]),
        slic_iterations=int(config["slic_iterations"]),
    )


def tiling_settings(crop_size: Sequence[int], supermix_config: Mapping[str, Any]) -> TilingSettings:
    """Whole-volume reconstructions use tiles of the VAE's training crop size."""
    size = tuple(int(c) for c in crop_size)
    return TilingSettings(
        tile_size=(size[0], size[1], size[2]), overlap=int(supermix_config["tile_overlap"])
    )


def derived_seed(seed: int, *keys: str | int) -> int:
    """A 32-bit seed for one job, from the config seed and the job's identity."""
    entropy = [int(seed)] + [zlib.crc32(str(k).encode()) for k in keys]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


# ------------------------------------------------------------------ steps


def rescan_step(
    scan: PathLike,
    output: PathLike,
    record_json: PathLike,
    *,
    subject: str,
    seed: int,
    settings: RescanSettings,
) -> None:
    """Simulated rescan of a single scan: the baseline of a no-change pair (raw grid)."""
    image = load_checked_image(scan, subject)
    data = np.asarray(image.dataobj, dtype=np.float32)
    job_seed = derived_seed(seed, subject, "rescan")
    rescanned, record = simulate_rescan(data, image.affine, settings, job_seed)
    log.info(
        "%s: simulated rescan of %s (seed %d): %s",
        subject,
        scan,
        job_seed,
        json.dumps({k: v for k, v in record.items() if k != "settings"}),
    )
    save_nifti(rescanned, image.affine, output, header=image.header)
    save_json(
        {"subject": subject, "source_scan": str(scan), "config_seed": seed, **record}, record_json
    )


def train_vae_step(
    images: Sequence[PathLike],
    masks: Sequence[PathLike],
    *,
    model: PathLike,
    loss_tsv: PathLike,
    curve_png: PathLike,
    checkpoint_dir: PathLike,
    settings: VaeTrainingSettings,
    device: str,
    threads: int | None = None,
) -> None:
    torch_device = resolve_device(device)
    every = max(1, settings.total_steps // 20)

    def progress(step: int, loss: float) -> None:
        if step % every == 0 or step == settings.total_steps:
            log.info(
                "step %d/%d (%.0f%%): loss %.5f",
                step,
                settings.total_steps,
                100.0 * step / settings.total_steps,
                loss,
            )

    with cpu_threads(threads, torch_device):
        summary = train_vae(
            [str(p) for p in images],
            [str(p) for p in masks],
            settings,
            model_path=model,
            loss_tsv=loss_tsv,
            curve_png=curve_png,
            checkpoint_dir=checkpoint_dir,
            device=torch_device,
            on_step=progress,
        )
    log.info(
        "VAE trained: %d steps (%d this run, resumed from %d), final loss %s, %.0f s",
        summary["steps"],
        summary["steps_this_run"],
        summary["resumed_from_step"],
        summary["final_loss"],
        summary["elapsed_s"],
    )


def supermix_step(
    timepoints: Mapping[str, PathLike],
    masks: Sequence[PathLike],
    model: PathLike,
    outputs: Mapping[str, Sequence[PathLike]],
    *,
    subject: str,
    seed: int,
    settings: SuperMixSettings,
    tiling: TilingSettings,
    device: str,
    threads: int | None = None,
) -> None:
    """Write SuperMix samples of one no-change pair.

    ``timepoints`` maps baseline/followup to the preprocessed scans (follow-up grid);
    ``outputs`` maps synthesised, reference, label and record to one path per sample.
    """
    torch_device = resolve_device(device)
    vae, metadata = load_vae(model, torch_device)
    model_digest = file_sha256(model)
    scans = {tp: load_float_image(path) for tp, path in timepoints.items()}
    brain = brain_intersection(*masks)
    n_samples = len(outputs["synthesised"])
    with cpu_threads(threads, torch_device):
        for index in range(n_samples):
            entropy = sample_seed(seed, subject, index)
            choices = draw_choices(entropy, settings)
            data, image = scans[choices.synthesised_timepoint]
            reference_tp = "followup" if choices.synthesised_timepoint == "baseline" else "baseline"
            sample = synthesise(
                data,
                brain,
                image.affine,
                vae,
                choices,
                settings,
                tiling=tiling,
                device=torch_device,
            )
            reference, _ = scans[reference_tp]
            save_nifti(
                sample.synthesised, image.affine, outputs["synthesised"][index], header=image.header
            )
            save_nifti(reference, image.affine, outputs["reference"][index], header=image.header)
            save_nifti(
                sample.label,
                image.affine,
                outputs["label"][index],
                header=image.header,
                dtype=np.uint8,
            )
            record = {
                "subject": subject,
                "sample": index,
                "config_seed": seed,
                "seed_entropy": entropy,
                **sample.record,
                "reference_timepoint": reference_tp,
                "inputs": {tp: str(path) for tp, path in timepoints.items()},
                "brain_masks": [str(m) for m in masks],
                "vae_model": {
                    "path": str(model),
                    "sha256": model_digest,
                    "encoder": metadata["architecture"]["encoder"],
                },
            }
            save_json(record, outputs["record"][index])
            log.info(
                "%s sample %d: %s synthesised, n_seg %d -> %d superpixels, %d replaced (%d voxels)",
                subject,
                index,
                choices.synthesised_timepoint,
                choices.n_segments,
                sample.record["n_superpixels"],
                len(sample.record["replaced_superpixels"]),
                sample.record["replaced_voxels"],
            )


def figures_step(
    scan: PathLike,
    masks: Sequence[PathLike],
    models: Mapping[str, PathLike],
    *,
    main_encoder: str,
    supermix_png: PathLike,
    encoders_png: PathLike,
    record_json: PathLike,
    seed: int,
    settings: SuperMixSettings,
    tiling: TilingSettings,
    n_segments: Sequence[int],
    deltas: Sequence[float],
    device: str,
    threads: int | None = None,
) -> None:
    """The Fig. 1 and supplement Fig. 1 analogues, from one preprocessed training scan."""
    from mschange.synthesis.figures import plot_encoder_comparison, plot_supermix_examples

    torch_device = resolve_device(device)
    data, image = load_float_image(scan)
    brain = brain_intersection(*masks)
    vaes = {name: load_vae(path, torch_device)[0] for name, path in models.items()}
    latent_seed = derived_seed(seed, "figures", "latent")
    draws_seed = derived_seed(seed, "figures", "replace")
    with cpu_threads(threads, torch_device):
        supermix = plot_supermix_examples(
            data,
            brain,
            image.affine,
            vaes[main_encoder],
            settings,
            n_segments,
            latent_seed=latent_seed,
            replace_draws_seed=draws_seed,
            png_path=supermix_png,
            tiling=tiling,
            device=torch_device,
        )
        encoders = plot_encoder_comparison(
            data,
            brain,
            image.affine,
            vaes,
            deltas,
            latent_seed=latent_seed,
            png_path=encoders_png,
            tiling=tiling,
            device=torch_device,
        )
    save_json(
        {
            "scan": str(scan),
            "config_seed": seed,
            "models": {name: str(path) for name, path in models.items()},
            "supermix_examples": supermix,
            "encoder_comparison": encoders,
        },
        record_json,
    )


def replay_step(
    record_json: PathLike,
    synthesised_output: PathLike,
    label_output: PathLike,
    *,
    device: str = "cpu",
) -> dict[str, Any]:
    """Rebuild a SuperMix sample from its JSON record (inputs and VAE read from the paths
    it names); refuses when the VAE file is not the one that made the sample."""
    from mschange.synthesis.supermix import replay

    record = json.loads(Path(record_json).read_text())
    model_path = record["vae_model"]["path"]
    if file_sha256(model_path) != record["vae_model"]["sha256"]:
        raise ValueError(
            f"{model_path} is not the VAE that made {record_json} (checksum "
            "differs; was it retrained?)"
        )
    torch_device = resolve_device(device)
    vae, _ = load_vae(model_path, torch_device)
    data, image = load_float_image(record["inputs"][record["synthesised_timepoint"]])
    brain = brain_intersection(*record["brain_masks"])
    sample = replay(record, data, brain, image.affine, vae, device=torch_device)
    save_nifti(sample.synthesised, image.affine, synthesised_output, header=image.header)
    save_nifti(sample.label, image.affine, label_output, header=image.header, dtype=np.uint8)
    return record


def lesion_figures_step(
    timepoints: Mapping[str, PathLike],
    masks: Sequence[PathLike],
    samples: Mapping[str, Sequence[PathLike]],
    *,
    png: PathLike,
    record_json: PathLike,
) -> dict[str, Any]:
    """Rule lesion_figures: real lesions of one training scan beside painted ones."""
    from mschange.synthesis.figures import plot_lesion_examples

    baseline, _ = load_float_image(timepoints["baseline"])
    followup, image = load_float_image(timepoints["followup"])
    painted = [
        (load_float_image(b)[0], load_float_image(f)[0], load_float_image(y)[0])
        for b, f, y in zip(samples["baseline"], samples["followup"], samples["label"], strict=True)
    ]
    record = plot_lesion_examples(
        baseline, followup, painted, brain_intersection(*masks), image.affine, png
    )
    record.update(
        {
            "inputs": {tp: str(path) for tp, path in timepoints.items()},
            "samples": {key: [str(p) for p in paths] for key, paths in samples.items()},
        }
    )
    save_json(record, record_json)
    return record
