"""A one-page summary of one pair, readable without the cohort report.

What a clinician reports: how many new or enlarging and how many shrinking changes, their
total volume, by location class (McDonald 2017 / MAGNIMS 2021, :mod:`mschange.locations`);
whether the pair passed QC (registration similarity, contrast difference, brain volumes);
which model and version found them; and a link to the pair's viewer page. Written three
ways from one record: JSON and TSV for machines, a self-contained HTML page for people.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import pandas as pd

from mschange.evaluation.html import Figure, Link, Report, Section, Table, write_html
from mschange.io import atomic_path, save_json
from mschange.locations import LOCATION_CLASSES, LOCATION_LABELS, count_by_location
from mschange.qc import qc_table

PathLike = str | os.PathLike[str]

ALL_LOCATIONS = "all"
DIRECTIONS = ("new_or_enlarging", "shrinking")
DIRECTION_LABELS = {"new_or_enlarging": "new or enlarging", "shrinking": "shrinking"}
SUMMARY_COLUMNS = ["direction", "location", "count", "volume_mm3"]
# The QC numbers a summary shows, from the pair's QC record (preprocessing.steps.qc_pair_step).
QC_NUMBERS = {
    "registration_similarity": "registration similarity (rank correlation)",
    "contrast_difference": "contrast difference (Wasserstein)",
    "brain_volume_ml_baseline": "brain volume, baseline (ml)",
    "brain_volume_ml_followup": "brain volume, follow-up (ml)",
}


def qc_thresholds(qc_settings: Mapping[str, Any]) -> dict[str, float]:
    """The config's ``qc`` section as :func:`qc_table`'s thresholds."""
    return {
        "min_similarity": float(qc_settings["min_registration_similarity"]),
        "max_contrast": float(qc_settings["max_contrast_difference"]),
        "min_brain_ml": float(qc_settings["min_brain_ml"]),
        "max_brain_ml": float(qc_settings["max_brain_ml"]),
    }


def qc_status(qc: Mapping[str, Any], thresholds: Mapping[str, float]) -> dict[str, Any]:
    """The pair's QC numbers and flags, by the cohort QC table's own rules (:func:`qc_table`).

    ``thresholds``: ``min_similarity``, ``max_contrast``, ``min_brain_ml``, ``max_brain_ml``
    (:func:`qc_thresholds` of the config's ``qc`` section).
    """
    row = qc_table([dict(qc)], **thresholds).iloc[0]
    status: dict[str, Any] = {key: float(row[key]) for key in QC_NUMBERS}
    status["flagged"] = bool(row["flagged"])
    status["flag_reason"] = str(row["flag_reason"])
    return status


def pair_summary(
    lesions: pd.DataFrame,
    *,
    subject: str,
    qc: Mapping[str, Any],
    qc_thresholds: Mapping[str, float],
    model: Mapping[str, Any],
    settings: Mapping[str, Any],
    viewer: str,
    session: str | None = None,
) -> dict[str, Any]:
    """The summary record of one pair (what the JSON holds).

    ``model``: name and version of the detector (e.g. ``model_summary``); ``settings``:
    the inference settings used (threshold ``kappa``, ``min_blob_voxels``); ``viewer``:
    the viewer page, relative to where the summary is written.
    """
    from mschange import __version__

    by_location = count_by_location(lesions)
    changes: dict[str, Any] = {}
    for direction in DIRECTIONS:
        per_location = {
            location: {
                "count": int(by_location[location][direction]),
                "volume_mm3": float(by_location[location][f"{direction}_volume_mm3"]),
            }
            for location in LOCATION_CLASSES
        }
        changes[direction] = {
            "count": sum(entry["count"] for entry in per_location.values()),
            "volume_mm3": sum(entry["volume_mm3"] for entry in per_location.values()),
            "by_location": per_location,
        }
    return {
        "subject": subject,
        "session": session,
        "changes": changes,
        "qc": qc_status(qc, qc_thresholds),
        "model": {"name": model.get("name"), "version": model.get("package_version")},
        "settings": {k: settings[k] for k in ("kappa", "min_blob_voxels") if k in settings},
        "mschange_version": __version__,
        "viewer": viewer,
    }


def summary_table(summary: Mapping[str, Any]) -> pd.DataFrame:
    """The summary's changes as rows (the TSV, and the page's first table)."""
    rows = []
    for direction in DIRECTIONS:
        changes = summary["changes"][direction]
        for location in (*LOCATION_CLASSES, ALL_LOCATIONS):
            counts = changes if location == ALL_LOCATIONS else changes["by_location"][location]
            rows.append(
                {
                    "direction": direction,
                    "location": location,
                    "count": counts["count"],
                    "volume_mm3": counts["volume_mm3"],
                }
            )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def _headline(summary: Mapping[str, Any]) -> str:
    new, shrinking = summary["changes"]["new_or_enlarging"], summary["changes"]["shrinking"]
    return (
        f"{new['count']} new or enlarging change(s), {new['volume_mm3']:.0f} mm³ in all; "
        f"{shrinking['count']} shrinking change(s), {shrinking['volume_mm3']:.0f} mm³."
    )


def summary_report(summary: Mapping[str, Any], qc_figure: PathLike | None = None) -> Report:
    """The one-page HTML summary as a report (the cohort report's own page format), with
    the pair's QC picture when given."""
    name = f"sub-{summary['subject']}" + (
        f" ses-{summary['session']}" if summary.get("session") else ""
    )
    counts = summary_table(summary)
    wide = counts.pivot(index="location", columns="direction", values=["count", "volume_mm3"])
    by_location = pd.DataFrame(
        {
            "location": [
                LOCATION_LABELS.get(location, location)
                for location in (*LOCATION_CLASSES, ALL_LOCATIONS)
            ],
            **{
                f"{DIRECTION_LABELS[d]} {what}": [
                    wide.loc[location, (column, d)]
                    for location in (*LOCATION_CLASSES, ALL_LOCATIONS)
                ]
                for d in DIRECTIONS
                for column, what in (("count", "(n)"), ("volume_mm3", "(mm³)"))
            },
        }
    ).set_index("location")
    qc = summary["qc"]
    qc_frame = pd.DataFrame(
        {"check": list(QC_NUMBERS.values()), "value": [qc[key] for key in QC_NUMBERS]}
    ).set_index("check")
    verdict = f"Flagged: {qc['flag_reason']}." if qc["flagged"] else "Passed every QC check."
    model = summary["model"]
    settings = summary["settings"]
    return Report(
        title=f"{name}: lesion changes",
        summary=_headline(summary),
        summary_tables=[
            Table(
                by_location,
                "Changes by location class (McDonald 2017 / MAGNIMS 2021). New or enlarging: "
                "the follow-up is brighter; shrinking: darker.",
                float_format="{:.0f}",
            )
        ],
        sections=[
            Section(
                "Viewer",
                "Both scans, the difference and every detection, in a browser (no network).",
                links=[Link("Open the viewer", summary["viewer"])],
            ),
            Section(
                "Quality control",
                verdict,
                tables=[Table(qc_frame, "QC of the preprocessed pair.")],
                figures=(
                    [Figure(qc_figure, "The registered pair: follow-up, baseline, checkerboard")]
                    if qc_figure is not None
                    else []
                ),
            ),
            Section(
                "Model",
                f"Detector {model['name']} (mschange {model['version']}), threshold "
                f"{settings.get('kappa')}, smallest change {settings.get('min_blob_voxels')} "
                f"voxels. Summary written by mschange {summary['mschange_version']}.",
            ),
        ],
    )


def write_summary(
    summary: Mapping[str, Any],
    *,
    html: PathLike,
    tsv: PathLike,
    json: PathLike,
    qc_figure: PathLike | None = None,
) -> None:
    """Write the summary as JSON, TSV and a one-page HTML (each atomically; the HTML
    embeds ``qc_figure`` when given)."""
    save_json(dict(summary), json)
    with atomic_path(tsv) as tmp:
        summary_table(summary).to_csv(tmp, sep="\t", index=False, float_format="%.1f")
    write_html(summary_report(summary, qc_figure), html)
