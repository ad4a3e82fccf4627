"""The pair viewer page: what it embeds, and what a person sees and clicks in a browser."""

from __future__ import annotations

import base64
import gzip
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from mschange import viewer
from mschange.changemap import find_changes
from mschange.detection.inference import lesion_table

from .browser import find_chromium, run_in_page

needs_chromium = pytest.mark.skipif(find_chromium() is None, reason="no Chromium installed")
needs_niivue = pytest.mark.skipif(
    not viewer.niivue_available(), reason="NiiVue not bundled (run make install)"
)

SHAPE = (80, 96, 80)
ORIGIN = np.array([-40.0, -50.0, -35.0])
NEW_CENTRE, SHRINKING_CENTRE = (26, 50, 44), (54, 40, 34)  # voxels


def _ball(centre: tuple[int, int, int], radius: float) -> np.ndarray:
    grid = np.indices(SHAPE).astype(float)
    return ((grid - np.reshape(centre, (3, 1, 1, 1))) ** 2).sum(axis=0) < radius**2


def phantom_pair() -> tuple[viewer.PairImages, pd.DataFrame]:
    """An ellipsoid brain; one new lesion (follow-up brighter), one that shrank."""
    grid = np.indices(SHAPE).astype(float)
    centre = (np.array(SHAPE) / 2).reshape(3, 1, 1, 1)
    radii = np.array([34.0, 42.0, 34.0]).reshape(3, 1, 1, 1)
    brain = (((grid - centre) / radii) ** 2).sum(axis=0) < 1
    baseline = np.where(brain, 0.5, 0.0).astype(np.float32)
    followup = baseline.copy()
    new, gone = _ball(NEW_CENTRE, 5), _ball(SHRINKING_CENTRE, 4)
    followup[new] = 1.0
    baseline[gone] = 1.0
    probability = np.zeros(SHAPE, np.float32)
    probability[new] = 0.9
    probability[gone] = 0.6
    affine = np.eye(4)
    affine[:3, 3] = ORIGIN
    labels = find_changes(probability, 0.1, 5)
    table = lesion_table(labels, probability, baseline, followup, affine)
    images = viewer.PairImages(baseline, followup, probability, labels, affine, truth=new)
    return images, table


def _decode(encoded: str) -> nib.Nifti1Image:
    raw = gzip.decompress(base64.b64decode(encoded))
    return nib.Nifti1Image.from_bytes(raw)


def test_embedded_volumes_keep_values_and_scanner_positions():
    images, table = phantom_pair()
    volumes = viewer.embedded_volumes(images, table)
    assert set(volumes) == {
        "baseline",
        "followup",
        "difference",
        "probability",
        "detections",
        "truth",
    }
    shown = viewer.cropped(images)
    followup = _decode(volumes["followup"])
    # Cut to the brain plus the margin on each side (the phantom leaves room for it).
    brain = np.nonzero(images.followup)
    extent = [int(axis.max() - axis.min() + 1) for axis in brain]
    assert followup.shape == tuple(n + 2 * viewer.CROP_MARGIN for n in extent)
    assert followup.shape < SHAPE
    np.testing.assert_allclose(followup.affine, shown.affine)
    np.testing.assert_allclose(followup.get_fdata(), shown.followup, atol=1 / 255)
    difference = _decode(volumes["difference"]).get_fdata()
    np.testing.assert_allclose(difference, shown.followup - shown.baseline, atol=1 / 127)
    detections = _decode(volumes["detections"])
    assert detections.header["intent_code"] == 1002  # a label map: NiiVue outlines it
    labels = np.asarray(detections.dataobj)
    assert labels.astype(bool).sum() == (images.labels > 0).sum()
    # Each lesion is where it was in scanner mm: its centroid lands on its label.
    for _, lesion in table.iterrows():
        centre = np.array([lesion[f"centroid_{a}_mm"] for a in "xyz"])
        voxel = np.rint(np.linalg.inv(followup.affine) @ np.append(centre, 1))[:3].astype(int)
        expected = (
            viewer.NEW_OR_ENLARGING if lesion["direction"] == "brighter" else viewer.SHRINKING
        )
        assert labels[tuple(voxel)] == expected


def test_direction_labels_follow_the_table_not_the_label_order():
    labels = np.array([[[0, 1, 2, 2]]])
    table = pd.DataFrame({"lesion_id": [2, 1], "direction": ["brighter", "darker"]})
    assert viewer.direction_labels(labels, table).tolist() == [[[0, 2, 1, 1]]]


def test_lesion_rows_carry_each_centroid():
    _, table = phantom_pair()
    rows = viewer.lesion_rows(table)
    for _, lesion in table.iterrows():
        row = re.search(rf'<tr id="lesion-{lesion["lesion_id"]}" ([^>]*)>', rows)
        assert row is not None
        x = float(re.search(r'data-x="([-\d.]+)"', row.group(1)).group(1))
        assert x == pytest.approx(lesion["centroid_x_mm"], abs=1e-3)
    assert "No change detected" in viewer.lesion_rows(table.iloc[:0])
    # Location classes are shown as the criteria name them.
    located = table.assign(location=["cortical_juxtacortical", "deep_white_matter"])
    assert '<td class="text">juxtacortical/cortical</td>' in viewer.lesion_rows(located)


def test_start_position_is_the_largest_change():
    images, table = phantom_pair()
    largest = table.sort_values("volume_mm3").iloc[-1]
    assert viewer.start_position(images, table) == pytest.approx(
        [largest[f"centroid_{a}_mm"] for a in "xyz"]
    )
    # No change: the brain's centre, in scanner mm.
    centre = viewer.start_position(images, table.iloc[:0])
    assert centre == pytest.approx(list(ORIGIN + (np.array(SHAPE) - 1) / 2), abs=1.0)


@needs_niivue
def test_page_is_one_file_that_reaches_nothing(tmp_path):
    images, table = phantom_pair()
    page = viewer.write_viewer(images, table, tmp_path / "v.html", title="sub-x", kappa=0.1)
    text = page.read_text(encoding="utf-8")
    policy = re.search(r'Content-Security-Policy" content="([^"]*)"', text).group(1)
    assert "default-src 'none'" in policy
    assert "http" not in policy  # no host may be reached
    # Every script that runs is one the policy names by its hash, and there are two.
    scripts = re.findall(r"<script>(.*?)</script>", text, flags=re.S)
    assert len(scripts) == 2
    assert viewer.content_policy(scripts) == policy
    assert not re.search(r'\s(src|href)="(?!https://github.com/niivue)', text)
    assert "BSD 2-Clause License" in text


def test_missing_niivue_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(viewer, "NIIVUE_FILE", "no-such-file.js")
    images, table = phantom_pair()
    with pytest.raises(viewer.ViewerUnavailable, match="make install"):
        viewer.write_viewer(images, table, tmp_path / "v.html", title="x", kappa=0.1)
    assert not (tmp_path / "v.html").exists()


# What a person does: open the page, look, click a row, move the slider, toggle truth.
_USE_THE_PAGE = """
const page = window.mschangeViewer;
await page.ready;
const where = (nv) => Array.from(nv.frac2mm(nv.scene.crosshairPos)).slice(0, 3);
function greyPixels(nv) {
  nv.drawScene();
  const gl = nv.gl;
  const w = gl.drawingBufferWidth, h = gl.drawingBufferHeight;
  const px = new Uint8Array(w * h * 4);
  gl.readPixels(0, 0, w, h, gl.RGBA, gl.UNSIGNED_BYTE, px);
  let grey = 0;
  for (let i = 0; i < px.length; i += 4) {
    const r = px[i], g = px[i + 1], b = px[i + 2];
    if (r > 40 && Math.abs(r - g) < 10 && Math.abs(r - b) < 10) grey++;
  }
  return grey / (w * h);
}
const result = {status: document.body.dataset.viewer, start: where(page.viewers.followup)};
result.greyFollowup = greyPixels(page.viewers.followup);
const rows = Array.from(document.querySelectorAll('#lesions tbody tr'));
result.clicks = rows.map((row) => {
  row.dispatchEvent(new MouseEvent('click', {bubbles: true}));
  const moved = {};
  for (const [name, nv] of Object.entries(page.viewers)) moved[name] = where(nv);
  return {row: [row.dataset.x, row.dataset.y, row.dataset.z].map(Number), moved,
          selected: row.classList.contains('selected')};
});
const slider = document.getElementById('threshold');
slider.value = '0.75';
slider.dispatchEvent(new Event('input'));
result.threshold = page.overlays.probability.cal_min;
const truth = document.getElementById('show-truth');
if (truth) truth.click();
result.truthOpacity = page.overlays.truth.map(([nv, image]) => image.opacity);
// A click in the baseline's canvas moves the crosshair of the other two views with it.
const canvas = page.viewers.baseline.canvas;
const box = canvas.getBoundingClientRect();
const before = where(page.viewers.baseline);
for (const type of ['mousedown', 'mouseup']) {
  canvas.dispatchEvent(new MouseEvent(type, {bubbles: true, button: 0, buttons: 1,
    clientX: box.left + box.width * 0.2, clientY: box.top + box.height * 0.3}));
}
result.canvasClick = {before, after: Object.fromEntries(
  Object.entries(page.viewers).map(([name, nv]) => [name, where(nv)]))};
result.errors = page.errors;
return result;
"""


def use_viewer(page: Path, lesions: pd.DataFrame) -> dict:
    """Open a viewer page in headless Chromium and use it as a person would; checks what
    holds for every page and returns what was seen."""
    result = run_in_page(page, _USE_THE_PAGE)
    assert "testError" not in result, result.get("testError")
    assert result["errors"] == []
    assert result["status"] == "ready"
    # The follow-up is drawn: a good part of the canvas is brain (grey), not black.
    assert result["greyFollowup"] > 0.05
    # Each row of the table moves all three views to that change's centroid.
    assert len(result["clicks"]) == len(lesions)
    for click, (_, lesion) in zip(result["clicks"], lesions.iterrows(), strict=True):
        assert click["selected"]
        centroid = [lesion[f"centroid_{a}_mm"] for a in "xyz"]
        assert click["row"] == pytest.approx(centroid, abs=1e-3)
        for position in click["moved"].values():
            assert position == pytest.approx(centroid, abs=0.6)
    # A click into the baseline's canvas moves the other two views with it.
    moved = result["canvasClick"]["after"]
    assert moved["baseline"] != pytest.approx(result["canvasClick"]["before"], abs=1.0)
    assert moved["followup"] == pytest.approx(moved["baseline"], abs=0.01)
    assert moved["difference"] == pytest.approx(moved["baseline"], abs=0.01)
    assert result["threshold"] == pytest.approx(0.75)
    return result


@needs_chromium
@needs_niivue
def test_viewer_in_a_browser(tmp_path):
    images, table = phantom_pair()
    page = viewer.write_viewer(images, table, tmp_path / "v.html", title="sub-x", kappa=0.1)
    result = use_viewer(page, table)
    assert len(table) == 2
    # The crosshair starts on the largest change.
    largest = table.sort_values("volume_mm3").iloc[-1]
    assert result["start"] == pytest.approx([largest[f"centroid_{a}_mm"] for a in "xyz"], abs=0.6)
    assert result["truthOpacity"] == pytest.approx([0.25] * 3)


@needs_chromium
@needs_niivue
def test_a_broken_page_is_reported(tmp_path):
    """The browser check can fail: a page whose data is cut short must not read as ready."""
    images, table = phantom_pair()
    page = viewer.write_viewer(images, table, tmp_path / "v.html", title="sub-x", kappa=0.1)
    text = page.read_text(encoding="utf-8")
    start = text.index('"followup":"') + len('"followup":"')
    page.write_text(text[:start] + "AAAA" + text[start + 4000 :], encoding="utf-8")
    result = run_in_page(
        page,
        "await window.mschangeViewer.ready;"
        " return {status: document.body.dataset.viewer,"
        " errors: window.mschangeViewer.errors};",
    )
    assert result["status"] == "failed"
    assert result["errors"]


def test_table_columns_are_lesion_table_columns():
    from mschange.detection.inference import LESION_COLUMN_INFO

    missing = set(viewer.TABLE_COLUMNS) - set(LESION_COLUMN_INFO)
    assert not missing
