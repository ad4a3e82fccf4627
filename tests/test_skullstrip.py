"""HD-BET's wrapper: the head box, the batch padding and the largest component
(HD-BET itself on real scans: tests/test_realdata.py; on the demo: the workflow tests)."""

from __future__ import annotations

import numpy as np
import pytest

from mschange.preprocessing.skullstrip import (
    HDBET_DIVISOR,
    HEAD_MARGIN_VOXELS,
    NoBrainFoundError,
    _padded_batch,
    head_box,
    largest_component,
)


def test_head_box_holds_the_head_and_a_margin_but_not_the_air():
    rng = np.random.default_rng(0)
    image = rng.normal(0.0, 0.01, (120, 110, 100)).astype(np.float32)
    image[30:70, 20:90, 40:75] += 1.0  # the head
    image[5, 5, 5] = 3.0  # one bright noise voxel far out must not stretch the box
    box = head_box(image)
    expected = [(30, 70), (20, 90), (40, 75)]
    for axis, (start, stop) in enumerate(expected):
        assert box[axis].start == start - HEAD_MARGIN_VOXELS
        assert box[axis].stop == stop + HEAD_MARGIN_VOXELS


def test_head_box_stops_at_the_image_edges_and_keeps_an_empty_image_whole():
    image = np.zeros((40, 40, 40), dtype=np.float32)
    image[0:20, 10:30, 25:40] = 1.0
    box = head_box(image)
    assert (box[0].start, box[2].stop) == (0, 40)
    assert head_box(np.zeros((8, 9, 10), np.float32)) == (slice(0, 8), slice(0, 9), slice(0, 10))


def test_padded_batch_zero_pads_every_crop_to_one_divisible_shape():
    crops = [np.ones((20, 33, 17), np.float32), 2 * np.ones((40, 10, 16), np.float32)]
    batch = _padded_batch(crops, min_shape=(32, 32, 32))
    assert batch.shape == (2, 1, 48, 48, 32)
    assert all(n % HDBET_DIVISOR == 0 for n in batch.shape[2:])
    assert batch[0, 0, :20, :33, :17].min() == 1.0 and batch[0, 0, 20:].max() == 0.0
    assert batch[1, 0, :40, :10, :16].min() == 2.0 and batch[1, 0, :, 10:].max() == 0.0


def test_largest_component_keeps_the_brain_and_names_an_empty_mask():
    mask = np.zeros((20, 20, 20), dtype=bool)
    mask[2:12, 2:12, 2:12] = True
    mask[15:18, 15:18, 15:18] = True
    kept = largest_component(mask)
    assert kept.sum() == 1000 and not kept[16, 16, 16]
    # Touching at a corner only is still one component (26-connectivity, as HD-BET).
    mask[12, 12, 12] = mask[13, 13, 13] = mask[14, 14, 14] = True
    assert largest_component(mask)[16, 16, 16]
    with pytest.raises(NoBrainFoundError, match="no brain"):
        largest_component(np.zeros((5, 5, 5), dtype=bool))


@pytest.mark.parametrize("content", ["zeros", "noise"])
def test_a_scan_without_a_brain_is_a_named_input_error(tmp_path, content):
    import nibabel as nib

    from mschange.io import InputError
    from mschange.preprocessing.steps import skullstrip_step

    rng = np.random.default_rng(0)
    data = (
        np.zeros((40, 40, 20), np.float32)
        if content == "zeros"
        else rng.random((40, 40, 20), dtype=np.float32)
    )
    scan = tmp_path / "resampled.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), scan)
    with pytest.raises(InputError) as caught:
        skullstrip_step(
            scan,
            tmp_path / "brain.nii.gz",
            tmp_path / "mask.nii.gz",
            subject="p9",
            source="/data/p9_flair.nii.gz",
        )
    message = str(caught.value)
    assert "subject 'p9'" in message and "/data/p9_flair.nii.gz" in message
    assert "no brain found" in message
    assert not (tmp_path / "brain.nii.gz").exists() and not (tmp_path / "mask.nii.gz").exists()
