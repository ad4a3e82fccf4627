"""The HTML report (results/report/index.html): what was found, how well, and how.

It opens with a summary for a clinician-researcher (per method, the three metric
families as mean ± sd, and what the learned model adds over subtraction), then the
Table 1 analogue, changes by direction, per-pair tables, statistical tests, figures
(per-pair overlays, boxplots, threshold curves, training curves, SuperMix examples) and
the preprocessing QC table. Every image is embedded: the file can be mailed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mschange import __version__
from mschange.evaluation.html import Figure, Link, Report, Section, Table, write_html
from mschange.evaluation.tables import FAMILIES, readable_summary, readable_tables

PathLike = str | os.PathLike[str]


@dataclass
class ReportInputs:
    """Everything the report shows, by file."""

    tables: Mapping[str, PathLike]  # name -> TSV
    boxplots: PathLike
    threshold_curves: PathLike
    overlays: Mapping[tuple[str, str], PathLike]  # (subject, method) -> PNG
    training_curves: Mapping[str, PathLike]  # model -> PNG
    qc_table: PathLike | None = None
    supermix_examples: PathLike | None = None
    lesion_examples: PathLike | None = None
    augmentations: PathLike | None = None
    rescan_realism: PathLike | None = None
    validation: PathLike | None = None  # mschange.evaluation.validation summary
    cohort_status: pd.DataFrame | None = None  # mschange.status.cohort_status
    # subject -> its summary JSON, summary page and viewer page (links relative to the report)
    pair_pages: Mapping[str, PairPages] | None = None


@dataclass
class PairPages:
    """One pair's summary record, and its pages as the report links them."""

    summary_json: PathLike
    summary_href: str
    viewer_href: str


def _read(path: PathLike) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype={"subject": str})


def _value(row: pd.Series, metric: str) -> float:
    value = row.get(f"{metric}_mean", np.nan)
    return float(value) if value is not None else float("nan")


def summary_text(
    summary: pd.DataFrame,
    *,
    methods: Sequence[str],
    baseline: str | None,
    headline_blob: int,
    pairs_with_change: int,
    pairs_without: int,
) -> str:
    """Plain-language opening: the cohort, the best learned model, and the baseline."""
    lines = [
        f"{pairs_with_change + pairs_without} test pair(s) with a ground truth were "
        f"scored: {pairs_with_change} with lesion changes, {pairs_without} without. "
        f"Each method's changes were kept when at least {headline_blob} voxels "
        "(1 mm³ each) in size; the tables also give the other blob sizes."
    ]
    rows = summary.loc[summary["min_blob_voxels"] == headline_blob].set_index("method")
    learned = [m for m in methods if m != baseline and m in rows.index]
    if learned:
        best = max(learned, key=lambda m: np.nan_to_num(_value(rows.loc[m], "msseg_f1"), nan=-1.0))
        row = rows.loc[best]
        lines.append(
            f"Best learned model by lesion F1 (MSSEG-2 rule): {best}. Averaged over pairs it "
            f"found {_pct(_value(row, 'to_ltpr'))} of the true change lesions (To et al. "
            f"LTPR), {_pct(_value(row, 'to_ppv'))} of its detections were real changes "
            f"(PPV), voxel Dice {_num(_value(row, 'msseg_dice'))} and lesion F1 "
            f"{_num(_value(row, 'msseg_f1'))}."
        )
        if baseline and baseline in rows.index:
            base = rows.loc[baseline]
            learned_f1, base_f1 = _value(row, "msseg_f1"), _value(base, "msseg_f1")
            verdict = (
                "the difference is what learning adds"
                if not base_f1 >= learned_f1
                else "on these pairs the learned model does not beat it"
            )
            lines.append(
                f"The classical subtraction baseline, on the same preprocessing, found "
                f"{_pct(_value(base, 'to_ltpr'))} with PPV {_pct(_value(base, 'to_ppv'))}, "
                f"Dice {_num(_value(base, 'msseg_dice'))} and lesion F1 "
                f"{_num(base_f1)}: {verdict}."
            )
    lines.append(
        "How to read: sensitivity/LTPR is the share of true change lesions found; PPV the "
        "share of detections that are true changes (LFPR = 1 - PPV); Dice the voxel overlap. "
        "The three metric families differ in what counts as a found lesion (MSSEG-2: the "
        "challenge's overlap rule on 6-connected lesions over 3 mm³; To et al.: blob IoU >= "
        "0.01; Krueger et al.: any overlap, lesions under 10 mm³ removed), so compare each "
        "only with published numbers of the same family."
    )
    return "\n\n".join(lines)


def _without_empty_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Drop metrics no pair has (e.g. false positives of no-change pairs when all changed)."""
    return frame[[c for c in frame.columns if not (frame[c] == "–").all()]]


def _pct(value: float) -> str:
    return "–" if np.isnan(value) else f"{100 * value:.0f}%"


def _num(value: float) -> str:
    return "–" if np.isnan(value) else f"{value:.2f}"


def build_report(
    inputs: ReportInputs,
    *,
    methods: Sequence[str],
    baseline: str | None,
    headline_blob: int,
    metric_settings: Mapping[str, Any],
    title: str = "mschange: lesion-change evaluation",
) -> Report:
    tables = {name: _read(path) for name, path in inputs.tables.items()}
    readable = readable_tables(tables)
    per_pair = tables["per_pair"]
    headline_pairs = per_pair.loc[per_pair["min_blob_voxels"] == headline_blob]
    truth_counts = headline_pairs.drop_duplicates("subject").set_index("subject")["truth_lesions"]
    with_change = int((truth_counts > 0).sum())

    summary = tables["summary"]
    family_tables = [
        Table(
            _without_empty_columns(readable_summary(summary, metrics)),
            f"{family}: mean ± sd over pairs (n: pairs that have the value)",
        )
        for family, metrics in FAMILIES.items()
    ]

    sections = [
        Section(
            "Table 1 analogue (To et al.)",
            "Mean lesion-wise true positive rate, false positive rate and positive "
            "predictive value per model configuration and minimum blob size, as in To "
            "et al.'s Table 1 (a lesion is found at blob IoU >= 0.01). The paper's "
            "numbers come from its private data; compare the ranking, not the values.",
            tables=[Table(tables["table1"], "Model configurations (To et al. metrics)")],
        ),
        Section(
            "New or enlarging versus shrinking",
            "The same scores with the changes split by direction: components brighter at "
            "follow-up (new or enlarging lesions) and darker (shrinking or resolving), "
            f"for ground truth and prediction alike (blob size {headline_blob}).",
            tables=[Table(readable["directions"], "Scores by direction of change")],
        ),
        Section(
            "Per pair",
            "Every pair, method and blob size (all changes).",
            tables=[Table(per_pair, "Per-pair metrics")],
            figures=[Figure(inputs.boxplots, "Per-pair metrics per method (each dot a pair)")],
        ),
        Section(
            "Statistical tests",
            "Two-sided paired Wilcoxon signed-rank tests between methods, on the pairs "
            "where both have a value. With few pairs no difference can be significant.",
            tables=[Table(tables["wilcoxon"], "Paired Wilcoxon tests")],
        ),
        Section(
            "Threshold",
            "LTPR versus PPV as the threshold varies (kappa on the "
            "probability; k on the baseline's z-score), mean over pairs.",
            figures=[Figure(inputs.threshold_curves, "LTPR versus PPV")],
        ),
        Section(
            "Pairs",
            "Ground truth blue, prediction red, on the follow-up scan, on axial "
            "slices chosen so that every lesion of either is crossed.",
            subsections=[
                Section(
                    f"Pair {subject}",
                    figures=[
                        Figure(path, f"{subject}: {method}")
                        for (s, method), path in inputs.overlays.items()
                        if s == subject
                    ],
                )
                for subject in dict.fromkeys(s for s, _ in inputs.overlays)
            ],
        ),
        Section(
            "Training",
            "Loss per optimiser step of every model.",
            figures=[
                Figure(path, f"Training curve, {model}")
                for model, path in inputs.training_curves.items()
            ],
        ),
    ]
    if inputs.validation:
        sections.insert(0, validation_section(_read(inputs.validation)))
    if inputs.pair_pages:
        sections.insert(0, pair_pages_section(inputs.pair_pages))
    if inputs.lesion_examples:
        sections.append(
            Section(
                "Synthetic training changes (lesion-based)",
                "Real lesion shapes painted into real scans (Kamraoui et "
                "al.): real lesions of the scan beside painted ones.",
                figures=[Figure(inputs.lesion_examples, "Real and painted lesions")],
            )
        )
    if inputs.augmentations:
        sections.append(
            Section(
                "Augmentation",
                "The MRI artefacts and misalignment the detector's sampler "
                "adds to its training patches (Kamraoui et al.).",
                figures=[Figure(inputs.augmentations, "Each augmentation alone")],
            )
        )
    if inputs.rescan_realism:
        sections.append(
            Section(
                "Real versus simulated no-change differences",
                "|follow-up - baseline| outside the true changes of a real "
                "pair, and of its follow-up with a simulated rescan: what "
                "the training pairs teach the detector to ignore.",
                figures=[
                    Figure(inputs.rescan_realism, "Share of brain voxels above each difference")
                ],
            )
        )
    if inputs.supermix_examples:
        sections.append(
            Section(
                "Synthetic training changes (SuperMix)",
                "Examples of the synthesised lesion changes the detector learned from.",
                figures=[Figure(inputs.supermix_examples, "SuperMix examples")],
            )
        )
    if inputs.qc_table:
        sections.append(
            Section(
                "Preprocessing QC",
                "Brain volumes, registration similarity (rank correlation, "
                "contrast-robust) and contrast difference per pair, with the "
                "Pearson correlation for comparison; flagged "
                "pairs (flag_registration, flag_contrast, flag_brain_volume) "
                "deserve a look before their scores are trusted.",
                tables=[Table(_read(inputs.qc_table), "Preprocessing QC", float_format="{:.4g}")],
            )
        )
    if inputs.cohort_status is not None:
        sections.append(cohort_status_section(inputs.cohort_status))
    settings = pd.DataFrame([{"setting": k, "value": str(v)} for k, v in metric_settings.items()])
    sections.append(
        Section(
            "Metric settings",
            "The choices the papers leave open, as used here (config key evaluation.metrics).",
            tables=[Table(settings, "Metric settings")],
        )
    )
    return Report(
        title=title,
        summary=summary_text(
            summary,
            methods=methods,
            baseline=baseline,
            headline_blob=headline_blob,
            pairs_with_change=with_change,
            pairs_without=len(truth_counts) - with_change,
        ),
        summary_tables=family_tables,
        sections=sections,
        footer=f"mschange {__version__}",
    )


def pair_pages_section(pages: Mapping[str, PairPages]) -> Section:
    """What a clinician reports per test pair (new or enlarging changes by location class),
    with links to each pair's one-page summary and viewer."""
    import json
    from pathlib import Path

    from mschange.locations import LOCATION_CLASSES, LOCATION_LABELS

    rows = []
    links = []
    for subject, page in pages.items():
        summary = json.loads(Path(page.summary_json).read_text(encoding="utf-8"))
        new = summary["changes"]["new_or_enlarging"]
        rows.append(
            {
                "subject": subject,
                "new or enlarging": new["count"],
                **{
                    LOCATION_LABELS[name]: new["by_location"][name]["count"]
                    for name in LOCATION_CLASSES
                },
                "new volume (mm³)": new["volume_mm3"],
                "shrinking": summary["changes"]["shrinking"]["count"],
                "QC flagged": "yes" if summary["qc"]["flagged"] else "no",
            }
        )
        links += [
            Link(f"{subject}: summary", page.summary_href),
            Link(f"{subject}: viewer", page.viewer_href),
        ]
    table = pd.DataFrame(rows).set_index("subject")
    return Section(
        "Changes per pair, by location",
        "New or enlarging changes of each test pair by location class (McDonald 2017 / "
        "MAGNIMS 2021; docs/locations.md gives the rules), as the main model detected them. "
        "Each pair has a one-page summary and an interactive viewer (opens offline).",
        tables=[Table(table, "New or enlarging changes by location", float_format="{:.0f}")],
        links=links,
    )


def validation_section(summary: pd.DataFrame) -> Section:
    """The validation set's summary: what each method finds in synthetic changes painted
    into held-out real scans, and its false positives on their no-change pairs."""
    from mschange.evaluation.validation import SUMMARY_METRICS

    columns = {
        "method": "method",
        "min_blob_voxels": "blob",
        "direction": "direction",
        **SUMMARY_METRICS,
        "fp_per_nochange_pair": "FP per no-change pair",
        "painted_pairs": "painted pairs",
        "nochange_pairs": "no-change pairs",
    }
    shown = summary[[c for c in columns if c in summary.columns]].rename(columns=columns)
    return Section(
        "Validation set",
        "Lesion-based changes painted with fixed seeds into held-out real scans (cohort rows "
        "with split: validation, used by no training run), and those scans' own no-change "
        "pairs (simulated rescans). Means over the painted pairs at each method's operating "
        "threshold; lesion F1 (To) is the harmonic mean of LTPR and PPV per pair. It is what "
        "training settings are tuned on, besides the real test pairs.",
        tables=[Table(shown, "Validation set (means over pairs)", float_format="{:.3f}")],
    )


def cohort_status_section(status: pd.DataFrame, max_rows: int = 200) -> Section:
    """Each pair's stage; for a large cohort only the pairs that are not complete."""
    counts = status["state"].value_counts()
    text = (
        f"{len(status)} pairs: "
        + ", ".join(f"{n} {state}" for state, n in counts.items())
        + ". The stage reached is the last one whose outputs all exist; a failed or "
        "interrupted pair names the rule and its log. The same table, for the latest "
        "run, is in results/status/cohort_status.tsv."
    )
    shown = status
    if len(status) > max_rows:
        shown = status[status["state"] != "complete"].head(max_rows)
        text += f" Only the {len(shown)} pairs that are not complete are listed."
    shown = shown[[c for c in shown.columns if (shown[c].astype(str) != "").any()]]
    return Section("Cohort status", text, tables=[Table(shown, "Cohort status")])


def write_report(inputs: ReportInputs, path: PathLike, **kwargs: Any) -> None:
    write_html(build_report(inputs, **kwargs), path)
