"""Lesion-change metrics of the three published families, for one pair of masks.

The papers this pipeline is compared with report three incompatible sets of numbers,
so all three are computed, each exactly as its source defines it (specification:
``docs/metrics.md``):

* **MSSEG-2** (animaSegPerfAnalyzer): 6-connected lesions, those of 3 mm^3 or less
  dropped, the alpha/beta/gamma detection rule on the overlap table, lesion
  sensitivity (SensL), PPV (PPVL) and F1, voxel Dice on the unfiltered masks, and for
  pairs without ground-truth lesions the false-positive count and volume.
* **To et al.**: 26-connected blobs, a blob is a true positive when its IoU with one
  blob of the other map reaches 0.01; LTPR over truth blobs, PPV and LFPR
  (= 1 - PPV) over predicted blobs.
* **Krueger et al.**: 26-connected lesions, those under 10 mm^3 removed, any overlap
  makes a true positive; sensitivity, false-positive count and rate, and Dice over
  the lesions that overlap.

A value a family leaves undefined for a pair is NaN, so that a per-method mean that
ignores NaN averages over exactly the pairs the source averages over:

* MSSEG-2: Dice is NaN when the truth mask is empty. SensL, PPVL and F1 are NaN when
  no truth lesion is left after the size filter; such a pair instead gets
  ``msseg_fp_count`` and ``msseg_fp_volume_mm3`` (predicted lesions left after the
  filter, and their volume), which are NaN for every other pair, because the
  challenge reports them only for pairs without new lesions. With truth lesions but
  no predicted lesion, PPVL is 0 (and so F1 is 0).
* To et al.: LTPR is NaN without a truth blob; PPV and LFPR are NaN without a
  predicted blob.
* Krueger et al.: sensitivity, FPR and Dice are NaN without a truth lesion (after the
  10 mm^3 filter); the false-positive count is always defined. With truth lesions but
  none touched by the prediction, Dice is 0.

Choices the sources leave open, fixed here:

* Voxels with a value > 0 are lesion; masks must be 3-D and share one grid.
* The MSSEG-2 size filter keeps a component of at least floor(3 / voxel volume) + 1
  voxels (the tool's own arithmetic); Krueger's keeps a component of at least
  10 mm^3 (voxels x voxel volume, with a 1e-9 mm^3 tolerance for rounding).
* In the MSSEG-2 walk, lesions with equal overlap are visited larger lesion first
  (the tool relabels components by decreasing size; its sort leaves ties
  unspecified). The walk visits only the components that overlap the lesion and runs
  until gamma is reached or they are exhausted; the tool also stops after as many
  steps as there are lesions on the side being scored (plus one), a bound the
  specification does not have and that is not reproduced.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

NAN = float("nan")
Mask = npt.NDArray[np.bool_]
Table = npt.NDArray[np.int64]
Sizes = npt.NDArray[np.int64]

METRIC_COLUMNS = [
    "truth_lesions",
    "predicted_lesions",
    "truth_volume_mm3",
    "predicted_volume_mm3",
    "msseg_dice",
    "msseg_sensitivity",
    "msseg_ppv",
    "msseg_f1",
    "msseg_truth_lesions",
    "msseg_predicted_lesions",
    "msseg_fp_count",
    "msseg_fp_volume_mm3",
    "to_ltpr",
    "to_lfpr",
    "to_ppv",
    "to_truth_blobs",
    "to_predicted_blobs",
    "to_tp_truth",
    "to_tp_predicted",
    "krueger_sensitivity",
    "krueger_fp_count",
    "krueger_fpr",
    "krueger_dice",
    "krueger_truth_lesions",
    "krueger_predicted_lesions",
]

CONNECTIVITIES = (6, 18, 26)
_VOLUME_TOLERANCE_MM3 = 1e-9  # 20 voxels of 0.5 mm^3 must count as 10 mm^3


@dataclass(frozen=True)
class MetricSettings:
    """The parameters of the three families; the defaults are the published ones."""

    # MSSEG-2 (animaSegPerfAnalyzer)
    msseg_connectivity: int = 6  # the tool's; 26 (or 18) also accepted
    msseg_min_volume_mm3: float = 3.0  # components of <= this volume are dropped
    msseg_alpha: float = 0.10  # a lesion must be covered by more than this share
    msseg_beta: float = 0.70  # a walked component may lie this much outside
    msseg_gamma: float = 0.65  # the walk stops at this share of the coverage
    # To et al.
    to_connectivity: int = 26
    to_min_iou: float = 0.01
    # Krueger et al.
    krueger_connectivity: int = 26
    krueger_min_volume_mm3: float = 10.0  # components under this volume are removed

    def __post_init__(self) -> None:
        for name in ("msseg_connectivity", "to_connectivity", "krueger_connectivity"):
            if getattr(self, name) not in CONNECTIVITIES:
                raise ValueError(
                    f"{name} must be one of {CONNECTIVITIES}, got {getattr(self, name)!r}"
                )
        for name in ("msseg_alpha", "msseg_beta", "msseg_gamma", "to_min_iou"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)!r}")
        for name in ("msseg_min_volume_mm3", "krueger_min_volume_mm3"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"{name} must be a volume >= 0, got {value!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> MetricSettings:
        """Settings from a config section; a misspelt key is an error, not a silent default."""
        kinds = {field.name: field.type for field in fields(cls)}
        unknown = sorted(set(values) - set(kinds))
        if unknown:
            raise ValueError(
                f"unknown metric settings: {', '.join(unknown)} (known: {', '.join(kinds)})"
            )
        converted: dict[str, Any] = {}
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ValueError(f"metric setting {name} must be a number, got {value!r}")
            number = float(value)
            if kinds[name] == "int":
                if not number.is_integer():
                    raise ValueError(f"metric setting {name} must be an integer, got {value!r}")
                converted[name] = int(number)
            else:
                converted[name] = number
        return cls(**converted)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_DEFAULTS = MetricSettings()


def _structure(connectivity: int) -> npt.NDArray[np.bool_]:
    if connectivity not in CONNECTIVITIES:
        raise ValueError(f"connectivity must be one of {CONNECTIVITIES}, got {connectivity!r}")
    if connectivity == 26:
        return np.ones((3, 3, 3), dtype=bool)
    return ndimage.generate_binary_structure(3, 1 if connectivity == 6 else 2)


def _renumber(sizes: Sizes, kept: npt.NDArray[np.bool_]) -> tuple[npt.NDArray[np.intp], Sizes]:
    """Map from component id to its id among the kept ones (0 if dropped), and their sizes.

    Kept components are numbered by decreasing size (ties in id order), as ITK's
    relabelling numbers them for the MSSEG-2 tool, so equal overlaps are walked in
    the same order.
    """
    chosen = np.flatnonzero(kept)
    chosen = chosen[np.argsort(-sizes[chosen], kind="stable")]
    mapping = np.zeros(sizes.size + 1, dtype=np.intp)
    mapping[chosen + 1] = np.arange(1, chosen.size + 1)
    return mapping, sizes[chosen]


@dataclass(frozen=True)
class _Overlap:
    """The overlap table of truth (rows) and predicted (columns) components.

    ``table[i][j]`` counts the voxels in truth component i and predicted component j;
    row and column 0 are the background of either map, ``table[0][0]`` is unused (0).
    """

    table: Table
    truth_sizes: Sizes  # voxels of truth component i at i - 1
    predicted_sizes: Sizes  # voxels of predicted component j at j - 1

    @classmethod
    def of(cls, truth: Mask, prediction: Mask, connectivity: int) -> _Overlap:
        structure = _structure(connectivity)
        truth_labels, n_truth = ndimage.label(truth, structure=structure)
        predicted_labels, n_predicted = ndimage.label(prediction, structure=structure)
        columns = int(n_predicted) + 1
        # One bincount over the lesion voxels of either map: row * columns + column.
        either = truth | prediction
        index = truth_labels[either].astype(np.int64) * columns + predicted_labels[either]
        counts = np.bincount(index, minlength=(int(n_truth) + 1) * columns)
        table = counts.astype(np.int64).reshape(int(n_truth) + 1, columns)
        # Every lesion voxel is counted once, so row and column sums are the sizes.
        return cls(table, table.sum(axis=1)[1:], table.sum(axis=0)[1:])

    def keep(
        self, truth_kept: npt.NDArray[np.bool_], predicted_kept: npt.NDArray[np.bool_]
    ) -> _Overlap:
        """The table of the kept components only; dropped voxels become background."""
        rows, truth_sizes = _renumber(self.truth_sizes, truth_kept)
        columns, predicted_sizes = _renumber(self.predicted_sizes, predicted_kept)
        by_row = np.zeros((truth_sizes.size + 1, self.table.shape[1]), dtype=np.int64)
        np.add.at(by_row, rows, self.table)
        table = np.zeros((truth_sizes.size + 1, predicted_sizes.size + 1), dtype=np.int64)
        np.add.at(table.T, columns, by_row.T)
        table[0, 0] = 0
        return _Overlap(table, truth_sizes, predicted_sizes)


def _as_mask(values: npt.ArrayLike, name: str) -> Mask:
    array = np.asarray(values)
    if array.ndim != 3:
        raise ValueError(f"{name} must be a 3-D mask, got shape {array.shape}")
    return array if array.dtype == np.bool_ else array > 0


class _Pair:
    """Truth and prediction cropped to the box around both, overlap tables cached.

    Every lesion voxel lies in the box, so components (and all counts) are the same
    as on the full grid, at a fraction of the cost for sparse masks. Size filters act
    on the small overlap table, not on the volume, so each connectivity costs one
    labelling of each map however many families use it.
    """

    def __init__(
        self, truth: npt.ArrayLike, prediction: npt.ArrayLike, voxel_volume_mm3: float
    ) -> None:
        truth_mask = _as_mask(truth, "truth")
        predicted_mask = _as_mask(prediction, "prediction")
        if truth_mask.shape != predicted_mask.shape:
            raise ValueError(
                f"truth {truth_mask.shape} and prediction "
                f"{predicted_mask.shape} are not on one grid"
            )
        if not (math.isfinite(voxel_volume_mm3) and voxel_volume_mm3 > 0):
            raise ValueError(f"voxel volume must be > 0 mm^3, got {voxel_volume_mm3!r}")
        boxes = ndimage.find_objects((truth_mask | predicted_mask).astype(np.int8))
        box = boxes[0] if boxes else (slice(0, 0),) * 3
        self.truth: Mask = truth_mask[box]
        self.prediction: Mask = predicted_mask[box]
        self.voxel_volume = float(voxel_volume_mm3)
        self._tables: dict[int, _Overlap] = {}

    def overlap(self, connectivity: int) -> _Overlap:
        if connectivity not in self._tables:
            self._tables[connectivity] = _Overlap.of(self.truth, self.prediction, connectivity)
        return self._tables[connectivity]


def _msseg_detected(table: Table, alpha: float, beta: float, gamma: float) -> int:
    """How many row lesions (rows 1..) the column lesions detect, by the MSSEG-2 rule.

    Row i is detected when more than ``alpha`` of it is covered by column lesions
    and, walking those by decreasing overlap until ``gamma`` of the coverage is
    accounted for, none lies more than ``beta`` outside every row lesion. Scores
    P-lesions too when given the transposed table.
    """
    if table.shape[0] < 2 or table.shape[1] < 2:
        return 0
    column_sizes = table[:, 1:].sum(axis=0)
    too_far = table[0, 1:] / column_sizes > beta  # share outside every row lesion
    coverage = table[1:, 1:].sum(axis=1)
    # Alpha first, for all rows at once: most predicted blobs of a noisy map touch nothing.
    candidates = np.flatnonzero(coverage / (coverage + table[1:, 0]) > alpha) + 1
    detected = 0
    for index in candidates:
        overlaps = table[index, 1:]
        covered = int(coverage[index - 1])
        touching = np.flatnonzero(overlaps)
        # Columns are numbered by decreasing size, so a stable sort walks ties larger first.
        walk = touching[np.argsort(-overlaps[touching], kind="stable")]
        share, far = 0.0, False
        for column in walk:
            if share >= gamma:
                break
            far = bool(too_far[column])
            if far:
                break
            share += int(overlaps[column]) / covered
        detected += not far
    return detected


def _msseg2(pair: _Pair, settings: MetricSettings) -> dict[str, float]:
    min_voxels = math.floor(settings.msseg_min_volume_mm3 / pair.voxel_volume) + 1
    raw = pair.overlap(settings.msseg_connectivity)
    lesions = raw.keep(raw.truth_sizes >= min_voxels, raw.predicted_sizes >= min_voxels)
    n_truth, n_predicted = lesions.truth_sizes.size, lesions.predicted_sizes.size

    truth_voxels = int(raw.truth_sizes.sum())
    predicted_voxels = int(raw.predicted_sizes.sum())
    shared = int(raw.table[1:, 1:].sum())
    dice = 2.0 * shared / (truth_voxels + predicted_voxels) if truth_voxels else NAN

    sensitivity = ppv = f1 = fp_count = fp_volume = NAN
    if n_truth == 0:
        fp_count = float(n_predicted)
        fp_volume = float(lesions.predicted_sizes.sum()) * pair.voxel_volume
    else:
        rule = (settings.msseg_alpha, settings.msseg_beta, settings.msseg_gamma)
        sensitivity = _msseg_detected(lesions.table, *rule) / n_truth
        ppv = _msseg_detected(lesions.table.T, *rule) / n_predicted if n_predicted else 0.0
        f1 = 2 * sensitivity * ppv / (sensitivity + ppv) if sensitivity + ppv > 0 else 0.0
    return {
        "msseg_dice": dice,
        "msseg_sensitivity": sensitivity,
        "msseg_ppv": ppv,
        "msseg_f1": f1,
        "msseg_truth_lesions": float(n_truth),
        "msseg_predicted_lesions": float(n_predicted),
        "msseg_fp_count": fp_count,
        "msseg_fp_volume_mm3": fp_volume,
    }


def _to_et_al(pair: _Pair, settings: MetricSettings) -> dict[str, float]:
    blobs = pair.overlap(settings.to_connectivity)
    shared = blobs.table[1:, 1:]
    union = blobs.truth_sizes[:, None] + blobs.predicted_sizes[None, :] - shared  # >= 1
    matched = (shared > 0) & (shared / union >= settings.to_min_iou)
    tp_truth = int(matched.any(axis=1).sum())
    tp_predicted = int(matched.any(axis=0).sum())
    n_truth, n_predicted = blobs.truth_sizes.size, blobs.predicted_sizes.size
    return {
        "to_ltpr": tp_truth / n_truth if n_truth else NAN,
        "to_lfpr": (n_predicted - tp_predicted) / n_predicted if n_predicted else NAN,
        "to_ppv": tp_predicted / n_predicted if n_predicted else NAN,
        "to_truth_blobs": float(n_truth),
        "to_predicted_blobs": float(n_predicted),
        "to_tp_truth": float(tp_truth),
        "to_tp_predicted": float(tp_predicted),
    }


def _krueger(pair: _Pair, settings: MetricSettings) -> dict[str, float]:
    smallest = settings.krueger_min_volume_mm3 - _VOLUME_TOLERANCE_MM3
    raw = pair.overlap(settings.krueger_connectivity)
    lesions = raw.keep(
        raw.truth_sizes * pair.voxel_volume >= smallest,
        raw.predicted_sizes * pair.voxel_volume >= smallest,
    )
    shared = lesions.table[1:, 1:]
    truth_hit = shared.any(axis=1)
    predicted_hit = shared.any(axis=0)
    n_truth, n_predicted = lesions.truth_sizes.size, lesions.predicted_sizes.size
    fp_count = n_predicted - int(predicted_hit.sum())
    sensitivity = fpr = dice = NAN
    if n_truth:
        sensitivity = int(truth_hit.sum()) / n_truth
        fpr = fp_count / n_truth
        # Only lesions that touch the other map; every shared voxel lies in two of them.
        touched = int(
            lesions.truth_sizes[truth_hit].sum() + lesions.predicted_sizes[predicted_hit].sum()
        )
        dice = 2.0 * int(shared.sum()) / touched if touched else 0.0
    return {
        "krueger_sensitivity": sensitivity,
        "krueger_fp_count": float(fp_count),
        "krueger_fpr": fpr,
        "krueger_dice": dice,
        "krueger_truth_lesions": float(n_truth),
        "krueger_predicted_lesions": float(n_predicted),
    }


def msseg2_scores(
    truth: npt.ArrayLike,
    prediction: npt.ArrayLike,
    voxel_volume_mm3: float,
    settings: MetricSettings = _DEFAULTS,
) -> dict[str, float]:
    """The ``msseg_*`` columns of :func:`score_pair` (MSSEG-2, animaSegPerfAnalyzer)."""
    return _msseg2(_Pair(truth, prediction, voxel_volume_mm3), settings)


def to_scores(
    truth: npt.ArrayLike,
    prediction: npt.ArrayLike,
    voxel_volume_mm3: float,
    settings: MetricSettings = _DEFAULTS,
) -> dict[str, float]:
    """The ``to_*`` columns of :func:`score_pair` (To et al., blob IoU >= 0.01)."""
    return _to_et_al(_Pair(truth, prediction, voxel_volume_mm3), settings)


def krueger_scores(
    truth: npt.ArrayLike,
    prediction: npt.ArrayLike,
    voxel_volume_mm3: float,
    settings: MetricSettings = _DEFAULTS,
) -> dict[str, float]:
    """The ``krueger_*`` columns of :func:`score_pair` (Krueger et al., any overlap)."""
    return _krueger(_Pair(truth, prediction, voxel_volume_mm3), settings)


def score_pair(
    truth: npt.ArrayLike,
    prediction: npt.ArrayLike,
    voxel_volume_mm3: float,
    settings: MetricSettings = _DEFAULTS,
) -> dict[str, float]:
    """All metric families for one pair: a flat row with the keys of ``METRIC_COLUMNS``.

    ``truth`` and ``prediction`` are 3-D masks on the ground truth's grid (> 0 is
    lesion), ``voxel_volume_mm3`` that grid's voxel volume. NaN marks a value the
    family leaves undefined for this pair (see the module docstring): MSSEG-2 Dice
    without truth voxels; MSSEG-2 SensL/PPVL/F1 without truth lesions, and
    ``msseg_fp_count``/``msseg_fp_volume_mm3`` *with* truth lesions (the challenge
    reports false positives only for pairs without new lesions); To et al. LTPR
    without truth blobs, PPV/LFPR without predicted blobs; Krueger et al.
    sensitivity/FPR/Dice without truth lesions. ``truth_lesions`` and
    ``predicted_lesions`` count 26-connected components without any size filter.
    """
    pair = _Pair(truth, prediction, voxel_volume_mm3)
    row: dict[str, float] = {
        "truth_lesions": float(pair.overlap(26).truth_sizes.size),
        "predicted_lesions": float(pair.overlap(26).predicted_sizes.size),
        "truth_volume_mm3": float(pair.truth.sum()) * pair.voxel_volume,
        "predicted_volume_mm3": float(pair.prediction.sum()) * pair.voxel_volume,
    }
    row.update(_msseg2(pair, settings))
    row.update(_to_et_al(pair, settings))
    row.update(_krueger(pair, settings))
    return {name: float(row[name]) for name in METRIC_COLUMNS}


def direction_masks(
    mask: npt.ArrayLike, difference: npt.ArrayLike, connectivity: int = 26
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Split ``mask`` into (brighter, darker) changes, one whole component at a time.

    A component goes to "brighter" (new or enlarging lesion) when the mean of
    ``difference`` (follow-up minus baseline) over it is > 0, otherwise to "darker"
    (shrinking or resolving; a mean of exactly 0 or NaN counts as darker). Splitting
    whole components keeps a lesion from being cut into pieces by noise.
    """
    binary = _as_mask(mask, "mask")
    change = np.asarray(difference, dtype=np.float64)
    if change.shape != binary.shape:
        raise ValueError(f"difference {change.shape} is not on the mask's grid {binary.shape}")
    structure = _structure(connectivity)
    brighter = np.zeros(binary.shape, dtype=bool)
    boxes = ndimage.find_objects(binary.astype(np.int8))
    if not boxes:
        return brighter, brighter.copy()
    box = boxes[0]
    labels, count = ndimage.label(binary[box], structure=structure)
    inside = binary[box]
    ids = labels[inside]  # only lesion voxels: the volume may be large, lesions are not
    sums = np.bincount(ids, weights=change[box][inside], minlength=int(count) + 1)
    sizes = np.bincount(ids, minlength=int(count) + 1)
    brighter_ids = np.zeros(int(count) + 1, dtype=bool)
    brighter_ids[1:] = sums[1:] / sizes[1:] > 0  # every component has >= 1 voxel
    brighter[box] = brighter_ids[labels]
    return brighter, binary & ~brighter
