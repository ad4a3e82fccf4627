"""Evaluation figures and the self-contained HTML report."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from mschange.evaluation.figures import (
    lesion_slices,
    plot_change_overlay,
    plot_metric_boxplots,
    plot_threshold_curves,
)
from mschange.evaluation.html import (
    Figure,
    Report,
    Section,
    Table,
    render_html,
    table_markdown,
    write_html,
)

from .browser import check_images_in_browser, find_chromium

# -- lesion_slices -------------------------------------------------------------------


def _crossed(slices: list[int], mask: np.ndarray) -> bool:
    """Every 26-connected component of ``mask`` has a voxel on one of ``slices``."""
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    return all(np.isin(np.nonzero(labels == i)[2], slices).any() for i in range(1, n + 1))


def test_lesion_slices_cover_every_lesion_with_fewest_slices():
    truth = np.zeros((20, 20, 30), bool)
    prediction = np.zeros_like(truth)
    truth[2:5, 2:5, 2:6] = True  # z 2..5
    truth[12:16, 12:16, 4:9] = True  # z 4..8: overlaps the first in z
    prediction[8:10, 2:4, 20:23] = True  # z 20..22, a false positive elsewhere
    slices = lesion_slices(truth, prediction)
    assert len(slices) == 2 and slices == sorted(slices)
    assert 4 <= slices[0] <= 5 and 20 <= slices[1] <= 22
    assert _crossed(slices, truth) and _crossed(slices, prediction)


def test_lesion_slices_tie_goes_to_the_slice_with_most_voxels():
    truth = np.zeros((20, 20, 30), bool)
    truth[5:7, 5:7, 10] = True
    truth[4:9, 4:9, 11] = True  # the widest slice of the lesion
    truth[5:7, 5:7, 12] = True
    assert lesion_slices(truth, np.zeros_like(truth)) == [11]


def test_lesion_slices_use_26_connectivity():
    truth = np.zeros((20, 20, 30), bool)
    for step in range(3):  # a diagonal chain: one lesion only with 26-connectivity
        truth[5 + step, 5 + step, 3 + step] = True
    assert len(lesion_slices(truth, np.zeros_like(truth))) == 1


def test_lesion_slices_truncation_keeps_the_best_covering_slices():
    truth = np.zeros((20, 20, 30), bool)
    for x in (1, 7, 13):  # three lesions crossed by slice 15 only
        truth[x : x + 3, 2:5, 15] = True
    for z, size in ((1, 1), (5, 3), (9, 2), (25, 1)):  # singletons, different sizes
        truth[2 : 2 + size, 10 : 10 + size, z] = True
    assert lesion_slices(truth, np.zeros_like(truth)) == [1, 5, 9, 15, 25]
    assert lesion_slices(truth, np.zeros_like(truth), max_slices=2) == [5, 15]


def test_lesion_slices_empty_and_bad_input():
    empty = np.zeros((8, 8, 8), bool)
    assert lesion_slices(empty, empty) == []
    with pytest.raises(ValueError, match="shape"):
        lesion_slices(empty, np.zeros((8, 8, 9), bool))


# -- figures -------------------------------------------------------------------------


def _image(path: Path) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > 0
    return mpimg.imread(path)


def test_overlay_draws_truth_blue_prediction_red_overlap_magenta(tmp_path):
    rng = np.random.default_rng(0)
    followup = rng.uniform(0.3, 0.7, (40, 40, 1))
    truth = np.zeros(followup.shape, bool)
    prediction = np.zeros(followup.shape, bool)
    truth[3:21, 22:38, 0] = True  # left (low x) and top (high y)
    prediction[18:38, 3:26, 0] = True  # right and bottom; overlaps at x 18..20, y 22..25
    image = _image(
        plot_change_overlay(
            followup, truth, prediction, (1.0, 1.0, 3.0), tmp_path / "one.png", title="tiny"
        )
    )
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    blue = (b - r > 0.3) & (b - g > 0.15)
    red = (r - b > 0.3) & (r - g > 0.3)
    magenta = (r - g > 0.3) & (b - g > 0.3) & (np.abs(r - b) < 0.15)
    assert blue.sum() > 1000 and red.sum() > 1000 and magenta.sum() > 50
    rows = {name: np.median(np.nonzero(mask)[0]) for name, mask in (("blue", blue), ("red", red))}
    cols = {
        name: np.median(np.nonzero(mask)[1])
        for name, mask in (("blue", blue), ("magenta", magenta), ("red", red))
    }
    assert cols["blue"] < cols["magenta"] < cols["red"]  # subject's right on the right
    assert rows["blue"] < rows["red"]  # anterior (high y) up


def test_overlay_sizes_aspect_and_no_lesion(tmp_path):
    rng = np.random.default_rng(1)
    followup = np.zeros((30, 30, 40))
    followup[5:25, 5:25, 2:38] = rng.uniform(0.2, 1.0, (20, 20, 36))
    truth = np.zeros(followup.shape, bool)
    for z in range(2, 38, 2):  # 18 lesions on separate slices: more than 12 panels
        truth[10:12, 10:12, z] = True
    many = _image(
        plot_change_overlay(
            followup,
            truth,
            np.zeros_like(truth),
            (0.7, 0.7, 3.0),
            tmp_path / "many.png",
            title="many",
        )
    )
    one = _image(
        plot_change_overlay(
            followup,
            truth,
            np.zeros_like(truth),
            (0.7, 0.7, 3.0),
            tmp_path / "one.png",
            title="one",
            max_slices=1,
        )
    )
    tall = _image(
        plot_change_overlay(
            followup,
            truth,
            np.zeros_like(truth),
            (0.7, 1.4, 3.0),
            tmp_path / "tall.png",
            title="tall",
            max_slices=1,
        )
    )
    none = _image(
        plot_change_overlay(
            followup,
            np.zeros_like(truth),
            np.zeros_like(truth),
            (0.7, 0.7, 3.0),
            tmp_path / "none.png",
            title="none",
        )
    )
    assert 900 < many.shape[1] < 1400 and many.shape[0] > 2 * one.shape[0]
    assert 300 < one.shape[1] < 700
    assert tall.shape[0] > one.shape[0]  # taller voxels, taller panels
    assert 300 < none.shape[1] < 1400
    assert not any(tmp_path.glob(".*tmp*"))  # written atomically


def test_metric_boxplots_with_nan_and_empty_metric(tmp_path):
    per_pair = pd.DataFrame(
        {
            "method": ["ours"] * 4 + ["baseline"] * 4,
            "dice": [0.5, 0.6, np.nan, 0.7, 0.2, 0.3, 0.4, 0.1],
            "ltpr": [np.nan] * 8,
        }
    )
    image = _image(
        plot_metric_boxplots(
            per_pair,
            [("dice", "Dice"), ("ltpr", "LTPR"), ("missing", "Not a column")],
            tmp_path / "box.png",
        )
    )
    assert image.shape[1] > 1.5 * image.shape[0] > 300
    empty = _image(
        plot_metric_boxplots(per_pair.iloc[:0], [("dice", "Dice")], tmp_path / "empty.png")
    )
    assert empty.shape[0] > 200
    with pytest.raises(ValueError):
        plot_metric_boxplots(per_pair, [], tmp_path / "none.png")


def test_threshold_curves(tmp_path):
    sweep = pd.DataFrame(
        {
            "method": ["ours"] * 3 + ["baseline"] * 3,
            "threshold": [0.2, 0.5, 0.8] * 2,
            "ppv": [0.3, 0.6, 0.9, 0.2, np.nan, 0.5],
            "ltpr": [0.9, 0.7, 0.4, 0.8, 0.5, 0.3],
        }
    )
    image = _image(plot_threshold_curves(sweep, tmp_path / "curve.png"))
    assert 300 < image.shape[0] < 700 and 300 < image.shape[1] < 700
    empty = _image(plot_threshold_curves(sweep.iloc[:0], tmp_path / "empty.png"))
    assert empty.shape == image.shape


# -- HTML ----------------------------------------------------------------------------

SCRIPT = "<script>alert('x')</script>"


def _png(path: Path, colour: str = "red") -> Path:
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(2, 1.5), dpi=50)
    axis.plot([0, 1], [0, 1], color=colour)
    figure.savefig(path)
    plt.close(figure)
    return path


def _report(tmp_path: Path) -> Report:
    frame = pd.DataFrame({"subject": ["a", SCRIPT], "lesions": [3, 4], "dice": [0.51234, np.nan]})
    svg = tmp_path / "square.svg"
    svg.write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" width="40" height="20">'
        '<rect width="40" height="20" fill="teal"/></svg>'
    )
    return Report(
        title="Report & <title>",
        summary=f"First paragraph.\n\nSecond {SCRIPT}.",
        summary_tables=[Table(frame, "Summary table")],
        sections=[
            Section(
                "Results",
                "Text.",
                tables=[Table(frame, f"Per pair {SCRIPT}")],
                figures=[Figure(_png(tmp_path / "one.png"), f"Caption {SCRIPT}")],
                subsections=[
                    Section(
                        "Results",
                        figures=[
                            Figure(_png(tmp_path / "two.png", "blue"), "second"),
                            Figure(svg, "vector"),
                        ],
                    )
                ],
            ),
            Section("Results", "Same title again."),
            Section("Summary", "A section named like the summary block."),
        ],
        footer="mschange test",
    )


def test_render_escapes_and_formats(tmp_path):
    document = render_html(_report(tmp_path))
    assert "<script" not in document.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in document
    assert "<title>Report &amp; &lt;title&gt;</title>" in document
    assert "<p>First paragraph.</p>" in document
    assert '<td class="num missing">–</td>' in document
    assert '<td class="num">0.512</td>' in document
    assert '<td class="num">3</td>' in document  # an integer column stays integer
    assert "nan" not in re.sub(r'src="[^"]*"', "", document).lower()


def test_render_inlines_images(tmp_path):
    document = render_html(_report(tmp_path))
    sources = re.findall(r'src="([^"]*)"', document)
    assert len(sources) == 3
    assert sources[0].startswith("data:image/png;base64,")
    assert base64.b64decode(sources[0].split(",", 1)[1]) == (tmp_path / "one.png").read_bytes()
    assert sources[2].startswith("data:image/svg+xml;base64,")
    assert 'href="http' not in document and "url(" not in document


def test_render_anchors_are_unique_and_linked(tmp_path):
    document = render_html(_report(tmp_path))
    ids = re.findall(r'id="([^"]+)"', document)
    assert len(ids) == len(set(ids))
    links = re.findall(r'href="#([^"]+)"', document)
    assert len(links) == 4 and set(links) <= set(ids)
    assert links[:3] == ["results", "results-2", "results-3"]


def test_missing_figure_raises_and_writes_nothing(tmp_path):
    report = Report("r", "s", [Section("a", figures=[Figure(tmp_path / "gone.png", "x")])])
    with pytest.raises(FileNotFoundError, match=re.escape("gone.png")):
        write_html(report, tmp_path / "report.html")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "picture.gif").write_bytes(b"GIF89a")
    with pytest.raises(ValueError, match=re.escape("picture.gif")):
        render_html(
            Report("r", "s", [Section("a", figures=[Figure(tmp_path / "picture.gif", "x")])])
        )


def test_table_markdown_exact():
    frame = pd.DataFrame(
        {
            "method": ["ours", "a|b"],
            "pairs": [5, 12],
            "dice": [0.61234, np.nan],
            "ok": [True, False],
        }
    )
    assert table_markdown(frame) == (
        "| method | pairs | dice | ok |\n"
        "| --- | ---: | ---: | --- |\n"
        "| ours | 5 | 0.612 | True |\n"
        "| a\\|b | 12 | – | False |\n"
    )
    indexed = pd.DataFrame(
        {"n": pd.array([1, None], dtype="Int64")}, index=pd.Index(["x", "y"], name="subject")
    )
    assert table_markdown(indexed, "{:.1f}") == (
        "| subject | n |\n| --- | ---: |\n| x | 1 |\n| y | – |\n"
    )


# -- in a browser --------------------------------------------------------------------

needs_chromium = pytest.mark.skipif(find_chromium() is None, reason="no Chromium installed")


@needs_chromium
def test_every_image_loads_in_chromium(tmp_path):
    report = _report(tmp_path)
    photo = tmp_path / "photo.jpg"
    import matplotlib.pyplot as plt

    figure = plt.figure(figsize=(1, 1), dpi=40)
    figure.savefig(photo)
    plt.close(figure)
    report.sections[1].figures.append(Figure(photo, "a JPEG"))
    page = write_html(report, tmp_path / "good" / "report.html")
    assert check_images_in_browser(page) == (4, 4)
    assert sorted(p.name for p in page.parent.iterdir()) == ["report.html"]

    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    broken = Report(
        "broken",
        "",
        [
            Section(
                "s",
                figures=[
                    Figure(tmp_path / "one.png", "fine"),
                    Figure(tmp_path / "corrupt.png", "corrupt"),
                ],
            )
        ],
    )
    assert check_images_in_browser(write_html(broken, tmp_path / "broken.html")) == (1, 2)
