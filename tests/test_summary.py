"""The one-page summary of a pair: counts by location class, QC flags, model, viewer link."""

from __future__ import annotations

import json
import re

import pandas as pd

from mschange import summary as pair_summary_module
from mschange.locations import LOCATION_CLASSES
from mschange.summary import pair_summary, summary_table, write_summary

THRESHOLDS = {
    "min_similarity": 0.6,
    "max_contrast": 0.05,
    "min_brain_ml": 800,
    "max_brain_ml": 2200,
}
GOOD_QC = {
    "subject": "p1",
    "registration_similarity": 0.91,
    "contrast_difference": 0.02,
    "brain_volume_ml_baseline": 1250.0,
    "brain_volume_ml_followup": 1240.0,
}


def lesions() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "lesion_id": [1, 2, 3, 4],
            "volume_mm3": [120.0, 40.0, 30.0, 15.0],
            "direction": ["brighter", "brighter", "darker", "brighter"],
            "location": [
                "periventricular",
                "periventricular",
                "deep_white_matter",
                "infratentorial",
            ],
        }
    )


def make(qc=GOOD_QC, table=None):
    return pair_summary(
        lesions() if table is None else table,
        subject="p1",
        qc=qc,
        qc_thresholds=THRESHOLDS,
        model={"name": "flair-lesions-v1", "package_version": "0.1.0"},
        settings={"kappa": 0.1, "min_blob_voxels": 20, "harmonise": False},
        viewer="sub-p1_viewer.html",
    )


def test_counts_and_volumes_by_direction_and_class():
    summary = make()
    new = summary["changes"]["new_or_enlarging"]
    assert (new["count"], new["volume_mm3"]) == (3, 175.0)
    assert new["by_location"]["periventricular"] == {"count": 2, "volume_mm3": 160.0}
    assert new["by_location"]["infratentorial"] == {"count": 1, "volume_mm3": 15.0}
    assert new["by_location"]["cortical_juxtacortical"] == {"count": 0, "volume_mm3": 0.0}
    shrinking = summary["changes"]["shrinking"]
    assert (shrinking["count"], shrinking["volume_mm3"]) == (1, 30.0)
    assert shrinking["by_location"]["deep_white_matter"]["count"] == 1
    assert summary["settings"] == {"kappa": 0.1, "min_blob_voxels": 20}
    assert summary["model"] == {"name": "flair-lesions-v1", "version": "0.1.0"}


def test_no_change_gives_zeros_everywhere():
    summary = make(table=lesions().iloc[:0])
    table = summary_table(summary)
    assert len(table) == 2 * (len(LOCATION_CLASSES) + 1)
    assert table["count"].sum() == 0


def test_qc_flags_follow_the_cohort_rules():
    assert make()["qc"]["flagged"] is False
    misaligned = {**GOOD_QC, "registration_similarity": 0.4}
    flagged = make(qc=misaligned)["qc"]
    assert flagged["flagged"] is True
    assert flagged["flag_reason"].startswith("registration")
    small = {**GOOD_QC, "brain_volume_ml_followup": 500.0}
    assert "followup brain volume 500 ml" in make(qc=small)["qc"]["flag_reason"]


def test_written_three_ways(tmp_path):
    summary = make(qc={**GOOD_QC, "contrast_difference": 0.2})
    paths = {kind: tmp_path / f"sub-p1_summary.{kind}" for kind in ("html", "tsv", "json")}
    write_summary(summary, **paths)
    assert json.loads(paths["json"].read_text()) == json.loads(json.dumps(summary))
    tsv = pd.read_csv(paths["tsv"], sep="\t")
    assert list(tsv.columns) == pair_summary_module.SUMMARY_COLUMNS
    all_new = tsv[(tsv["direction"] == "new_or_enlarging") & (tsv["location"] == "all")]
    assert all_new["count"].tolist() == [3]
    page = paths["html"].read_text()
    assert re.search(r'<a href="sub-p1_viewer.html">Open the viewer</a>', page)
    assert "3 new or enlarging change(s), 175 mm³" in page
    assert "Flagged: contrast" in page
    assert "juxtacortical/cortical" in page


def test_cohort_report_lists_each_pair_with_its_pages(tmp_path):
    from mschange.evaluation.html import render_html
    from mschange.evaluation.report import PairPages, pair_pages_section

    pages = {}
    for subject, qc in (("p1", GOOD_QC), ("p2", {**GOOD_QC, "registration_similarity": 0.1})):
        path = tmp_path / f"{subject}.json"
        write_summary(make(qc=qc), html=tmp_path / "s.html", tsv=tmp_path / "s.tsv", json=path)
        pages[subject] = PairPages(path, f"../pairs/{subject}.html", f"../pairs/{subject}_v.html")
    section = pair_pages_section(pages)
    table = section.tables[0].frame
    assert table.loc["p1", "new or enlarging"] == 3
    assert table.loc["p1", "periventricular"] == 2
    assert table.loc["p1", "juxtacortical/cortical"] == 0
    assert table["QC flagged"].tolist() == ["no", "yes"]
    assert [link.href for link in section.links] == [
        "../pairs/p1.html",
        "../pairs/p1_v.html",
        "../pairs/p2.html",
        "../pairs/p2_v.html",
    ]
    from mschange.evaluation.html import Report

    page = render_html(Report("r", "s", [section]))
    assert '<a href="../pairs/p2_v.html">p2: viewer</a>' in page
