"""File-level preprocessing steps: paths in, paths out.

Each function is one workflow rule (called by a thin script in ``scripts/``) and
also usable on its own. Inputs are checked on entry, so a bad file fails here with
the subject and the file named; outputs are written atomically.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt

from mschange.io import InputError, load_checked_image, save_json, save_nifti, voxel_sizes
from mschange.preprocessing.bias import n4_correct
from mschange.preprocessing.normalize import normalize_percentiles
from mschange.preprocessing.register import register_rigid
from mschange.preprocessing.resample import resample_isotropic
from mschange.preprocessing.skullstrip import HdBetMode, NoBrainFoundError, skullstrip
from mschange.qc import brain_volume_ml, plot_pair_qc, registration_correlation

log = logging.getLogger(__name__)
PathLike = str | os.PathLike[str]

# A brain mask smaller than this is not a brain (an adult brain is 1,000-1,600 ml; the QC
# flags anything under qc.min_brain_ml): HD-BET latched onto noise or a fragment.
MIN_BRAIN_ML = 100.0
# After a rigid registration of two scans of one head the two brain masks overlap by a Dice
# of 0.9 or more (0.97-0.98 on the development pairs); below this the registration failed.
MIN_REGISTERED_BRAIN_DICE = 0.5


class RegistrationError(RuntimeError):
    """The rigid registration of a pair failed; the message names the pair."""


def dice(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    """Dice overlap of two masks (1: identical; 0 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int(np.logical_and(a, b).sum()) / total if total else 0.0


def _load(path: PathLike) -> nib.Nifti1Image:
    """Load a pipeline intermediate (already checked when it was an input)."""
    image = nib.load(path)
    assert isinstance(image, nib.Nifti1Image)
    return image


def resample_step(
    scan: PathLike, output: PathLike, *, subject: str, resolution_mm: float, order: int = 1
) -> None:
    image = load_checked_image(scan, subject)
    log.info(
        "%s: %s, shape %s, voxels %s mm",
        subject,
        scan,
        image.shape,
        np.round(voxel_sizes(image.affine), 3).tolist(),
    )
    resampled = resample_isotropic(image, resolution_mm, order=order)
    log.info("resampled to %s mm: shape %s", resolution_mm, resampled.shape)
    save_nifti(resampled.get_fdata(dtype=np.float32), resampled.affine, output, header=image.header)


def skullstrip_step(
    scan: PathLike,
    brain_output: PathLike,
    mask_output: PathLike,
    *,
    subject: str,
    mode: HdBetMode = "fast",
    device: str = "cpu",
    tta: bool = False,
    threads: int | None = None,
    source: PathLike | None = None,
) -> None:
    """HD-BET on one resampled scan. ``source``: the raw scan it came from, named in the
    error when no brain is found (the file a user can open)."""
    image = _load(scan)
    try:
        brain, mask = skullstrip(image, mode=mode, device=device, tta=tta, threads=threads)
        volume = brain_volume_ml(mask, image.affine)
        if volume < MIN_BRAIN_ML:
            raise NoBrainFoundError(f"HD-BET's brain mask holds only {volume:.1f} ml")
    except NoBrainFoundError as error:
        raise InputError(
            f"no brain found ({error}): open the scan and check that it is a whole-head "
            "FLAIR (not a localiser, a mask or a blank series), that its orientation "
            "(affine) is right, and that it is not mostly noise",
            source or scan,
            subject,
        ) from None
    log.info("%s: HD-BET (%s, tta=%s, %s) brain volume %.0f ml", subject, mode, tta, device, volume)
    # Same header and affine as the input: the mask must overlay it exactly.
    save_nifti(brain, image.affine, brain_output, header=image.header)
    save_nifti(
        mask.astype(np.uint8), image.affine, mask_output, header=image.header, dtype=np.uint8
    )


def register_step(
    *,
    followup_brain: PathLike,
    baseline_brain: PathLike,
    baseline_mask: PathLike,
    transform_output: PathLike,
    moved_brain_output: PathLike,
    moved_mask_output: PathLike,
    subject: str,
    transform: str = "Rigid",
    sampling_points: int = 225000,
    seed: int = 1,
    threads: int | None = None,
) -> None:
    fixed = _load(followup_brain)
    moving = _load(baseline_brain)
    mask = _load(baseline_mask)
    fixed_data = fixed.get_fdata(dtype=np.float32)
    try:
        result = register_rigid(
            fixed_data,
            fixed.affine,
            moving.get_fdata(dtype=np.float32),
            moving.affine,
            np.asarray(mask.dataobj),
            transform_output,
            transform_type=transform,
            sampling_points=sampling_points,
            seed=seed,
            threads=threads,
        )
    except RuntimeError as error:  # ANTs reports its failures as RuntimeError
        raise RegistrationError(
            f"subject {subject!r}: registering the baseline "
            f"{str(baseline_brain)!r} onto the follow-up failed "
            f"({error})"
        ) from None
    overlap = dice(result.moved_mask, fixed_data > 0)
    if overlap < MIN_REGISTERED_BRAIN_DICE:
        raise RegistrationError(
            f"subject {subject!r}: the registered baseline brain overlaps the follow-up "
            f"brain by a Dice of only {overlap:.2f} (a good rigid registration gives 0.9 "
            f"or more): the registration failed. Check that both scans show the same head "
            f"and cover the same part of it ({baseline_brain}, {followup_brain})"
        )
    log.info("%s: registered brains overlap by a Dice of %.3f", subject, overlap)
    log.info(
        "%s: baseline registered onto follow-up (%s), transform %s",
        subject,
        transform,
        transform_output,
    )
    save_nifti(result.moved_image, fixed.affine, moved_brain_output, header=fixed.header)
    save_nifti(
        result.moved_mask.astype(np.uint8),
        fixed.affine,
        moved_mask_output,
        header=fixed.header,
        dtype=np.uint8,
    )


def n4_step(
    brain: PathLike,
    mask: PathLike,
    output: PathLike,
    *,
    subject: str,
    shrink_factor: int = 4,
    iterations: Sequence[int] = (50, 50, 30),
    convergence: float = 1e-3,
    threads: int | None = None,
) -> None:
    image = _load(brain)
    brain_mask = np.asarray(_load(mask).dataobj) > 0
    corrected, field = n4_correct(
        image.get_fdata(dtype=np.float32),
        image.affine,
        brain_mask,
        shrink_factor=shrink_factor,
        iterations=iterations,
        convergence=convergence,
        threads=threads,
    )
    inside = field[brain_mask]
    log.info(
        "%s: N4 bias field inside the brain: %.3f to %.3f", subject, inside.min(), inside.max()
    )
    save_nifti(corrected, image.affine, output, header=image.header)


def normalize_step(
    brain: PathLike,
    mask: PathLike,
    output: PathLike,
    *,
    subject: str,
    low_percentile: float = 0.0,
    high_percentile: float = 99.0,
) -> None:
    image = _load(brain)
    normalized, (low, high) = normalize_percentiles(
        image.get_fdata(dtype=np.float32),
        np.asarray(_load(mask).dataobj),
        low_percentile=low_percentile,
        high_percentile=high_percentile,
    )
    log.info(
        "%s: intensities [%g, %g] (percentiles %g, %g) mapped to [0, 1]",
        subject,
        low,
        high,
        low_percentile,
        high_percentile,
    )
    save_nifti(normalized, image.affine, output, header=image.header)


def qc_pair_step(
    followup: PathLike,
    baseline: PathLike,
    followup_mask: PathLike,
    baseline_mask: PathLike,
    png_output: PathLike,
    json_output: PathLike,
    *,
    subject: str,
    extra: dict[str, Any] | None = None,
    min_similarity: float | None = None,
    max_contrast: float | None = None,
) -> None:
    """QC figure and numbers of one preprocessed pair (both on the follow-up grid).

    The numbers: brain volumes, the registration similarity (rank correlation,
    contrast-robust), the contrast difference of the two time points and, for
    comparison, their Pearson correlation. With the config's thresholds
    (``min_similarity``, ``max_contrast``) the figure's title also says which check
    failed; the cohort table (:mod:`mschange.qc_report`) flags the same.
    """
    from mschange.qc import (
        contrast_difference,
        contrast_flag,
        registration_flag,
        registration_similarity,
    )

    fu_image = _load(followup)
    fu = fu_image.get_fdata(dtype=np.float32)
    bl = _load(baseline).get_fdata(dtype=np.float32)
    fu_mask = np.asarray(_load(followup_mask).dataobj) > 0
    bl_mask = np.asarray(_load(baseline_mask).dataobj) > 0
    similarity = registration_similarity(fu, bl, fu_mask & bl_mask)
    contrast = contrast_difference(fu, bl, fu_mask, bl_mask)
    correlation = registration_correlation(fu, bl, fu_mask & bl_mask)
    row = {
        "subject": subject,
        "brain_volume_ml_followup": brain_volume_ml(fu_mask, fu_image.affine),
        "brain_volume_ml_baseline": brain_volume_ml(bl_mask, fu_image.affine),
        "registration_similarity": similarity,
        "contrast_difference": contrast,
        "registration_correlation": correlation,
        **(extra or {}),
    }
    log.info("%s: %s", subject, row)
    title = (
        f"sub-{subject}: registration similarity (rank correlation) {similarity:.3f}, "
        f"contrast difference {contrast:.3f}"
    )
    if min_similarity is not None and max_contrast is not None:
        reasons = {
            "registration": registration_flag(similarity, min_similarity),
            "contrast": contrast_flag(contrast, max_contrast),
        }
        failed = [name for name, reason in reasons.items() if reason]
        title += f"\nQC: check {' and '.join(failed)}" if failed else "\nQC: passed"
        for name in failed:
            log.warning("%s: %s", subject, reasons[name])
    plot_pair_qc(fu, bl, fu_mask, png_output, title=title)
    save_json(row, json_output)
