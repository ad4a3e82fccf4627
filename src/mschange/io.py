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

    def __init__(
        self, problem: str, path: str | os.PathLike[str] | None = None, subject: str | None = None
    ) -> None:
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


def save_nifti(
    data: npt.ArrayLike,
    affine: npt.NDArray[np.floating[Any]],
    path: str | os.PathLike[str],
    *,
    header: nib.Nifti1Header | None = None,
    dtype: npt.DTypeLike = np.float32,
) -> Path:
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


def _check_gzip_complete(path: Path, subject: str | None) -> int:
    """Read a .gz stream to its end: a truncated download fails here, not mid-pipeline.

    Returns the number of decompressed bytes (compared with what the header promises).
    """
    total = 0
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(1 << 24):
                total += len(chunk)
    except (EOFError, OSError, zlib.error) as error:
        raise InputError(
            f"the gzip stream is truncated or corrupt ({error})", path, subject
        ) from error
    return total


# The smallest scan (baseline or follow-up) the workflow accepts. Labels are not held to
# these: a label lies on its follow-up's grid and may be all zero. No brain FLAIR falls
# below them: the 18 public MS FLAIRs under shared/data (open_ms_data and ISBI 2015)
# cover at least 175 mm in-plane and 129 mm through-plane, in at least 35 slices; a
# thick-slab acquisition may cover less, so the bar is far lower. Below it a scan
# cannot hold a brain, and HD-BET would fail on it hours later ("attempt to get argmax
# of an empty sequence") instead of now.
MIN_SCAN_FOV_MM = 80.0
MIN_SCAN_VOXELS = 16
# A label holds 0 (no change) and 1 (change) only; scoring counts > 0 as change, so a
# -1, 0.5 or 2 would silently mean something else.
LABEL_VALUES = (0.0, 1.0)


def _format_numbers(values: Any, digits: int = 3) -> str:
    return " x ".join(f"{float(v):.{digits}g}" for v in values)


def _raw_header(path: Path, image: Any) -> Any:
    """The header as stored: nibabel's loader silently sets a zero pixdim to 1."""
    from nibabel.openers import ImageOpener

    with ImageOpener(str(path)) as stream:
        return type(image.header).from_fileobj(stream, check=False)


def _voxel_bytes_problem(image: Any, available: int) -> str | None:
    """Why ``available`` bytes (of the file, decompressed) cannot hold the header's voxels."""
    shape = tuple(int(n) for n in image.header.get_data_shape())
    dtype = image.header.get_data_dtype()
    promised = int(np.prod(shape, dtype=object)) * dtype.itemsize
    offset = int(image.dataobj.offset)
    held = max(available - offset, 0)
    if held >= promised:
        return None
    return (
        f"the header promises {promised:,} bytes of voxel data (shape {shape}, "
        f"{dtype}, from byte {offset}), the file holds {held:,}: a truncated file or "
        "a wrong header"
    )


def load_checked_image(
    path: str | os.PathLike[str],
    subject: str | None = None,
    *,
    check_values: bool = True,
    read_voxels: bool = True,
) -> nib.Nifti1Image:
    """Load a 3D NIfTI image and refuse anything the pipeline cannot use.

    Checks, in order: the file exists, is a file (not a folder), is readable and not
    empty, a ``.gz`` file is complete, it is a readable NIfTI, the image is 3D (trailing
    singleton dimensions are dropped), no voxel size in the header (pixdim) is zero, the
    affine is invertible, the file holds as many bytes as the header promises, and
    (``check_values``) every voxel is finite. Returns the image with its data loaded as
    float32.

    ``read_voxels=False`` checks the header only: the data are neither decompressed nor
    read (no truncation or value check; a plain .nii's size is still compared with the
    header's promise, a .gz's is not) and the image is returned as nibabel loaded it.
    """
    file = Path(path)
    if not file.exists():
        raise InputError("the file does not exist", file, subject)
    if file.is_dir():
        raise InputError("this is a folder, not an image file", file, subject)
    if not file.is_file():
        raise InputError("this is not a regular file", file, subject)
    if not os.access(file, os.R_OK):
        raise InputError("the file is not readable (permissions)", file, subject)
    size = file.stat().st_size
    if size == 0:
        raise InputError("the file is empty", file, subject)
    compressed = file.name.endswith(".gz")
    if compressed and read_voxels:
        size = _check_gzip_complete(file, subject)
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
        raise InputError(
            f"expected a 3D image, found a {kind} image of shape {image.shape}", file, subject
        )
    if min(shape) < 2:
        raise InputError(
            f"expected a 3D volume, found shape {shape} (a single slice?)", file, subject
        )
    try:
        pixdim = np.asarray(_raw_header(file, image)["pixdim"][1:4], dtype=np.float64)
    except Exception as error:  # already loaded once: unlikely
        raise InputError(f"not a readable NIfTI header ({error})", file, subject) from error
    if not np.all(np.isfinite(pixdim)) or np.any(pixdim == 0):
        raise InputError(
            f"the header's voxel size (pixdim) is {_format_numbers(pixdim)} "
            "mm: a zero voxel size, which nibabel would silently take as 1 mm "
            "and other tools reject; set the true voxel size in the header",
            file,
            subject,
        )
    affine = image.affine
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError(
            "the image's affine (voxel-to-scanner matrix) is not invertible", file, subject
        )
    if read_voxels or not compressed:
        problem = _voxel_bytes_problem(image, size)
        if problem is not None:
            raise InputError(problem, file, subject)
    if not read_voxels:
        return image
    try:
        data = np.asarray(image.dataobj, dtype=np.float32).reshape(shape)
    except Exception as error:
        reason = str(error) or type(error).__name__
        raise InputError(f"the voxel data cannot be read ({reason})", file, subject) from error
    if check_values:
        bad = ~np.isfinite(data)
        if bad.any():
            raise InputError(f"{int(bad.sum())} voxels are NaN or infinite", file, subject)
    checked = nib.Nifti1Image(data, affine, header=image.header)
    checked.header.set_data_shape(shape)
    return checked


def check_scan(
    image: nib.Nifti1Image,
    path: str | os.PathLike[str],
    subject: str | None = None,
    *,
    voxels: bool = True,
) -> None:
    """Refuse a baseline or follow-up scan that cannot hold a brain.

    From the header: at least :data:`MIN_SCAN_VOXELS` voxels and :data:`MIN_SCAN_FOV_MM`
    mm along every axis; with ``voxels`` (the image's data loaded, as
    :func:`load_checked_image` returns it), not one value everywhere.
    """
    shape = tuple(int(n) for n in image.shape[:3])
    sizes = voxel_sizes(image.affine)
    fov = np.asarray(shape) * sizes
    if min(shape) < MIN_SCAN_VOXELS:
        raise InputError(
            f"the scan has only {min(shape)} voxels along axis "
            f"{shape.index(min(shape))} (shape {shape}); a brain scan has at "
            f"least {MIN_SCAN_VOXELS} along every axis",
            path,
            subject,
        )
    if fov.min() < MIN_SCAN_FOV_MM - 1e-3:  # a rotated affine's 1 mm is 0.9999999...
        raise InputError(
            f"the scan covers only {_format_numbers(fov)} mm ({shape[0]} x "
            f"{shape[1]} x {shape[2]} voxels of {_format_numbers(sizes)} mm); "
            f"a brain scan covers at least {MIN_SCAN_FOV_MM:g} mm along every "
            "axis: check the voxel size in the header, or that this is the "
            "whole scan",
            path,
            subject,
        )
    if voxels:
        data = np.asarray(image.dataobj)
        low, high = float(data.min()), float(data.max())
        if low == high:
            raise InputError(
                f"every voxel of the scan is {low:g}: a blank image, with no head to find",
                path,
                subject,
            )


def check_label_values(
    image: nib.Nifti1Image, path: str | os.PathLike[str], subject: str | None = None
) -> None:
    """Refuse a label holding anything but 0 (no change) and 1 (change)."""
    data = np.asarray(image.dataobj)
    other = (data != LABEL_VALUES[0]) & (data != LABEL_VALUES[1])
    if not other.any():
        return
    values, counts = np.unique(data[other], return_counts=True)
    found = ", ".join(
        f"{float(v):g} ({int(n)} voxels)" for v, n in list(zip(values, counts, strict=True))[:5]
    )
    more = f" and {len(values) - 5} other values" if len(values) > 5 else ""
    raise InputError(
        f"a label holds only 0 (no change) and 1 (change); this one also holds "
        f"{found}{more}: binarise it (e.g. 1 where > 0.5) before use",
        path,
        subject,
    )


def voxel_digest(image: nib.Nifti1Image) -> str:
    """A fingerprint of an image's voxels (shape and float32 values), not its header."""
    data = np.ascontiguousarray(np.asarray(image.dataobj, dtype=np.float32))
    digest = hashlib.sha1(repr(data.shape).encode(), usedforsecurity=False)
    digest.update(data.tobytes())
    return digest.hexdigest()


def load_float_image(
    path: str | os.PathLike[str],
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
        raise ValueError(
            f"file lists of different lengths: { {k: len(v) for k, v in columns.items()} }"
        )
    lines = ["\t".join(columns), *("\t".join(row) for row in zip(*columns.values(), strict=True))]
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
