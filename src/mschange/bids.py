"""Predictions as a BIDS derivatives dataset (BIDS 1.10, "Derivatives").

``mschange predict --out OUT`` makes ``OUT`` one, and the workflow writes the main
model's predictions of every test pair as one (``results/derivatives/mschange/``)::

    dataset_description.json   Name, BIDSVersion, DatasetType "derivative", GeneratedBy
                               (mschange, its version), SourceDatasets, DatasetLinks
    .bidsignore                what the BIDS validator skips (pictures, pages, tables
                               whose suffix BIDS does not define, predict's preproc/)
    sub-<label>/[ses-<label>/]anat/
        <prefix>_res-iso_desc-change_probseg.nii.gz    + .json  (1 mm follow-up grid)
        <prefix>_res-iso_desc-change_mask.nii.gz       + .json
        <prefix>_res-iso_desc-changes_dseg.nii.gz      + .json  (changes labelled 1..n)
        <prefix>_res-native_desc-change_probseg.nii.gz + .json  (the follow-up file's grid)
        <prefix>_res-native_desc-change_mask.nii.gz    + .json
        <prefix>_res-native_desc-changes_dseg.nii.gz   + .json
        <prefix>_desc-changes_dseg.tsv       the dseg labels' names (both grids)
        <prefix>_desc-changes_lesions.tsv    + .json (its columns, from LESION_COLUMN_INFO)
        <prefix>_desc-changes_prediction.json   the prediction record
    sub-<label>/figures/<prefix>_desc-changes_overlay.png
    sub-<label>[_ses-<label>].html   a pair's page (its place; see outputs.PairEntities)

``<prefix>`` is ``sub-<label>[_ses-<label>]``. File names come from
:mod:`mschange.detection.outputs` (shared with the workflow's working copies); this
module writes what describes them. Subject and session carry over from a BIDS input
(:func:`pair_entities`); other inputs give the subject id without its hyphens and no
session. The raw scans are named by BIDS URIs (``bids:raw:sub-01/ses-02/anat/...``,
``bids:inputs:...`` for scans outside a BIDS dataset) whose dataset names
``dataset_description.json``'s ``DatasetLinks`` resolves. See docs/bids.md.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mschange import __version__
from mschange.detection.outputs import (
    BIDS_LABEL,
    IMAGE_KEYS,
    PairEntities,
    bids_label,
    bids_prediction_paths,
    pair_page_paths,
    sidecar_path,
)
from mschange.io import atomic_path, save_json

log = logging.getLogger(__name__)
PathLike = str | os.PathLike[str]

BIDS_VERSION = "1.10.0"
PIPELINE_NAME = "mschange"
DESCRIPTION_FILE = "dataset_description.json"
BIDSIGNORE_FILE = ".bidsignore"
# The files at the root of a dataset that mschange writes, besides the ``sub-<label>/``
# folders and the pairs' pages (``sub-<label>[_ses-<label>].html``). A dataset-wide file
# added later (a summary) is listed here, so that ``predict`` may replace it on a rerun.
DATASET_FILES = (DESCRIPTION_FILE, BIDSIGNORE_FILE)
# Not BIDS data, or suffixes BIDS does not define: the BIDS validator skips them
# (pybids indexes everything).
BIDSIGNORE = (
    "preproc/",
    "figures/",
    "*.html",
    "*_lesions.tsv",
    "*_lesions.json",
    "*_prediction.json",
)
# The name of the dataset a scan outside any BIDS dataset is linked from (its folder).
INPUTS_LINK = "inputs"


# ------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class BidsScan:
    """A scan inside a BIDS dataset: ``<root>/sub-<subject>/[ses-<session>/]<datatype>/``."""

    root: Path
    relpath: str  # POSIX, from the root
    subject: str
    session: str | None


def find_bids_scan(path: PathLike) -> BidsScan | None:
    """``path`` as a scan of a BIDS dataset (its folders name its subject and session as
    its file name does, and the folder above ``sub-<label>/`` holds a
    ``dataset_description.json``); None for any other file."""
    scan = Path(os.path.abspath(path))
    named = re.match(rf"sub-({BIDS_LABEL})(?:_ses-({BIDS_LABEL}))?_", scan.name)
    if named is None:
        return None
    subject, session = named.group(1), named.group(2)
    above = scan.parent.parent  # above the data type folder
    if session is not None:
        if above.name != f"ses-{session}":
            return None
        above = above.parent
    if above.name != f"sub-{subject}" or not (above.parent / DESCRIPTION_FILE).is_file():
        return None
    root = above.parent
    return BidsScan(root, scan.relative_to(root).as_posix(), subject, session)


def pair_entities(
    subject: str, followup: PathLike, *, subject_from_scan: bool = True
) -> PairEntities:
    """A pair's subject and session labels: the follow-up's when it is a scan of a BIDS
    dataset (its subject unless ``subject_from_scan`` is false, as when predict's
    ``--subject`` names it), else the subject id without its hyphens and no session."""
    scan = find_bids_scan(followup)
    if scan is None:
        return PairEntities(bids_label(subject))
    return PairEntities(scan.subject if subject_from_scan else bids_label(subject), scan.session)


def check_unique(entities: Mapping[str, PairEntities]) -> None:
    """Refuse pairs (subject id -> entities) that would share file names."""
    seen: dict[PairEntities, str] = {}
    for subject, pair in entities.items():
        if pair in seen:
            raise ValueError(
                f"pairs {seen[pair]!r} and {subject!r} would both be {pair.prefix} in the "
                "BIDS derivatives dataset (same subject and follow-up session); give one "
                "of them another follow-up, or leave one out"
            )
        seen[pair] = subject


class SourceLinks:
    """The datasets the raw scans come from, named for ``DatasetLinks``: BIDS datasets
    ``raw``, ``raw2``, ...; the folder holding every other scan ``inputs``. A scan's
    :meth:`uri` is a BIDS URI into them."""

    def __init__(self, scans: Iterable[PathLike]) -> None:
        roots: list[Path] = []
        others: list[str] = []
        for path in scans:
            scan = find_bids_scan(path)
            if scan is None:
                others.append(os.path.abspath(path))
            elif scan.root not in roots:
                roots.append(scan.root)
        self.folders = {("raw" if i == 0 else f"raw{i + 1}"): root for i, root in enumerate(roots)}
        if others:
            common = os.path.commonpath([os.path.dirname(p) for p in others])
            self.folders[INPUTS_LINK] = Path(common)

    def uri(self, path: PathLike) -> str:
        scan = find_bids_scan(path)
        if scan is not None:
            name = next(n for n, root in self.folders.items() if root == scan.root)
            return f"bids:{name}:{scan.relpath}"
        relative = Path(os.path.abspath(path)).relative_to(self.folders[INPUTS_LINK])
        return f"bids:{INPUTS_LINK}:{relative.as_posix()}"

    def dataset_links(self) -> dict[str, str]:
        return {name: folder.as_uri() for name, folder in self.folders.items()}

    def source_datasets(self) -> list[dict[str, str]]:
        """``SourceDatasets``: each dataset's URL (a ``file://`` URI), and its DOI and
        version when its ``dataset_description.json`` gives them."""
        sources = []
        for folder in self.folders.values():
            entry = {"URL": folder.as_uri()}
            description = _read_description(folder)
            if description.get("DatasetDOI"):
                entry["DOI"] = str(description["DatasetDOI"])
            if description.get("DatasetVersion"):
                entry["Version"] = str(description["DatasetVersion"])
            sources.append(entry)
        return sources


def _read_description(root: Path) -> dict[str, Any]:
    try:
        description = json.loads((root / DESCRIPTION_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return description if isinstance(description, dict) else {}


# ------------------------------------------------------------------ the dataset


def code_url() -> str | None:
    """The project's source URL from the package metadata (``[project.urls]`` of
    pyproject.toml: ``Source``, ``Repository`` or ``Homepage``); None when it has none."""
    from importlib.metadata import PackageNotFoundError, metadata

    try:
        entries = metadata(PIPELINE_NAME).get_all("Project-URL") or []
    except PackageNotFoundError:
        return None
    urls = {}
    for entry in entries:
        label, _, url = entry.partition(",")
        urls[label.strip().casefold()] = url.strip()
    return next((urls[k] for k in ("source", "repository", "code", "homepage") if k in urls), None)


def container() -> dict[str, str] | None:
    """The container this process runs in, when it says so (Apptainer/Singularity set
    ``APPTAINER_CONTAINER``/``SINGULARITY_CONTAINER`` to the image; Docker leaves
    ``/.dockerenv``)."""
    for variable, kind in (
        ("APPTAINER_CONTAINER", "apptainer"),
        ("SINGULARITY_CONTAINER", "singularity"),
    ):
        image = os.environ.get(variable)
        if image:
            return {"Type": kind, "Tag": os.path.basename(image)}
    if os.path.exists("/.dockerenv"):
        return {"Type": "docker"}
    return None


def generated_by() -> dict[str, Any]:
    entry: dict[str, Any] = {
        "Name": PIPELINE_NAME,
        "Version": __version__,
        "Description": "MS lesion changes between a baseline and a follow-up FLAIR scan "
        "(self-supervised change detector)",
    }
    url = code_url()
    if url:
        entry["CodeURL"] = url
    running_in = container()
    if running_in:
        entry["Container"] = running_in
    return entry


def dataset_description(links: SourceLinks) -> dict[str, Any]:
    return {
        "Name": "mschange: MS lesion changes between two FLAIR scans",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [generated_by()],
        "SourceDatasets": links.source_datasets(),
        "DatasetLinks": links.dataset_links(),
    }


def is_mschange_dataset(root: PathLike) -> bool:
    """Whether ``root`` holds a derivatives dataset that mschange wrote."""
    description = _read_description(Path(root))
    generated = description.get("GeneratedBy")
    return (
        description.get("DatasetType") == "derivative"
        and isinstance(generated, list)
        and bool(generated)
        and isinstance(generated[0], dict)
        and generated[0].get("Name") == PIPELINE_NAME
    )


# ------------------------------------------------------------------ one pair


@dataclass(frozen=True)
class PairPrediction:
    """One pair's prediction in a dataset: its entities, its files
    (:func:`mschange.detection.outputs.bids_prediction_paths`), its raw scans and its
    prediction record (settings, model)."""

    entities: PairEntities
    paths: Mapping[str, str]
    baseline: str
    followup: str
    record: Mapping[str, Any]


IMAGE_DESCRIPTIONS = {
    "probseg": "Probability that the FLAIR signal changed between the baseline and the "
    "follow-up (a new, enlarging, shrinking or resolving lesion), from 0 to 1; 0 outside "
    "the brain",
    "mask": "Detected changes (1) and the rest (0): change probability above "
    "ProbabilityThreshold, in 26-connected components of at least MinimumChangeVoxels "
    "voxels of the isotropic grid",
    "dseg": "Detected changes labelled 1..n, largest first (lesion_id of the lesion "
    "table; names in the dseg.tsv beside it), 0 elsewhere",
}
GRIDS = {
    "iso": "isotropic grid of the preprocessed follow-up, which the detector reads",
    "native": "grid of the follow-up file (RawSources[0])",
}


def _suffix(path: str) -> str:
    return Path(path).name.split(".", 1)[0].rsplit("_", 1)[-1]


def _resolution(path: str, grid: str) -> str:
    import nibabel as nib

    from mschange.io import voxel_sizes

    image = nib.load(path)
    assert isinstance(image, nib.Nifti1Image)
    zooms = [float(z) for z in voxel_sizes(image.affine)]
    size = f"{zooms[0]:g}" if len(set(zooms)) == 1 else " x ".join(f"{z:g}" for z in zooms)
    return f"{size} mm voxels: the {GRIDS[grid]}"


def _model(summary: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "Name": summary.get("name"),
        "Version": summary.get("package_version"),
        "File": summary.get("path"),
    }


def image_sidecar(pair: PairPrediction, key: str, links: SourceLinks) -> dict[str, Any]:
    """The JSON sidecar of one of a pair's images (a key of ``IMAGE_KEYS``)."""
    path = pair.paths[key]
    suffix = _suffix(path)
    settings = pair.record.get("settings", {})
    raw = [links.uri(pair.followup), links.uri(pair.baseline)]
    sidecar: dict[str, Any] = {
        "Description": IMAGE_DESCRIPTIONS[suffix],
        # Made from the preprocessed pair (the follow-up's grid) and the raw follow-up.
        "Sources": raw,
        "RawSources": raw,
        # The follow-up's scanner space: no space- entity.
        "SpatialReference": raw[0],
        "Resolution": _resolution(path, IMAGE_KEYS[key]),
        "SkullStripped": True,
    }
    if suffix == "probseg":
        sidecar["Units"] = "arbitrary"
    else:
        sidecar["ProbabilityThreshold"] = settings.get("kappa")
        sidecar["MinimumChangeVoxels"] = settings.get("min_blob_voxels")
    if suffix == "mask":
        sidecar["Type"] = "Lesion"
    if "model" in pair.record:
        sidecar["Model"] = _model(pair.record["model"])
    if "ensemble" in pair.record:
        sidecar["Ensemble"] = [_model(m) for m in pair.record["ensemble"]]
    sidecar["InferenceSettings"] = dict(settings)
    return sidecar


def lesion_dictionary(columns: Iterable[str]) -> dict[str, Any]:
    """The lesion table's JSON sidecar: each of its ``columns`` described (BIDS data
    dictionary) by :data:`mschange.detection.inference.LESION_COLUMN_INFO`."""
    from mschange.detection.inference import LESION_COLUMN_INFO

    missing = [c for c in columns if c not in LESION_COLUMN_INFO]
    if missing:
        raise ValueError(f"lesion table column(s) {missing} are not in LESION_COLUMN_INFO")
    return {column: dict(LESION_COLUMN_INFO[column]) for column in columns}


def write_pair_metadata(pair: PairPrediction, links: SourceLinks) -> list[Path]:
    """Everything that describes one pair's files (their images, lesion table and record
    already written): a sidecar per image, the lesion table's data dictionary and the
    names of the ``dseg`` labels. Returns the files written."""
    written = [
        save_json(image_sidecar(pair, key, links), sidecar_path(pair.paths[key]))
        for key in IMAGE_KEYS
    ]
    lesions = pd.read_csv(pair.paths["lesions"], sep="\t")
    written.append(
        save_json(lesion_dictionary(lesions.columns), sidecar_path(pair.paths["lesions"]))
    )
    names = pd.DataFrame(
        {
            "index": lesions["lesion_id"].astype(int),
            "name": [
                f"change {i} ({d})"
                for i, d in zip(lesions["lesion_id"], lesions["direction"], strict=True)
            ],
        }
    )
    with atomic_path(pair.paths["label_names"]) as tmp:
        names.to_csv(tmp, sep="\t", index=False)
    written.append(Path(pair.paths["label_names"]))
    return written


def write_dataset(root: PathLike, pairs: Sequence[PairPrediction]) -> None:
    """Make ``root``, which holds ``pairs``' images, tables and records, a BIDS
    derivatives dataset: ``dataset_description.json``, ``.bidsignore`` and every pair's
    sidecars."""
    links = SourceLinks(scan for pair in pairs for scan in (pair.followup, pair.baseline))
    root = Path(root)
    save_json(dataset_description(links), root / DESCRIPTION_FILE)
    with atomic_path(root / BIDSIGNORE_FILE) as tmp:
        tmp.write_text("".join(f"{pattern}\n" for pattern in BIDSIGNORE))
    for pair in pairs:
        write_pair_metadata(pair, links)


def copy_predictions(
    root: PathLike,
    predictions: Mapping[str, Mapping[str, Any]],
) -> list[PairPrediction]:
    """The workflow's rule bids_derivatives: copy each pair's prediction (subject id ->
    ``outputs``: its files by key, ``pages``: its viewer, summary and QC picture by key
    (optional), ``baseline``, ``followup``: its raw scans) from the
    workflow's flat folders into the dataset ``root`` and describe them
    (:func:`write_dataset`). Subject and session come from BIDS inputs."""
    entities = {
        subject: pair_entities(subject, str(given["followup"]))
        for subject, given in predictions.items()
    }
    check_unique(entities)
    pairs = []
    for subject, given in predictions.items():
        paths = bids_prediction_paths(str(root), entities[subject])
        pages = pair_page_paths(str(root), entities[subject])
        for targets, files in ((paths, given["outputs"]), (pages, given.get("pages", {}))):
            for key, source in files.items():
                Path(targets[key]).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, targets[key])
        record = json.loads(Path(paths["record"]).read_text())
        pairs.append(
            PairPrediction(
                entities[subject], paths, str(given["baseline"]), str(given["followup"]), record
            )
        )
    write_dataset(root, pairs)
    log.info(
        "%s: a BIDS derivatives dataset of %d pair(s): %s",
        root,
        len(pairs),
        ", ".join(pair.entities.prefix for pair in pairs),
    )
    return pairs
