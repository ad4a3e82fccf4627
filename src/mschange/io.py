"""Reading, checking and writing NIfTI images.

Every writer goes through :func:`atomic_path`, so that a crash or a kill never
leaves a half-written file under an output name that Snakemake would trust.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt


class InputError(ValueError):
    """A problem with a user-supplied input, phrased for the user.

    The message always names the subject (when known), the file and what is wrong.
    """

    def __init__(self, problem: str, path: str | os.PathLike[str] | None = None,
                 subject: str | None = None) -> None:
        self.problem = problem
        self.path = None if path is None else str(path)
        self.subject = subject
        parts = []
        if subject is not None:
            parts.append(f"subject {subject!r}")
        if path is not None:
            parts.append(f"file {str(path)!r}")
        where = ", ".join(parts)
        super().__init__(f"{where}: {problem}" if where else problem)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary name keeps the final suffixes (``.nii.gz``, ``.png``...) so that
    writers that pick a format from the extension still work.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(final.suffixes)
    stem = final.name[: len(final.name) - len(suffix)] if suffix else final.name
    tmp = final.with_name(f".{stem}.tmp{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_nifti(data: npt.ArrayLike, affine: npt.NDArray[np.floating[Any]],
               path: str | os.PathLike[str], *, header: nib.Nifti1Header | None = None,
               dtype: npt.DTypeLike = np.float32) -> Path:
    """Write ``data`` as NIfTI with the given affine (sform and qform), atomically."""
    array = np.asarray(data).astype(dtype, copy=False)
    hdr = header.copy() if header is not None else None
    image = nib.Nifti1Image(array, affine, header=hdr)
    image.set_data_dtype(array.dtype)
    # Both forms set explicitly: downstream tools (ITK, FSL) disagree on which to trust.
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    image.header["scl_slope"] = np.nan
    image.header["scl_inter"] = np.nan
    with atomic_path(path) as tmp:
        nib.save(image, tmp)
    return Path(path)


def save_json(payload: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=_json_default) + "\n")
    return Path(path)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _check_gzip_complete(path: Path, subject: str | None) -> None:
    """Read a .gz stream to its end: a truncated download fails here, not mid-pipeline."""
    try:
        with gzip.open(path, "rb") as stream:
            while stream.read(1 << 24):
                pass
    except (EOFError, OSError, zlib.error) as error:
        raise InputError(f"the gzip stream is truncated or corrupt ({error})", path,
                         subject) from error


def load_checked_image(path: str | os.PathLike[str], subject: str | None = None,
                       *, check_values: bool = True) -> nib.Nifti1Image:
    """Load a 3D NIfTI image and refuse anything the pipeline cannot use.

    Checks, in order: the file exists and is a readable NIfTI, a ``.gz`` file is
    complete, the image is 3D (trailing singleton dimensions are dropped), the
    affine is invertible, and (``check_values``) every voxel is finite.
    Returns the image with its data loaded as float32.
    """
    file = Path(path)
    if not file.exists():
        raise InputError("the file does not exist", file, subject)
    if not file.is_file():
        raise InputError("this is not a regular file", file, subject)
    if not os.access(file, os.R_OK):
        raise InputError("the file is not readable (permissions)", file, subject)
    if file.stat().st_size == 0:
        raise InputError("the file is empty", file, subject)
    if file.name.endswith(".gz"):
        _check_gzip_complete(file, subject)
    try:
        image = nib.load(file)
    except Exception as error:  # nibabel raises many types for unreadable files
        raise InputError(f"not a readable NIfTI image ({error})", file, subject) from error
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise InputError(f"expected a NIfTI image, found {type(image).__name__}", file, subject)
    shape = tuple(int(n) for n in image.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        kind = f"{len(shape)}D"
        raise InputError(f"expected a 3D image, found a {kind} image of shape {image.shape}",
                         file, subject)
    if min(shape) < 2:
        raise InputError(f"expected a 3D volume, found shape {shape} (a single slice?)", file,
                         subject)
    affine = image.affine
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError("the image's affine (voxel-to-scanner matrix) is not invertible",
                         file, subject)
    try:
        data = np.asarray(image.dataobj, dtype=np.float32).reshape(shape)
    except Exception as error:
        raise InputError(f"the voxel data cannot be read ({error})", file, subject) from error
    if check_values:
        bad = ~np.isfinite(data)
        if bad.any():
            raise InputError(f"{int(bad.sum())} voxels are NaN or infinite", file, subject)
    checked = nib.Nifti1Image(data, affine, header=image.header)
    checked.header.set_data_shape(shape)
    return checked


def load_float_image(path: str | os.PathLike[str]
                     ) -> tuple[npt.NDArray[np.float32], nib.Nifti1Image]:
    """A pipeline intermediate's voxels as float32, and the image (already checked when
    it was an input)."""
    image = nib.load(path)
    assert isinstance(image, nib.Nifti1Image)
    return np.asarray(image.dataobj, dtype=np.float32), image


def brain_intersection(*masks: str | os.PathLike[str]) -> npt.NDArray[np.bool_]:
    """Voxels inside every mask: only tissue that both time points show may change."""
    inside: npt.NDArray[np.bool_] | None = None
    for path in masks:
        current = np.asarray(nib.load(path).dataobj) > 0  # type: ignore[attr-defined]
        inside = current if inside is None else inside & current
    assert inside is not None
    return inside


def voxel_sizes(affine: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float64]:
    """Voxel edge lengths in mm from an affine."""
    return np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))


def write_file_table(columns: dict[str, list[str]], path: str | os.PathLike[str]) -> Path:
    """A TSV of file paths, one column per kind (equal lengths), written atomically.

    A training rule reads its thousands of inputs from one such table instead of
    listing them itself: Snakemake checks a job's input list for every job that needs
    its output, so a short list keeps the job graph of a large cohort fast to build.
    """
    lengths = {len(files) for files in columns.values()}
    if len(lengths) > 1:
        raise ValueError(f"file lists of different lengths: "
                         f"{ {k: len(v) for k, v in columns.items()} }")
    lines = ["\t".join(columns), *("\t".join(row) for row in zip(*columns.values(),
                                                                 strict=True))]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return Path(path)


def read_file_table(path: str | os.PathLike[str]) -> dict[str, list[str]]:
    """The columns of a table written by :func:`write_file_table`."""
    header, *rows = Path(path).read_text().splitlines()
    names = header.split("\t")
    columns: dict[str, list[str]] = {name: [] for name in names}
    for row in rows:
        for name, value in zip(names, row.split("\t"), strict=True):
            columns[name].append(value)
    return columns


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file, read in 1 MB chunks (model files, lesion banks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
