"""File names of one pair's prediction, shared by the workflow and ``mschange predict``.

One table (:data:`PREDICTION_SUFFIXES`) names every output after the pair's entities. The
workflow's working copies sit flat in ``results/predict/model-<name>/sub-<id>/``
(:func:`prediction_paths`); a BIDS derivatives dataset (``mschange predict --out``, the
workflow's ``results/derivatives/mschange/``) puts the same names under
``sub-<label>/[ses-<label>/]anat/`` and the figures under ``sub-<label>/figures/``
(:func:`bids_prediction_paths`; the sidecars are :mod:`mschange.bids`'s). See
docs/bids.md.

Entities: both change maps are in the follow-up's scanner space (the baseline is
registered onto the follow-up), so no ``space-`` (BIDS: "scanner" is implied when a
name has no ``space``, and ``space-scanner`` SHOULD NOT be written); the two grids
differ only in resolution, so ``res-``: ``res-iso`` the isotropic grid of the
preprocessed follow-up (what the detector reads), ``res-native`` the grid of the
follow-up file the user gave.

Kept free of heavy imports: the workflow reads it while building the job graph.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Output key -> file name after ``sub-<id>`` (or ``sub-<label>[_ses-<label>]``).
PREDICTION_SUFFIXES = {
    "probability": "_res-iso_desc-change_probseg.nii.gz",
    "mask": "_res-iso_desc-change_mask.nii.gz",
    "labels": "_res-iso_desc-changes_dseg.nii.gz",
    "native_probability": "_res-native_desc-change_probseg.nii.gz",
    "native_mask": "_res-native_desc-change_mask.nii.gz",
    "native_labels": "_res-native_desc-changes_dseg.nii.gz",
    "lesions": "_desc-changes_lesions.tsv",
    "record": "_desc-changes_prediction.json",
    # A QC picture; optional (``predict_with_network`` draws it when it is asked for).
    "figure": "_desc-changes_overlay.png",
}
# The images, by grid (``res-`` label): what a sidecar describes.
IMAGE_KEYS = {
    "probability": "iso",
    "mask": "iso",
    "labels": "iso",
    "native_probability": "native",
    "native_mask": "native",
    "native_labels": "native",
}
# Outputs a BIDS derivatives dataset keeps in ``sub-<label>/figures/`` (as fMRIPrep does)
# rather than in the data type folder: pictures, not data.
FIGURE_KEYS = frozenset({"figure"})
# Files of a BIDS dataset beside the images: the label names of the ``dseg`` images (one
# file for both grids, by BIDS inheritance).
BIDS_EXTRA_SUFFIXES = {"label_names": "_desc-changes_dseg.tsv"}
DATATYPE = "anat"
# A BIDS label: ASCII letters and digits.
BIDS_LABEL = "[A-Za-z0-9]+"


def suffixed_paths(folder: str, subject: str, suffixes: dict[str, str]) -> dict[str, str]:
    """Output key -> ``<folder>/sub-<subject><suffix>`` for every suffix."""
    return {key: f"{folder}/sub-{subject}{suffix}" for key, suffix in suffixes.items()}


def prediction_paths(folder: str, subject: str) -> dict[str, str]:
    """Every output of one pair's prediction, flat in ``folder`` (the workflow's)."""
    return suffixed_paths(folder, subject, PREDICTION_SUFFIXES)


def bids_label(subject: str) -> str:
    """A subject id as a BIDS label: its letters and digits (``p-01`` -> ``p01``)."""
    return re.sub(r"[^A-Za-z0-9]", "", subject)


@dataclass(frozen=True)
class PairEntities:
    """Where one pair sits in a BIDS derivatives dataset: subject and (follow-up) session
    labels. Every path is relative to the dataset's root."""

    subject: str
    session: str | None = None

    def __post_init__(self) -> None:
        for name, label in (("subject", self.subject), ("session", self.session)):
            if label is not None and not re.fullmatch(BIDS_LABEL, label):
                raise ValueError(f"BIDS {name} label {label!r}: use ASCII letters and digits")

    @property
    def prefix(self) -> str:
        """``sub-<label>[_ses-<label>]``: the start of every file name of the pair."""
        return f"sub-{self.subject}" + (f"_ses-{self.session}" if self.session else "")

    @property
    def folder(self) -> str:
        """``sub-<label>[/ses-<label>]/anat``: the pair's images and tables."""
        session = f"/ses-{self.session}" if self.session else ""
        return f"sub-{self.subject}{session}/{DATATYPE}"

    @property
    def figures(self) -> str:
        """``sub-<label>/figures``: the pair's pictures (not BIDS data; .bidsignore)."""
        return f"sub-{self.subject}/figures"

    @property
    def report(self) -> str:
        """``sub-<label>[_ses-<label>].html``, at the root: the pair's page (fMRIPrep's
        place for a subject's report; .bidsignore)."""
        return f"{self.prefix}.html"

    def path(self, folder: str, suffix: str) -> str:
        """``<folder>/<prefix><suffix>``, ``folder`` one of :attr:`folder`, :attr:`figures`."""
        return f"{folder}/{self.prefix}{suffix}"


def bids_prediction_paths(root: str, entities: PairEntities) -> dict[str, str]:
    """Every output of one pair's prediction in the BIDS derivatives dataset ``root``
    (the keys of :data:`PREDICTION_SUFFIXES` and :data:`BIDS_EXTRA_SUFFIXES`)."""
    return {
        key: f"{root}/"
        + entities.path(entities.figures if key in FIGURE_KEYS else entities.folder, suffix)
        for key, suffix in {**PREDICTION_SUFFIXES, **BIDS_EXTRA_SUFFIXES}.items()
    }


# A pair's pages (mschange.pair_pages), by key: its summary page at the root, where
# fMRIPrep puts a subject's report; the viewer and the summary's table and record beside
# the figures, with the preprocessing QC the summary shows. None of them is BIDS data
# (.bidsignore: *.html, figures/).
PAGE_SUFFIXES = {
    "viewer": "_desc-viewer.html",
    "summary_tsv": "_desc-summary.tsv",
    "summary_json": "_desc-summary.json",
}
# Its numbers stay with the preprocessed files: a JSON beside the picture would read, to
# BIDS tools, as the picture's sidecar.
QC_SUFFIXES = {"qc_figure": "_desc-preproc_qc.png"}
# The summary page's name where it is not at a dataset's root (the workflow's working copy).
SUMMARY_PAGE_SUFFIX = "_desc-summary.html"


def pair_page_paths(root: str, entities: PairEntities) -> dict[str, str]:
    """Where a pair's pages go in the dataset ``root``."""
    return {
        "summary_html": f"{root}/{entities.report}",
        **{
            key: f"{root}/" + entities.path(entities.figures, suffix)
            for key, suffix in {**PAGE_SUFFIXES, **QC_SUFFIXES}.items()
        },
    }


def page_paths(folder: str, subject: str) -> dict[str, str]:
    """A pair's pages flat in ``folder`` (the workflow's working copies), keyed as
    :func:`pair_page_paths`."""
    return suffixed_paths(folder, subject, {**PAGE_SUFFIXES, "summary_html": SUMMARY_PAGE_SUFFIX})


def viewer_link(paths: dict[str, str]) -> str:
    """The viewer as the summary page links it: relative to the summary's folder."""
    import posixpath

    return posixpath.relpath(paths["viewer"], posixpath.dirname(paths["summary_html"]))


def sidecar_path(path: str) -> str:
    """The JSON sidecar of a data file (``x.nii.gz`` -> ``x.json``)."""
    name = path.rsplit("/", 1)[-1]
    stem = name.split(".", 1)[0]
    return path[: len(path) - len(name)] + stem + ".json"
