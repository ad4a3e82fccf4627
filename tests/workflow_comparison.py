"""Comparing two runs' results/ folders file by file, leaving out what differs by nature.

What may differ between two runs of the same data: logs and benchmarks, wall-clock
times and speeds inside tables, records and model files, and pictures that plot them.
Everything else (images, transforms, weights, losses, lesion tables, metrics) must be
equal, exactly.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import torch

# Folders of run bookkeeping, not results.
SKIPPED_FOLDERS = ("logs", "benchmarks", "status", "cache")
# Table columns and record keys that hold times or speeds, and checksums of model files
# (which store their training times; the weights themselves are compared).
TIMING = re.compile(
    r"(^|_)(elapsed|seconds|per_second|duration|time|started|finished)"
    r"(_|$)|^seconds_|_s$|^sha256$"
)
# Pictures whose content includes times (training curves plot speed), and the report,
# which embeds them; compared by their presence only.
TIMED_PICTURES = re.compile(r"(training_curve|loss)\.png$|report/index\.html$")


# Where a BIDS derivatives dataset's inputs lie (file:// addresses): each run's own folder.
RUN_LOCATION_KEYS = ("DatasetLinks", "SourceDatasets")


def _without_timing(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_timing(v) for k, v in value.items() if not TIMING.search(str(k))}
    if isinstance(value, list):
        return [_without_timing(v) for v in value]
    return value


def _same_file(a: Path, b: Path) -> str | None:
    """None when equal; otherwise a short description of the difference."""
    name = a.name
    if TIMED_PICTURES.search(str(a)):
        return None
    if name.endswith((".nii.gz", ".nii")):
        image_a, image_b = nib.load(a), nib.load(b)
        if not np.array_equal(image_a.affine, image_b.affine):
            return "affines differ"
        data_a, data_b = np.asarray(image_a.dataobj), np.asarray(image_b.dataobj)
        if data_a.shape != data_b.shape or not np.array_equal(data_a, data_b):
            return (
                f"voxels differ (max |a-b| {np.abs(data_a - data_b).max():.3g})"
                if data_a.shape == data_b.shape
                else "shapes differ"
            )
        return None
    if name.endswith(".pt"):
        payload_a = torch.load(a, weights_only=True, map_location="cpu")
        payload_b = torch.load(b, weights_only=True, map_location="cpu")
        weights_a, weights_b = payload_a.pop("state_dict"), payload_b.pop("state_dict")
        if weights_a.keys() != weights_b.keys():
            return "weight names differ"
        for key in weights_a:
            if not torch.equal(weights_a[key], weights_b[key]):
                return f"weights {key} differ"
        if json.dumps(_without_timing(payload_a), sort_keys=True, default=str) != json.dumps(
            _without_timing(payload_b), sort_keys=True, default=str
        ):
            return "stored records differ"
        return None
    if name.endswith(".tsv"):
        table_a = pd.read_csv(a, sep="\t", keep_default_na=False)
        table_b = pd.read_csv(b, sep="\t", keep_default_na=False)
        timing = [c for c in table_a.columns if TIMING.search(c)]
        try:
            pd.testing.assert_frame_equal(
                table_a.drop(columns=timing),
                table_b.drop(columns=timing, errors="ignore"),
                check_exact=True,
            )
        except AssertionError as error:
            return str(error).splitlines()[0]
        return None
    if name.endswith(".json"):
        record_a, record_b = json.loads(a.read_text()), json.loads(b.read_text())
        if name == "dataset_description.json":
            for key in RUN_LOCATION_KEYS:
                if (key in record_a) != (key in record_b):
                    return f"{key} present in one run only"
                record_a.pop(key, None)
                record_b.pop(key, None)
        if _without_timing(record_a) != _without_timing(record_b):
            return "records differ"
        return None
    if name.endswith(".md") and (a.with_suffix(".tsv")).exists():
        return None  # the Markdown copy of a table compared above
    return None if a.read_bytes() == b.read_bytes() else "bytes differ"


def compare_results(first: Path, second: Path) -> int:
    """Assert two results/ folders hold the same files with the same content; return
    the number of files compared."""

    def files(root: Path) -> set[str]:
        return {
            str(p.relative_to(root))
            for p in root.rglob("*")
            if p.is_file() and not str(p.relative_to(root)).startswith(SKIPPED_FOLDERS)
        }

    in_first, in_second = files(first), files(second)
    assert in_first == in_second, (sorted(in_first - in_second), sorted(in_second - in_first))
    differences = {
        name: problem
        for name in sorted(in_first)
        if (problem := _same_file(first / name, second / name)) is not None
    }
    assert not differences, differences
    return len(in_first)
