"""Report figures of the synthesis stage: analogues of To et al. Fig. 1 and supplement Fig. 1."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from mschange.imagespace import to_ras_axes
from mschange.io import atomic_path
from mschange.synthesis.reconstruction import DEFAULT_TILING, TilingSettings, reconstruct_volume
from mschange.synthesis.supermix import SampleChoices, SuperMixSettings, synthesise
from mschange.synthesis.vae import Vae3d


def _axial(
    volume: npt.NDArray[Any], affine: npt.NDArray[np.floating[Any]], k: int
) -> npt.NDArray[Any]:
    ras, _ = to_ras_axes(volume, affine)
    return np.flipud(ras[:, :, k].T)  # anterior up, patient's right on the left


def _busiest_axial_slice(
    label: npt.NDArray[Any], affine: npt.NDArray[np.floating[Any]], fallback: npt.NDArray[Any]
) -> int:
    """The axial slice with the most changed voxels (else the brain's middle slice)."""
    ras, _ = to_ras_axes(label if np.any(label) else fallback, affine)
    counts = np.asarray(ras > 0).sum(axis=(0, 1))
    if np.any(label):
        return int(np.argmax(counts))
    return int(np.average(np.arange(counts.size), weights=counts))


def _save(figure: Any, path: str | os.PathLike[str]) -> Path:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp)
    plt.close(figure)
    return Path(path)


def plot_supermix_examples(
    scan: npt.NDArray[Any],
    mask: npt.NDArray[Any],
    affine: npt.NDArray[np.floating[Any]],
    model: Vae3d,
    settings: SuperMixSettings,
    n_segments: Sequence[int],
    *,
    latent_seed: int,
    replace_draws_seed: int,
    png_path: str | os.PathLike[str],
    tiling: TilingSettings = DEFAULT_TILING,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Fig. 1 analogue: per ``n_seg``, the perturbed reconstruction with the SuperMix mask
    (top) and the synthesised scan (bottom). Returns the choices, for the figure's record."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = len(n_segments)
    figure, axes = plt.subplots(2, columns, figsize=(3.2 * columns, 6.6), dpi=100, squeeze=False)
    records = []
    # Only the superpixels change between columns: one reconstruction serves them all.
    reconstruction = reconstruct_volume(
        model,
        scan,
        mask,
        affine,
        seed=latent_seed,
        delta=settings.delta,
        tiling=tiling,
        device=device,
    )
    for column, n in enumerate(n_segments):
        choices = SampleChoices(
            synthesised_timepoint="followup",
            n_segments=int(n),
            latent_seed=latent_seed,
            replace_draws_seed=replace_draws_seed,
        )
        sample = synthesise(
            scan,
            mask,
            affine,
            model,
            choices,
            settings,
            tiling=tiling,
            device=device,
            reconstruction=reconstruction,
        )
        k = _busiest_axial_slice(sample.label, affine, mask)
        top, bottom = axes[0, column], axes[1, column]
        top.imshow(_axial(sample.reconstruction, affine, k), cmap="gray", vmin=0, vmax=1.2)
        top.contour(_axial(sample.label, affine, k), levels=[0.5], colors="red", linewidths=0.8)
        top.set_title(
            f"n_seg = {n}: reconstruction x~\n(delta = {settings.delta:g}), SuperMix mask",
            fontsize=9,
        )
        bottom.imshow(_axial(sample.synthesised, affine, k), cmap="gray", vmin=0, vmax=1.2)
        bottom.set_title(
            f"synthesised x' ({sample.record['replaced_voxels']} voxels changed)", fontsize=9
        )
        for axis in (top, bottom):
            axis.axis("off")
        records.append(
            {
                "n_segments": int(n),
                "axial_slice_ras": k,
                "n_superpixels": sample.record["n_superpixels"],
                "replaced_superpixels": sample.record["replaced_superpixels"],
                "replaced_voxels": sample.record["replaced_voxels"],
            }
        )
    _save(figure, png_path)
    return {
        "latent_seed": latent_seed,
        "replace_draws_seed": replace_draws_seed,
        "columns": records,
    }


def plot_encoder_comparison(
    scan: npt.NDArray[Any],
    mask: npt.NDArray[Any],
    affine: npt.NDArray[np.floating[Any]],
    models: Mapping[str, Vae3d],
    deltas: Sequence[float],
    *,
    latent_seed: int,
    png_path: str | os.PathLike[str],
    tiling: TilingSettings = DEFAULT_TILING,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Supplement Fig. 1 analogue: per encoder, the plain reconstruction and perturbed ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 2 + len(deltas)
    figure, axes = plt.subplots(
        len(models), columns, figsize=(3.0 * columns, 3.2 * len(models)), dpi=100, squeeze=False
    )
    k = _busiest_axial_slice(np.zeros_like(mask), affine, mask)
    for row, (name, model) in enumerate(models.items()):
        panels = [
            ("input x", scan),
            (
                "reconstruction g(mu)",
                reconstruct_volume(
                    model,
                    scan,
                    mask,
                    affine,
                    seed=latent_seed,
                    delta=None,
                    tiling=tiling,
                    device=device,
                    sample=False,
                ),
            ),
        ]
        panels += [
            (
                f"perturbed, delta = {delta:g}",
                reconstruct_volume(
                    model,
                    scan,
                    mask,
                    affine,
                    seed=latent_seed,
                    delta=delta,
                    tiling=tiling,
                    device=device,
                ),
            )
            for delta in deltas
        ]
        for column, (title, volume) in enumerate(panels):
            axis = axes[row, column]
            axis.imshow(_axial(volume, affine, k), cmap="gray", vmin=0, vmax=1.2)
            axis.set_title(
                f"VAE ({name})\n{title}" if column else f"VAE ({name}): {title}", fontsize=9
            )
            axis.axis("off")
    _save(figure, png_path)
    return {
        "latent_seed": latent_seed,
        "deltas": list(deltas),
        "axial_slice_ras": k,
        "encoders": list(models),
    }


def _component_crops(
    image: npt.NDArray[Any], components: npt.NDArray[Any], ids: Sequence[int], half: int
) -> list[tuple[npt.NDArray[Any], npt.NDArray[Any]]]:
    """Axial crops (RAS arrays) through each component's centre: image and its outline."""
    from scipy import ndimage

    crops = []
    for index in ids:
        centre = [round(float(c)) for c in ndimage.center_of_mass(components == index)]
        i, j, k = centre
        window = (slice(max(i - half, 0), i + half), slice(max(j - half, 0), j + half), k)
        crops.append((np.flipud(image[window].T), np.flipud((components[window] == index).T)))
    return crops


def plot_lesion_examples(
    baseline: npt.NDArray[Any],
    followup: npt.NDArray[Any],
    painted: Sequence[tuple[npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any]]],
    brain: npt.NDArray[Any],
    affine: npt.NDArray[np.floating[Any]],
    png_path: str | os.PathLike[str],
    *,
    n_examples: int = 4,
    crop_mm: int = 40,
) -> dict[str, Any]:
    """Real lesions of a scan beside lesions painted into the same scan, on axial crops
    at the same scale and intensity window: top, the scan's largest hyperintensities (its
    lesions where it has large ones, else the brightest cortex);
    middle, the largest painted lesions in the time point they were painted into, the
    label outlined; bottom, the same crops before painting.

    ``painted`` holds (baseline, follow-up, label) of painted samples of this pair.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import ndimage

    half = crop_mm // 2
    ras = {
        tp: to_ras_axes(np.asarray(data, np.float32), affine)[0]
        for tp, data in (("baseline", baseline), ("followup", followup))
    }
    ras_brain, _ = to_ras_axes(np.asarray(brain) > 0, affine)
    interior = ndimage.binary_erosion(ras_brain, iterations=6)
    # Normalised scans are clipped at their 99th percentile: the lesions sit at the top.
    bright = interior & (ras["followup"] >= np.percentile(ras["followup"][ras_brain], 99.0))
    components, n = ndimage.label(bright, np.ones((3, 3, 3), bool))
    sizes = np.bincount(components.ravel(), minlength=n + 1)[1:]
    real_ids = [int(i) + 1 for i in np.argsort(sizes)[::-1][:n_examples] if sizes[i] >= 10]
    real = _component_crops(ras["followup"], components, real_ids, half)

    # Every painted lesion of every sample, largest first.
    candidates: list[tuple[int, int, int, str]] = []  # voxels, sample, component, time point
    labelled = []
    for index, (sample_baseline, sample_followup, label) in enumerate(painted):
        ras_label, _ = to_ras_axes(np.asarray(label) > 0, affine)
        lesions, count = ndimage.label(ras_label, np.ones((3, 3, 3), bool))
        ras_bl, _ = to_ras_axes(np.asarray(sample_baseline, np.float32), affine)
        ras_pfu, _ = to_ras_axes(np.asarray(sample_followup, np.float32), affine)
        labelled.append((lesions, ras_bl, ras_pfu))
        for component in range(1, count + 1):
            where = lesions == component
            darker = float((ras_pfu[where] - ras_bl[where]).mean()) < 0
            candidates.append(
                (int(where.sum()), index, component, "baseline" if darker else "followup")
            )
    after, before, titles = [], [], []
    for voxels, index, component, timepoint in sorted(candidates, reverse=True)[:n_examples]:
        lesions, ras_bl, ras_pfu = labelled[index]
        image = ras_bl if timepoint == "baseline" else ras_pfu
        after.append(_component_crops(image, lesions, [component], half)[0])
        before.append(_component_crops(ras[timepoint], lesions, [component], half)[0])
        titles.append(f"painted at {timepoint} ({voxels} mm3)")

    low, high = np.percentile(ras["followup"][ras_brain], [1, 99.8])
    columns = max(len(real), len(after), 1)
    figure, axes = plt.subplots(3, columns, figsize=(2.3 * columns, 7.2), dpi=110, squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for axis, (crop, _) in zip(axes[0], real, strict=False):
        axis.imshow(crop, cmap="gray", vmin=low, vmax=high)
        axis.set_title("real lesion", fontsize=8)
    for row, crops in ((1, after), (2, before)):
        for axis, (crop, outline), title in zip(axes[row], crops, titles, strict=False):
            axis.imshow(crop, cmap="gray", vmin=low, vmax=high)
            axis.contour(outline, levels=[0.5], colors="red", linewidths=0.6)
            axis.set_title(title if row == 1 else "before painting", fontsize=7)
    figure.suptitle(
        f"Real lesions of one scan (top), the largest lesions painted into it "
        f"(middle, label in red) and the same place before (bottom); axial "
        f"crops of {crop_mm} mm",
        fontsize=8,
    )
    _save(figure, png_path)
    return {
        "real_lesions": len(real),
        "painted_lesions_shown": len(after),
        "painted_lesions": len(candidates),
        "intensity_window": [float(low), float(high)],
    }
