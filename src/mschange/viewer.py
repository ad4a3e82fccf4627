"""An interactive viewer page for one pair: NiiVue in a single HTML file that opens from disk.

The page shows the baseline, the follow-up and their difference side by side with linked
crosshairs (axial, coronal and sagittal each), the change probability over the follow-up
with a threshold slider, the detections outlined and coloured by direction, the ground
truth as a toggle when there is one, and the lesion table: clicking a row moves every view
to that change.

Browsers refuse ``fetch`` of ``file://`` addresses, so a page opened from disk cannot load
images from relative paths. Every volume is therefore embedded (gzipped NIfTI, base64),
at full resolution on the 1 mm follow-up grid; intensities are stored as 8 bits, which is
what a screen shows (``docs/viewer.md`` gives the sizes). NiiVue itself is inlined from
the copy ``make install`` puts beside this module (npm ``@niivue/niivue``, pinned in
``tools/niivue``); nothing is fetched when a page is written or opened.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import html
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from mschange.changemap import BRIGHTER
from mschange.io import atomic_path
from mschange.locations import LOCATION_LABELS

PathLike = str | os.PathLike[str]

NIIVUE_FILE = "niivue.umd.js"
# Detections and ground truth share one label colour table (viewer.js: LABELS).
NEW_OR_ENLARGING, SHRINKING, GROUND_TRUTH = 1, 2, 3
# The difference image's display window, on the normalised scale (brain 99th pct = 1).
DIFFERENCE_RANGE = 0.5
# Columns of the lesion table the page lists (those present), in this order; the
# centroid in scanner mm.
TABLE_COLUMNS = {
    "lesion_id": "id",
    "location": "location",
    "direction": "",
    "volume_mm3": "mm³",
    "mean_probability": "mean p",
    "centroid_x_mm": "x",
    "centroid_y_mm": "y",
    "centroid_z_mm": "z",
}
_TEXT_COLUMNS = {"location", "direction"}


class ViewerUnavailable(RuntimeError):
    """NiiVue is not installed beside the package (``make install`` puts it there)."""


def _asset(name: str) -> Any:
    return resources.files("mschange") / "viewer_assets" / name


def niivue_available() -> bool:
    return bool(_asset(NIIVUE_FILE).is_file())


def niivue_version() -> str:
    version = _asset("niivue.version")
    return version.read_text(encoding="utf-8").strip() if version.is_file() else "(version unknown)"


def check_niivue() -> None:
    """Raise :class:`ViewerUnavailable` with what to do, before anything is written."""
    if not niivue_available():
        raise ViewerUnavailable(
            f"the viewer needs NiiVue, which is not installed: {_asset(NIIVUE_FILE)} is "
            "missing. Run `make install` (it needs Node.js and npm) to bundle it."
        )


@dataclass(frozen=True)
class PairImages:
    """One pair's images on the 1 mm follow-up grid, as arrays (RAS-oriented or not)."""

    baseline: npt.NDArray[Any]
    followup: npt.NDArray[Any]
    probability: npt.NDArray[Any]
    labels: npt.NDArray[Any]  # detected changes, ids 1..n as in the lesion table
    affine: npt.NDArray[np.floating[Any]]
    truth: npt.NDArray[Any] | None = None  # ground-truth change mask, when there is one


def _nifti_base64(
    data: npt.NDArray[Any],
    affine: npt.NDArray[Any],
    dtype: Any,
    scale: float = 1.0,
    *,
    labels: bool = False,
) -> str:
    """A gzipped NIfTI of ``data / scale`` stored as ``dtype`` (``scl_slope = scale``).

    ``labels``: marked as a label map (NIfTI intent "label"), which NiiVue outlines.
    """
    import nibabel as nib

    info = np.iinfo(dtype)
    stored = np.clip(np.rint(np.asarray(data, dtype=np.float64) / scale), info.min, info.max)
    image = nib.Nifti1Image(stored.astype(dtype), np.asarray(affine, dtype=np.float64))
    image.header.set_slope_inter(scale, 0.0)
    if labels:
        image.header.set_intent("label")
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    payload = gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)
    return base64.b64encode(payload).decode("ascii")


def direction_labels(labels: npt.NDArray[Any], lesions: pd.DataFrame) -> npt.NDArray[np.uint8]:
    """Each detected change's voxels as 1 (new or enlarging) or 2 (shrinking)."""
    lookup = np.zeros(int(labels.max(initial=0)) + 1, dtype=np.uint8)
    if len(lesions):
        ids = lesions["lesion_id"].to_numpy(dtype=int)
        brighter = lesions["direction"].to_numpy() == BRIGHTER
        lookup[ids] = np.where(brighter, NEW_OR_ENLARGING, SHRINKING)
    return lookup[np.asarray(labels, dtype=np.int64)]


# Voxels kept around the brain when the images are cropped for the page.
CROP_MARGIN = 6


def cropped(images: PairImages, margin: int = CROP_MARGIN) -> PairImages:
    """The images cut to the box of everything shown (brain, changes, truth) plus a
    margin, the affine moved with them: the views fill with brain, and the page shrinks.
    Scanner coordinates are unchanged."""
    from mschange.tiling import brain_box

    shown = (
        (np.asarray(images.followup) != 0)
        | (np.asarray(images.baseline) != 0)
        | (np.asarray(images.labels) > 0)
    )
    if images.truth is not None:
        shown |= np.asarray(images.truth) > 0
    if not shown.any():
        return images
    box, _ = brain_box(shown, margin, 1)
    shift = np.eye(4)
    shift[:3, 3] = [axis.start for axis in box]

    return PairImages(
        baseline=np.asarray(images.baseline)[box],
        followup=np.asarray(images.followup)[box],
        probability=np.asarray(images.probability)[box],
        labels=np.asarray(images.labels)[box],
        affine=np.asarray(images.affine, dtype=np.float64) @ shift,
        truth=None if images.truth is None else np.asarray(images.truth)[box],
    )


def embedded_volumes(images: PairImages, lesions: pd.DataFrame) -> dict[str, str]:
    """Volume name -> base64 gzipped NIfTI, as ``viewer.js`` reads them (cropped to
    what is shown, :func:`cropped`)."""
    images = cropped(images)
    affine = images.affine
    volumes = {
        "baseline": _nifti_base64(images.baseline, affine, np.uint8, 1 / 255),
        "followup": _nifti_base64(images.followup, affine, np.uint8, 1 / 255),
        "difference": _nifti_base64(
            np.asarray(images.followup, np.float64) - np.asarray(images.baseline, np.float64),
            affine,
            np.int8,
            1 / 127,
        ),
        "probability": _nifti_base64(images.probability, affine, np.uint8, 1 / 255),
        "detections": _nifti_base64(
            direction_labels(images.labels, lesions), affine, np.uint8, labels=True
        ),
    }
    if images.truth is not None:
        truth = np.where(np.asarray(images.truth) > 0, GROUND_TRUTH, 0)
        volumes["truth"] = _nifti_base64(truth, affine, np.uint8, labels=True)
    return volumes


def start_position(images: PairImages, lesions: pd.DataFrame) -> list[float]:
    """Where the crosshair starts: the largest change, else the brain's centre (scanner mm)."""
    if len(lesions):
        first = lesions.sort_values("volume_mm3", ascending=False).iloc[0]
        return [float(first[f"centroid_{axis}_mm"]) for axis in "xyz"]
    brain = np.argwhere(np.asarray(images.followup) > 0)
    centre = brain.mean(axis=0) if len(brain) else (np.array(images.followup.shape) - 1) / 2
    affine = np.asarray(images.affine, dtype=np.float64)
    return [float(v) for v in affine[:3, :3] @ centre + affine[:3, 3]]


def lesion_rows(lesions: pd.DataFrame) -> str:
    """The lesion table as HTML; each row carries its centroid for ``viewer.js``."""
    columns = [c for c in TABLE_COLUMNS if c in lesions.columns]
    head = "".join(
        f'<th class="{"text" if c in _TEXT_COLUMNS else ""}">{html.escape(TABLE_COLUMNS[c])}</th>'
        for c in columns
    )
    rows = []
    for _, lesion in lesions.iterrows():
        cells = []
        for column in columns:
            value = lesion[column]
            if column == "direction":
                swatch = "up" if value == BRIGHTER else "down"
                text = "new or enlarging" if value == BRIGHTER else "shrinking"
                cells.append(f'<td class="text"><span class="{swatch}" title="{text}"></span></td>')
            elif column in _TEXT_COLUMNS:
                text = LOCATION_LABELS.get(value, value) if column == "location" else value
                cells.append(f'<td class="text">{html.escape(str(text))}</td>')
            elif column == "lesion_id":
                cells.append(f"<td>{int(value)}</td>")
            elif column == "volume_mm3" or column.startswith("centroid"):
                cells.append(f"<td>{float(value):.1f}</td>")
            else:
                cells.append(f"<td>{float(value):.2f}</td>")
        position = " ".join(
            f'data-{axis}="{float(lesion[f"centroid_{axis}_mm"]):.3f}"' for axis in "xyz"
        )
        rows.append(f'<tr id="lesion-{int(lesion["lesion_id"])}" {position}>{"".join(cells)}</tr>')
    if not rows:
        return '<p class="meta">No change detected.</p>'
    return (
        '<table id="lesions"><thead><tr>'
        + head
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _script_hash(source: str) -> str:
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def content_policy(scripts: list[str]) -> str:
    """No network at all: only these inline scripts run, images only from the page itself."""
    return (
        "default-src 'none'; "
        f"script-src {' '.join(_script_hash(s) for s in scripts)}; "
        "style-src 'unsafe-inline'; img-src data: blob:; connect-src data: blob:; "
        "worker-src blob:"
    )


def _json_for_script(payload: Mapping[str, Any]) -> str:
    # "</" would end the <script> block early; JSON allows the escaped form.
    return json.dumps(payload, separators=(",", ":")).replace("</", "<\\/")


def render_viewer(
    images: PairImages,
    lesions: pd.DataFrame,
    *,
    title: str,
    kappa: float,
    meta: str = "",
    note: str = "",
) -> str:
    """The viewer page as one HTML string."""
    check_niivue()
    from mschange import __version__

    niivue = _asset(NIIVUE_FILE).read_text(encoding="utf-8")
    app = _asset("viewer.js").read_text(encoding="utf-8")
    payload = {
        "kappa": kappa,
        "differenceRange": DIFFERENCE_RANGE,
        "start": start_position(images, lesions),
        "volumes": embedded_volumes(images, lesions),
    }
    has_truth = images.truth is not None
    fields = {
        "POLICY": content_policy([niivue, app]),
        "TITLE": html.escape(title),
        "META": html.escape(meta),
        "NOTE": html.escape(note),
        "KAPPA": f"{kappa:.2f}",
        "TRUTH_TOGGLE": (
            '<label><input id="show-truth" type="checkbox"> ground truth</label>'
            if has_truth
            else ""
        ),
        "TRUTH_LEGEND": '<span class="truth"></span>ground truth' if has_truth else "",
        "TABLE": lesion_rows(lesions),
        "VERSION": html.escape(__version__),
        "NIIVUE_VERSION": html.escape(niivue_version()),
        "NIIVUE_LICENSE": html.escape(_asset("NIIVUE_LICENSE.txt").read_text(encoding="utf-8")),
        "DATA": _json_for_script(payload),
        "NIIVUE": niivue,
        "APP": app,
    }
    template = _asset("viewer.html").read_text(encoding="utf-8")
    # One pass, so text put in by one field is never read as another's placeholder.
    return re.sub(r"__([A-Z_]+)__", lambda match: fields[match.group(1)], template)


def write_viewer(
    images: PairImages,
    lesions: pd.DataFrame,
    path: PathLike,
    *,
    title: str,
    kappa: float,
    meta: str = "",
    note: str = "",
) -> Path:
    """Write the viewer page for one pair to ``path`` (atomically)."""
    page = render_viewer(images, lesions, title=title, kappa=kappa, meta=meta, note=note)
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return Path(path)
