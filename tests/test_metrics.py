"""Lesion-change metrics (MSSEG-2, To et al., Krueger et al.) and their aggregation.

Every expected value is worked out by hand in a comment next to the case, from the
rules in docs/metrics.md, on 12^3 masks built from boxes.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage, stats

from mschange.evaluation.metrics import (
    METRIC_COLUMNS,
    MetricSettings,
    direction_masks,
    krueger_scores,
    msseg2_scores,
    score_pair,
    to_scores,
)
from mschange.evaluation.statistics import paired_wilcoxon, summarise

SHAPE = (12, 12, 12)
NAN = float("nan")


def boxes(*regions: tuple[slice | int, ...]) -> np.ndarray:
    """A 12^3 mask that is the union of the given index boxes."""
    mask = np.zeros(SHAPE, dtype=bool)
    for region in regions:
        mask[region] = True
    return mask


def raster_blob(
    corner: tuple[int, int, int], extent: tuple[int, int, int], voxels: int
) -> np.ndarray:
    """``voxels`` voxels filling a box in raster order: one 6-connected component."""
    mask = np.zeros(SHAPE, dtype=bool)
    region = tuple(slice(c, c + e) for c, e in zip(corner, extent, strict=True))
    block = np.zeros(extent, dtype=bool)
    block.flat[:voxels] = True
    mask[region] = block
    return mask


def check(scores: dict[str, float], expected: dict[str, float]) -> None:
    """Each expected value, NaN included, exactly (to rounding)."""
    for key, value in expected.items():
        if math.isnan(value):
            assert math.isnan(scores[key]), f"{key} = {scores[key]}, expected NaN"
        else:
            assert scores[key] == pytest.approx(value, abs=1e-12), key


# Two lesions, both big enough for every filter: 27 and 18 voxels.
TWO_LESIONS = boxes(np.s_[1:4, 1:4, 1:4], np.s_[6:8, 6:9, 6:9])


# ---- The checks listed at the end of the specification -------------------------------


def test_identical_masks_score_one_and_no_false_positive():
    scores = score_pair(TWO_LESIONS, TWO_LESIONS, 1.0)
    ones = [
        "msseg_dice",
        "msseg_sensitivity",
        "msseg_ppv",
        "msseg_f1",
        "to_ltpr",
        "to_ppv",
        "krueger_sensitivity",
        "krueger_dice",
    ]
    check(scores, dict.fromkeys(ones, 1.0))
    check(
        scores,
        {
            "krueger_fp_count": 0.0,
            "krueger_fpr": 0.0,
            "to_lfpr": 0.0,
            "truth_lesions": 2.0,
            "msseg_truth_lesions": 2.0,
            "krueger_truth_lesions": 2.0,
            "to_tp_truth": 2.0,
            "truth_volume_mm3": 45.0,
            # false positives are only counted for pairs without truth lesions
            "msseg_fp_count": NAN,
            "msseg_fp_volume_mm3": NAN,
        },
    )


def test_empty_prediction_on_lesions_scores_zero():
    scores = score_pair(TWO_LESIONS, np.zeros(SHAPE, bool), 1.0)
    check(
        scores,
        {
            "msseg_sensitivity": 0.0,
            "msseg_dice": 0.0,
            "msseg_ppv": 0.0,
            "msseg_f1": 0.0,
            "to_ltpr": 0.0,
            "krueger_sensitivity": 0.0,
            "krueger_dice": 0.0,
            "krueger_fp_count": 0.0,
            "krueger_fpr": 0.0,
            # no predicted blob: To et al.'s PPV and LFPR are undefined
            "to_ppv": NAN,
            "to_lfpr": NAN,
            "msseg_fp_count": NAN,
            "predicted_lesions": 0.0,
            "predicted_volume_mm3": 0.0,
        },
    )


def test_blob_of_3_mm3_is_invisible_to_msseg_detection_but_not_to_dice():
    cube = np.s_[1:4, 1:4, 1:4]  # 27 voxels, found exactly
    truth = boxes(cube, np.s_[8, 8, 8:11])  # + a missed 3-voxel lesion
    prediction = boxes(cube, np.s_[8, 1, 8:11])  # + a 3-voxel false positive
    scores = msseg2_scores(truth, prediction, 1.0)
    # Both 3 mm^3 blobs are dropped: 1 of 1 lesion found, 1 of 1 prediction right
    # (counted, they would give 1/2 and 1/2). Dice keeps them: 2*27 / (30 + 30) = 0.9.
    check(
        scores,
        {
            "msseg_sensitivity": 1.0,
            "msseg_ppv": 1.0,
            "msseg_f1": 1.0,
            "msseg_truth_lesions": 1.0,
            "msseg_predicted_lesions": 1.0,
            "msseg_dice": 0.9,
        },
    )
    assert score_pair(truth, prediction, 1.0)["truth_lesions"] == 2.0  # unfiltered count


def test_lesion_split_into_two_predictions_makes_both_true_positives():
    truth = boxes(np.s_[2:5, 2:5, 1:7])  # 54 voxels
    prediction = boxes(np.s_[2:5, 2:5, 1:3], np.s_[2:5, 2:5, 5:7])  # 18 + 18, inside
    scores = score_pair(truth, prediction, 1.0)
    # Lesion: covered 36/54 > 0.1; both parts 0 % outside -> detected.
    # Each part: 100 % inside; the lesion is 18/54 = 1/3 <= 0.7 uncovered -> TP, PPVL 2/2.
    # Dice 2*36 / (54 + 36) = 0.8. To et al.: IoU of each part 18/54 -> both TP.
    check(
        scores,
        {
            "msseg_sensitivity": 1.0,
            "msseg_ppv": 1.0,
            "msseg_f1": 1.0,
            "msseg_predicted_lesions": 2.0,
            "msseg_dice": 0.8,
            "to_ppv": 1.0,
            "to_tp_predicted": 2.0,
            "krueger_fp_count": 0.0,
        },
    )


def test_prediction_mostly_outside_detects_for_iou_and_any_overlap_only():
    truth = boxes(np.s_[2:4, 2:4, 0:5])  # 2*2*5 = 20 voxels
    prediction = boxes(np.s_[0:10, 2:3, 0:5])  # 10*1*5 = 50 voxels, 2*1*5 = 10 shared
    scores = score_pair(truth, prediction, 1.0)
    # MSSEG-2, lesion: covered 10/20 = 0.5 > 0.1, but the prediction is 40/50 = 0.8
    # > 0.7 outside -> not detected. The prediction itself: 10/50 = 0.2 > 0.1 inside and
    # the lesion is 10/20 = 0.5 <= 0.7 uncovered -> a TP; F1 = 2*0*1 / 1 = 0.
    # To et al.: IoU 10 / (20 + 50 - 10) = 1/6 >= 0.01. Krueger: overlaps, so found;
    # Dice over the two touching lesions 2*10 / (20 + 50) = 2/7.
    check(
        scores,
        {
            "msseg_sensitivity": 0.0,
            "msseg_ppv": 1.0,
            "msseg_f1": 0.0,
            "msseg_dice": 2 / 7,
            "to_ltpr": 1.0,
            "to_ppv": 1.0,
            "krueger_sensitivity": 1.0,
            "krueger_fp_count": 0.0,
            "krueger_dice": 2 / 7,
        },
    )


def test_corner_touching_voxels_are_two_msseg_lesions_and_one_for_the_others():
    truth = boxes(np.s_[0:3, 0:3, 0:3], np.s_[3:6, 3:6, 3:6])  # meet at one corner only
    scores = score_pair(truth, truth, 1.0)
    check(
        scores,
        {
            "msseg_truth_lesions": 2.0,
            "to_truth_blobs": 1.0,
            "krueger_truth_lesions": 1.0,
            "truth_lesions": 1.0,
        },
    )
    joined = msseg2_scores(truth, truth, 1.0, MetricSettings(msseg_connectivity=26))
    assert joined["msseg_truth_lesions"] == 1.0


# ---- Hand-built cases, family by family ---------------------------------------------


def test_two_lesions_one_found_two_false_positive_blobs():
    lesion_1, lesion_2 = np.s_[1:4, 1:4, 1:4], np.s_[7:10, 7:10, 7:10]  # 27 + 27
    found = np.s_[1:4, 1:4, 2:5]  # 27, shares z = 2, 3 with lesion 1: 18 voxels
    false_1 = np.s_[8:11, 1:3, 8:10]  # 3*2*2 = 12, touches nothing
    false_2 = np.s_[1:3, 8:11, 8:10]  # 12, touches nothing
    truth = boxes(lesion_1, lesion_2)
    prediction = boxes(found, false_1, false_2)
    scores = score_pair(truth, prediction, 2.0)  # 2 mm^3 voxels
    # MSSEG-2 (min 2 voxels): lesion 1 covered 18/27 > 0.1, `found` 9/27 outside <= 0.7
    # -> detected; lesion 2 untouched. SensL 1/2. `found`: 18/27 inside, lesion 1 is
    # 9/27 uncovered -> TP; PPVL 1/3. F1 = 2 (1/2)(1/3) / (1/2 + 1/3) = 0.4.
    # Dice 2*18 / (54 + 51) = 36/105.
    # To et al.: IoU(lesion 1, found) = 18 / (27 + 27 - 18) = 0.5 -> LTPR 1/2, PPV 1/3,
    # LFPR 2/3. Krueger: sensitivity 1/2, FP 2, FPR 2/2 = 1, Dice over lesion 1 and
    # `found` only: 2*18 / (27 + 27) = 2/3.
    check(
        scores,
        {
            "truth_lesions": 2.0,
            "predicted_lesions": 3.0,
            "truth_volume_mm3": 108.0,
            "predicted_volume_mm3": 102.0,
            "msseg_sensitivity": 0.5,
            "msseg_ppv": 1 / 3,
            "msseg_f1": 0.4,
            "msseg_dice": 36 / 105,
            "msseg_truth_lesions": 2.0,
            "msseg_predicted_lesions": 3.0,
            "msseg_fp_count": NAN,
            "msseg_fp_volume_mm3": NAN,
            "to_ltpr": 0.5,
            "to_ppv": 1 / 3,
            "to_lfpr": 2 / 3,
            "to_truth_blobs": 2.0,
            "to_predicted_blobs": 3.0,
            "to_tp_truth": 1.0,
            "to_tp_predicted": 1.0,
            "krueger_sensitivity": 0.5,
            "krueger_fp_count": 2.0,
            "krueger_fpr": 1.0,
            "krueger_dice": 2 / 3,
            "krueger_truth_lesions": 2.0,
            "krueger_predicted_lesions": 3.0,
        },
    )


# One 40-voxel lesion along x (x 1..10, 2*2 cross-section), walked by MSSEG-2.
LONG_LESION = np.s_[1:11, 2:4, 2:4]


@pytest.mark.parametrize(
    ("inside", "far_part", "detected"),
    [
        # A: P1 covers x 1..5 (20), P2 covers x 7..8 (8) and is 24/32 = 0.75 outside.
        #    C = 28; walking P1 gives w = 20/28 = 0.714 >= 0.65: the walk stops before P2.
        (np.s_[1:6, 2:4, 2:4], np.s_[7:9, 2:10, 2:4], 1.0),
        # B: P1 covers x 1..3 (12); C = 20, w = 12/20 = 0.6 < 0.65, so P2 (0.75 > 0.7) is
        #    reached and the lesion is not detected.
        (np.s_[1:4, 2:4, 2:4], np.s_[7:9, 2:10, 2:4], 0.0),
    ],
)
def test_msseg_gamma_walk_stops_before_or_reaches_a_far_component(inside, far_part, detected):
    truth = boxes(LONG_LESION)
    prediction = boxes(inside, far_part)
    scores = msseg2_scores(truth, prediction, 1.0)
    # Both predictions are TPs either way: P1 is all inside, P2 is 8/32 = 0.25 > 0.1
    # inside, and the lesion is at most 20/40 = 0.5 <= 0.7 uncovered.
    check(
        scores,
        {
            "msseg_sensitivity": detected,
            "msseg_ppv": 1.0,
            "msseg_f1": detected,
            "msseg_predicted_lesions": 2.0,
        },
    )


@pytest.mark.parametrize(
    ("extra", "detected"),
    [
        # P1 covers x 1..4 (16); P2 covers x 7..9 (12) plus 2*7*2 = 28 outside: 28/40 = 0.7
        # exactly outside, which is allowed (<= beta). C = 28, w = 16/28 < 0.65 -> P2 walked.
        ((), 1.0),
        # One more voxel outside: 29/41 > 0.7 -> not detected.
        ((9, 4, 2), 0.0),
    ],
)
def test_msseg_beta_is_inclusive(extra, detected):
    truth = boxes(LONG_LESION)
    prediction = boxes(np.s_[1:5, 2:4, 2:4], np.s_[7:10, 2:4, 2:4], np.s_[7:9, 4:11, 2:4])
    if extra:
        prediction[extra] = True
    assert msseg2_scores(truth, prediction, 1.0)["msseg_sensitivity"] == detected


@pytest.mark.parametrize(("covered", "sensitivity"), [(4, 0.0), (5, 1.0)])
def test_msseg_alpha_is_strict(covered, sensitivity):
    # A prediction wholly inside the 40-voxel lesion covering 4/40 = 0.1 (not > alpha)
    # or 5/40 = 0.125. Either way the lesion is >= 35/40 > 0.7 uncovered, so the
    # prediction is no TP: PPVL 0.
    truth = boxes(LONG_LESION)
    prediction = raster_blob((1, 2, 2), (2, 2, 2), covered)
    scores = msseg2_scores(truth, prediction, 1.0)
    check(scores, {"msseg_sensitivity": sensitivity, "msseg_ppv": 0.0, "msseg_f1": 0.0})


def test_msseg_prediction_leaving_most_of_a_lesion_uncovered_is_no_true_positive():
    truth = boxes(np.s_[1:4, 1:4, 0:10])  # 90 voxels
    prediction = boxes(np.s_[1:4, 1:4, 0:1], np.s_[1:4, 1:4, 9:10])  # 9 + 9, inside
    scores = msseg2_scores(truth, prediction, 1.0)
    # Lesion: covered 18/90 = 0.2 > 0.1, predictions 0 % outside -> detected. Each
    # prediction: all inside, but the lesion is 72/90 = 0.8 > 0.7 uncovered -> no TP.
    check(scores, {"msseg_sensitivity": 1.0, "msseg_ppv": 0.0, "msseg_f1": 0.0})


def test_volume_filters_at_their_boundaries_with_half_mm3_voxels():
    # 6, 7, 19 and 20 voxels of 0.5 mm^3: 3, 3.5, 9.5 and 10 mm^3, in separate planes.
    blobs = (
        raster_blob((0, 0, 0), (1, 1, 6), 6)
        | raster_blob((2, 0, 0), (1, 1, 7), 7)
        | raster_blob((4, 0, 0), (1, 2, 10), 19)
        | raster_blob((6, 0, 0), (1, 2, 10), 20)
    )
    empty = np.zeros(SHAPE, dtype=bool)
    as_prediction = score_pair(empty, blobs, 0.5)
    # MSSEG-2 keeps >= floor(3/0.5) + 1 = 7 voxels: 3 blobs, 46 voxels = 23 mm^3.
    # Krueger keeps >= 10 mm^3: the 20-voxel blob only. To et al. filters nothing.
    check(
        as_prediction,
        {
            "predicted_lesions": 4.0,
            "predicted_volume_mm3": 26.0,
            "msseg_predicted_lesions": 3.0,
            "msseg_fp_count": 3.0,
            "msseg_fp_volume_mm3": 23.0,
            "msseg_dice": NAN,
            "msseg_sensitivity": NAN,
            "msseg_ppv": NAN,
            "msseg_f1": NAN,
            "krueger_predicted_lesions": 1.0,
            "krueger_fp_count": 1.0,
            "krueger_sensitivity": NAN,
            "krueger_fpr": NAN,
            "krueger_dice": NAN,
            "to_predicted_blobs": 4.0,
            "to_ltpr": NAN,
            "to_ppv": 0.0,
            "to_lfpr": 1.0,
        },
    )
    as_truth = score_pair(blobs, empty, 0.5)
    check(
        as_truth,
        {
            "msseg_truth_lesions": 3.0,
            "krueger_truth_lesions": 1.0,
            "msseg_sensitivity": 0.0,
            "krueger_sensitivity": 0.0,
            "krueger_fp_count": 0.0,
            "krueger_fpr": 0.0,
            "to_ltpr": 0.0,
        },
    )


def test_empty_truth_reports_false_positive_count_and_volume():
    empty = np.zeros(SHAPE, dtype=bool)
    prediction = boxes(np.s_[1:4, 1:4, 1:4], np.s_[7:9, 7:9, 7:9])  # 27 + 8 voxels
    scores = score_pair(empty, prediction, 1.0)
    # Both are > 3 mm^3: 2 MSSEG-2 false positives of 35 mm^3; Krueger drops the
    # 8 mm^3 one.
    check(
        scores,
        {
            "msseg_fp_count": 2.0,
            "msseg_fp_volume_mm3": 35.0,
            "msseg_dice": NAN,
            "msseg_f1": NAN,
            "msseg_sensitivity": NAN,
            "krueger_fp_count": 1.0,
            "krueger_dice": NAN,
            "to_ltpr": NAN,
            "to_ppv": 0.0,
        },
    )
    nothing = score_pair(empty, empty, 1.0)
    check(
        nothing,
        {
            "msseg_fp_count": 0.0,
            "msseg_fp_volume_mm3": 0.0,
            "krueger_fp_count": 0.0,
            "msseg_dice": NAN,
            "to_ppv": NAN,
            "to_ltpr": NAN,
            "truth_lesions": 0.0,
        },
    )
    assert list(nothing) == METRIC_COLUMNS


def test_truth_of_only_filtered_lesions_has_dice_but_no_detection_scores():
    tiny = boxes(np.s_[5, 5, 5:8])  # 3 mm^3: no MSSEG-2 lesion, but voxels for Dice
    scores = msseg2_scores(tiny, tiny, 1.0)
    check(
        scores,
        {
            "msseg_dice": 1.0,
            "msseg_sensitivity": NAN,
            "msseg_f1": NAN,
            "msseg_fp_count": 0.0,
            "msseg_fp_volume_mm3": 0.0,
        },
    )


@pytest.mark.parametrize(("extra_truth", "ltpr"), [((), 1.0), ((0, 0, 1), 0.0)])
def test_to_iou_threshold_is_inclusive(extra_truth, ltpr):
    # One predicted voxel inside a 100-voxel blob: IoU 1/100 = 0.01 -> a match;
    # with one truth voxel more, 1/101 < 0.01 -> none.
    truth = boxes(np.s_[0:10, 0:10, 0])
    if extra_truth:
        truth[extra_truth] = True
    prediction = boxes((0, 0, 0))
    check(
        to_scores(truth, prediction, 1.0), {"to_ltpr": ltpr, "to_ppv": ltpr, "to_lfpr": 1.0 - ltpr}
    )


def test_to_iou_is_pairwise_not_against_the_union():
    # A 100-voxel blob and a 1-voxel blob both touched by one prediction that covers
    # 1 voxel of the big one: IoU(big) = 1/(100 + 2 - 1) < 0.01, IoU(small) =
    # 1/2. Against the union of truth the prediction would score 2/101 instead.
    truth = boxes(np.s_[0:10, 0:10, 0], (0, 0, 2))
    prediction = boxes(np.s_[0, 0, 0:3])  # (0,0,0) in big, (0,0,1) free, (0,0,2) small
    scores = to_scores(truth, prediction, 1.0)
    check(scores, {"to_truth_blobs": 2.0, "to_tp_truth": 1.0, "to_ltpr": 0.5, "to_ppv": 1.0})


def test_krueger_dice_counts_only_lesions_that_touch():
    truth = boxes(np.s_[0:4, 0:4, 0:4], np.s_[8:11, 8:11, 8:11])  # 64 + 27, 2nd missed
    prediction = boxes(np.s_[2:6, 2:6, 2:6], np.s_[8:11, 0:3, 8:11])  # 64 + 27 (FP)
    scores = krueger_scores(truth, prediction, 1.0)
    # Shared: x, y, z in 2..3 -> 8 voxels. Dice 2*8 / (64 + 64) = 0.125 (over all voxels
    # it would be 16/182). Sensitivity 1/2; FP 1; FPR 1/2.
    check(
        scores,
        {
            "krueger_dice": 0.125,
            "krueger_sensitivity": 0.5,
            "krueger_fp_count": 1.0,
            "krueger_fpr": 0.5,
        },
    )
    assert msseg2_scores(truth, prediction, 1.0)["msseg_dice"] == pytest.approx(16 / 182)


def test_families_match_naive_per_lesion_loops_on_random_masks():
    rng = np.random.default_rng(7)
    for _ in range(6):
        # Smooth noise thresholded: ~10 blobs each, the prediction a perturbed truth.
        base = ndimage.gaussian_filter(rng.normal(size=SHAPE), 1.0)
        other = ndimage.gaussian_filter(rng.normal(size=SHAPE), 1.0)
        truth, prediction = base > 0.12, base + 0.7 * other > 0.12
        scores = score_pair(truth, prediction, 0.8)
        check(scores, _naive_scores(truth, prediction, 0.8))


def _naive_scores(truth, prediction, voxel_volume):
    """The rules written out with one boolean mask per lesion: slow but plain."""

    def lesions(mask, structure, keep):
        labels, count = ndimage.label(mask, structure=structure)
        found = [labels == k for k in range(1, count + 1)]
        return [lesion for lesion in found if keep(lesion.sum())]

    six, full = ndimage.generate_binary_structure(3, 1), np.ones((3, 3, 3))
    row = {}
    # To et al.: all 26-connected blobs, pairwise IoU >= 0.01.
    g = lesions(truth, full, lambda n: True)
    p = lesions(prediction, full, lambda n: True)
    hit = np.array(
        [[(a & b).sum() / (a | b).sum() >= 0.01 for b in p] for a in g], dtype=bool
    ).reshape(len(g), len(p))
    row["to_ltpr"] = hit.any(axis=1).mean() if g else NAN
    row["to_ppv"] = hit.any(axis=0).mean() if p else NAN
    # Krueger: 26-connected, >= 10 mm^3, any overlap.
    g = lesions(truth, full, lambda n: n * voxel_volume >= 10)
    p = lesions(prediction, full, lambda n: n * voxel_volume >= 10)
    touch = np.array([[(a & b).any() for b in p] for a in g], dtype=bool).reshape(len(g), len(p))
    row["krueger_fp_count"] = float((~touch.any(axis=0)).sum())
    if g:
        row["krueger_sensitivity"] = touch.any(axis=1).mean()
        union_g = np.any(
            [a for a, t in zip(g, touch.any(axis=1), strict=True) if t] + [np.zeros(SHAPE, bool)],
            axis=0,
        )
        union_p = np.any(
            [b for b, t in zip(p, touch.any(axis=0), strict=True) if t] + [np.zeros(SHAPE, bool)],
            axis=0,
        )
        size = union_g.sum() + union_p.sum()
        row["krueger_dice"] = 2 * (union_g & union_p).sum() / size if size else 0.0
    # MSSEG-2: 6-connected, > 3 mm^3, alpha/beta/gamma.
    g = lesions(truth, six, lambda n: n * voxel_volume > 3)
    p = lesions(prediction, six, lambda n: n * voxel_volume > 3)

    def detected(lesion, others, other_side):
        inside = [(lesion & o).sum() for o in others]
        covered = sum(inside)
        if covered / lesion.sum() <= 0.1:
            return False
        share = 0.0
        for k in sorted(range(len(others)), key=lambda k: -inside[k]):
            if share >= 0.65 or inside[k] == 0:
                break
            if (others[k] & ~other_side).sum() / others[k].sum() > 0.7:
                return False
            share += inside[k] / covered
        return True

    all_g = np.any([*g, np.zeros(SHAPE, bool)], axis=0)
    all_p = np.any([*p, np.zeros(SHAPE, bool)], axis=0)
    if g:
        row["msseg_sensitivity"] = np.mean([detected(a, p, all_g) for a in g])
        row["msseg_ppv"] = np.mean([detected(b, g, all_p) for b in p]) if p else 0.0
    row["msseg_dice"] = 2 * (truth & prediction).sum() / (truth.sum() + prediction.sum())
    row["msseg_truth_lesions"], row["msseg_predicted_lesions"] = len(g), len(p)
    return row


# ---- Direction of change --------------------------------------------------------------


def test_direction_masks_split_whole_components_by_mean_difference():
    brighter_cube = np.s_[1:4, 1:4, 1:4]  # +1, one voxel -5: mean (26 - 5)/27 > 0
    darker_cube = np.s_[7:10, 7:10, 7:10]  # -1
    flat_cube = np.s_[1:3, 8:10, 1:3]  # +2 and -2 halves: mean exactly 0
    barely = np.s_[8:10, 1:3, 1:3]  # +1 and -0.96 halves: mean 0.02 > 0
    mask = boxes(brighter_cube, darker_cube, flat_cube, barely)
    difference = np.full(SHAPE, 100.0)  # outside the mask: must not count
    difference[brighter_cube] = 1.0
    difference[2, 2, 2] = -5.0
    difference[darker_cube] = -1.0
    difference[1, 8:10, 1:3] = 2.0
    difference[2, 8:10, 1:3] = -2.0
    difference[8, 1:3, 1:3] = 1.0
    difference[9, 1:3, 1:3] = -0.96
    brighter, darker = direction_masks(mask, difference)
    np.testing.assert_array_equal(brighter, boxes(brighter_cube, barely))
    np.testing.assert_array_equal(darker, boxes(darker_cube, flat_cube))


def test_direction_masks_follow_the_connectivity():
    first, second = np.s_[0:3, 0:3, 0:3], np.s_[3:6, 3:6, 3:6]  # corner-touching
    mask = boxes(first, second)
    difference = np.zeros(SHAPE)
    difference[first] = 1.0
    difference[second] = -2.0
    brighter, darker = direction_masks(mask, difference)  # one component, mean -0.5
    assert not brighter.any()
    np.testing.assert_array_equal(darker, mask)
    brighter, darker = direction_masks(mask, difference, connectivity=6)
    np.testing.assert_array_equal(brighter, boxes(first))
    np.testing.assert_array_equal(darker, boxes(second))


# ---- Settings and inputs --------------------------------------------------------------


def test_settings_from_dict_rejects_unknown_keys_by_name():
    with pytest.raises(ValueError, match="msseg_alfa"):
        MetricSettings.from_dict({"msseg_alfa": 0.2, "to_min_iou": 0.05})
    settings = MetricSettings.from_dict(
        {"to_min_iou": 0.05, "krueger_connectivity": 6.0, "msseg_min_volume_mm3": 2}
    )
    assert settings.to_min_iou == 0.05 and settings.krueger_connectivity == 6
    assert MetricSettings.from_dict(settings.as_dict()) == settings
    assert MetricSettings().as_dict()["msseg_connectivity"] == 6
    with pytest.raises(ValueError, match="connectivity"):
        MetricSettings(to_connectivity=8)


def test_settings_change_the_scores():
    truth = boxes(np.s_[2:4, 2:4, 0:5])
    prediction = boxes(np.s_[0:10, 2:3, 0:5])  # 0.8 outside: undetected at beta 0.7
    relaxed = MetricSettings(msseg_beta=0.8)
    assert msseg2_scores(truth, prediction, 1.0, relaxed)["msseg_sensitivity"] == 1.0
    small = boxes(np.s_[1:3, 1:3, 1:3])  # 8 mm^3, under Krueger's 10
    assert krueger_scores(small, small, 1.0)["krueger_truth_lesions"] == 0.0
    lenient = MetricSettings(krueger_min_volume_mm3=8.0)
    assert krueger_scores(small, small, 1.0, lenient)["krueger_truth_lesions"] == 1.0


def test_family_functions_are_the_parts_of_score_pair():
    truth, prediction = TWO_LESIONS, boxes(np.s_[1:4, 1:4, 2:5])
    whole = score_pair(truth, prediction, 1.0)
    parts = {
        **msseg2_scores(truth, prediction, 1.0),
        **to_scores(truth, prediction, 1.0),
        **krueger_scores(truth, prediction, 1.0),
    }
    assert set(parts) | {
        "truth_lesions",
        "predicted_lesions",
        "truth_volume_mm3",
        "predicted_volume_mm3",
    } == set(METRIC_COLUMNS)
    check(whole, parts)


def test_masks_on_different_grids_are_refused():
    with pytest.raises(ValueError, match="grid"):
        score_pair(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), 1.0)


# ---- Aggregation and tests between methods --------------------------------------------

PER_PAIR = pd.DataFrame(
    {
        "method": ["A", "A", "A", "A", "B", "B", "B", "C"],
        "dice": [0.5, NAN, 0.7, 0.9, 0.4, NAN, NAN, NAN],
        "fp": [NAN, 2.0, NAN, NAN, NAN, 1.0, 3.0, 0.0],
    }
)


def test_summarise_ignores_nan_per_metric():
    table = summarise(PER_PAIR, ["method"], ["dice", "fp"]).set_index("method")
    assert list(table.columns) == [
        "dice_mean",
        "dice_sd",
        "dice_median",
        "dice_n",
        "fp_mean",
        "fp_sd",
        "fp_median",
        "fp_n",
    ]
    # A: dice 0.5, 0.7, 0.9 -> mean 0.7, sd sqrt((0.04 + 0 + 0.04) / 2) = 0.2; fp 2 alone.
    assert table.loc["A", "dice_mean"] == pytest.approx(0.7)
    assert table.loc["A", "dice_sd"] == pytest.approx(0.2)
    assert table.loc["A", "dice_median"] == pytest.approx(0.7)
    assert table.loc["A", "dice_n"] == 3
    assert table.loc["A", "fp_mean"] == 2.0 and table.loc["A", "fp_n"] == 1
    assert math.isnan(table.loc["A", "fp_sd"])  # one value: no sample sd
    # B: fp 1 and 3 -> mean 2, sd sqrt(2) (ddof = 1).
    assert table.loc["B", "fp_sd"] == pytest.approx(math.sqrt(2))
    # C: no dice at all.
    assert table.loc["C", "dice_n"] == 0
    assert all(math.isnan(table.loc["C", f"dice_{s}"]) for s in ("mean", "sd", "median"))
    overall = summarise(PER_PAIR, [], ["dice"])
    assert len(overall) == 1
    assert overall.loc[0, "dice_mean"] == pytest.approx((0.5 + 0.7 + 0.9 + 0.4) / 4)


def test_paired_wilcoxon_matches_scipy_on_shared_pairs():
    rng = np.random.default_rng(3)
    pairs = [f"sub-{k}" for k in range(9)]
    values = {"a": rng.random(9), "b": rng.random(9) + 0.3, "c": rng.random(9)}
    values["a"][2] = NAN  # pair 2 drops out of every comparison with a
    values["c"][5] = NAN
    per_pair = pd.DataFrame(
        [
            {"method": m, "subject": s, "dice": v[k], "flat": 1.0, "none": NAN if m == "a" else 0.5}
            for m, v in values.items()
            for k, s in enumerate(pairs)
        ]
    )
    result = paired_wilcoxon(
        per_pair.sample(frac=1.0, random_state=0),
        method="method",
        pair="subject",
        metrics=["dice", "flat", "none"],
    )
    expected_order = [
        (a, b, m) for a, b in itertools.combinations("abc", 2) for m in ("dice", "flat", "none")
    ]
    assert list(zip(result.method_a, result.method_b, result.metric, strict=True)) == expected_order
    for first, second in itertools.combinations("abc", 2):
        row = result[
            (result.method_a == first) & (result.method_b == second) & (result.metric == "dice")
        ].iloc[0]
        both = ~np.isnan(values[first]) & ~np.isnan(values[second])
        reference = stats.wilcoxon(values[first][both], values[second][both])
        assert row.n_pairs == both.sum()
        assert row.median_difference == pytest.approx(
            np.median(values[first][both] - values[second][both])
        )
        assert row.statistic == pytest.approx(reference.statistic)
        assert row.p_value == pytest.approx(reference.pvalue)
    assert result[result.method_a == "a"].n_pairs.tolist() == [8, 9, 0, 7, 9, 0]
    # All differences zero, or no shared pair: no test, and no crash.
    flat = result[result.metric == "flat"]
    assert flat.median_difference.eq(0.0).all()
    assert flat.statistic.isna().all() and flat.p_value.isna().all()
    none = result[(result.metric == "none") & (result.method_a == "a")]
    assert none.n_pairs.eq(0).all() and none.p_value.isna().all()
    assert none.median_difference.isna().all()


def test_paired_wilcoxon_refuses_two_rows_for_one_pair():
    per_pair = pd.DataFrame(
        {"method": ["a", "a", "b"], "subject": ["s", "s", "s"], "dice": [0.1, 0.2, 0.3]}
    )
    with pytest.raises(ValueError, match="more than one row"):
        paired_wilcoxon(per_pair, method="method", pair="subject", metrics=["dice"])
