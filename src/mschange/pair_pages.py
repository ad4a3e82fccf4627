"""The pages a person reads for one pair: the viewer and the one-page summary.

One step, used by ``mschange predict`` (next to its outputs) and by the workflow (for
every test pair), so both write the same pages from the same files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mschange.detection.outputs import PAGE_SUFFIXES
from mschange.io import brain_intersection, load_checked_image, load_float_image
from mschange.locations import count_by_location, location_counts_text
from mschange.summary import pair_summary, write_summary
from mschange.viewer import PairImages, write_viewer

PathLike = str | os.PathLike[str]

# The outputs this step writes; the paths come from the caller's layout
# (mschange.detection.outputs: pair_page_paths in a dataset, page_paths flat).
PAGE_KEYS = ("summary_html", *PAGE_SUFFIXES)


def truth_on_grid(
    label: PathLike, shape: tuple[int, ...], affine: Any, subject: str
) -> np.ndarray[Any, Any]:
    """The ground-truth change mask (any grid) on the follow-up's 1 mm grid, nearest voxel."""
    from mschange.preprocessing.resample import resample_to_grid

    image = load_checked_image(label, subject)
    data = (np.asarray(image.dataobj) > 0).astype(np.float32)
    on_grid = resample_to_grid(
        data,
        np.asarray(image.affine, dtype=np.float64),
        (int(shape[0]), int(shape[1]), int(shape[2])),
        np.asarray(affine, dtype=np.float64),
        order=0,
        antialias=False,
    )
    return on_grid > 0.5


def write_pair_pages(
    *,
    baseline: PathLike,
    followup: PathLike,
    masks: Sequence[PathLike],
    probability: PathLike,
    labels: PathLike,
    lesions: PathLike,
    record: PathLike,
    qc: PathLike,
    qc_thresholds: Mapping[str, float],
    outputs: Mapping[str, PathLike],
    subject: str,
    session: str | None = None,
    label: PathLike | None = None,
    viewer_link: str | None = None,
    qc_figure: PathLike | None = None,
) -> dict[str, Any]:
    """Write the viewer and the summary (``outputs``: keys of ``PAGE_KEYS``).

    ``viewer_link``: how the summary links the viewer, where the two are later copied
    elsewhere (the workflow's dataset); by default relative to ``outputs``.
    ``qc_figure``: the pair's QC picture, embedded in the summary.

    ``probability``, ``labels``, ``lesions`` and ``record`` are the prediction's (change
    probability, detected changes labelled by lesion id, lesion table, JSON record with
    the settings and model); ``qc`` is the pair's QC record
    (``preprocessing.steps.qc_pair_step``). Returns the summary record.
    """
    prediction = json.loads(Path(record).read_text(encoding="utf-8"))
    settings = prediction["settings"]
    model = prediction.get("model") or {}
    baseline_data, _ = load_float_image(baseline)
    followup_data, image = load_float_image(followup)
    brain = brain_intersection(*masks)
    probability_data, _ = load_float_image(probability)
    # Empty cells stay empty strings (a location is text), only missing numbers are NaN.
    table = pd.read_csv(lesions, sep="\t", keep_default_na=False, na_values=[""])
    truth = (
        truth_on_grid(label, followup_data.shape, image.affine, subject)
        if label is not None
        else None
    )
    images = PairImages(
        baseline=np.where(brain, baseline_data, 0.0),
        followup=np.where(brain, followup_data, 0.0),
        probability=probability_data,
        labels=np.asarray(load_checked_image(labels, subject).dataobj),
        affine=np.asarray(image.affine, dtype=np.float64),
        truth=truth,
    )
    name = f"sub-{subject}" + (f" ses-{session}" if session else "")
    if viewer_link is None:
        viewer_link = os.path.relpath(outputs["viewer"], Path(outputs["summary_html"]).parent)
    summary = pair_summary(
        table,
        subject=subject,
        session=session,
        qc=json.loads(Path(qc).read_text(encoding="utf-8")),
        qc_thresholds=qc_thresholds,
        model=model,
        settings=settings,
        viewer=viewer_link,
    )
    new = summary["changes"]["new_or_enlarging"]
    shrinking = summary["changes"]["shrinking"]
    write_viewer(
        images,
        table,
        outputs["viewer"],
        title=f"{name}: baseline and follow-up",
        kappa=float(settings["kappa"]),
        meta=(
            f"{new['count']} new or enlarging ({new['volume_mm3']:.0f} mm³), "
            f"{shrinking['count']} shrinking ({shrinking['volume_mm3']:.0f} mm³). "
            f"Model {model.get('name')} (mschange {model.get('package_version')})."
        ),
        note=(
            "Outlines are the detections: change probability above "
            f"{settings['kappa']} in at least {settings['min_blob_voxels']} connected "
            "voxels; the slider moves only the probability overlay. Click a row to go to "
            "that change; coordinates are scanner mm of the follow-up's 1 mm grid. New or "
            f"enlarging by location: {location_counts_text(count_by_location(table))}."
        ),
    )
    write_summary(
        summary,
        html=outputs["summary_html"],
        tsv=outputs["summary_tsv"],
        json=outputs["summary_json"],
        qc_figure=qc_figure,
    )
    return summary
