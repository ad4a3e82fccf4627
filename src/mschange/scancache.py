"""Training scans decoded once into uncompressed files and read a crop at a time.

Training draws crops from every training scan, so holding them all in memory would
need about 75 MB per 1 mm scan (74 GB for 1,000 subjects). Compressed NIfTI cannot be
memory-mapped, so each scan is decoded once, put in the form training samples from
(RAS axis order, cut to its box, training's dtype), and written as an uncompressed
``.npy`` file into a cache folder (inside the run's checkpoint folder: a resumed run
reuses it and a finished training deletes it with its checkpoints).

A :class:`DiskArray` holds only a path, a shape and a dtype: each read maps the file,
copies the selection out and unmaps it again, so the pages read are not left mapped
into the process (they stay in the OS page cache, which the kernel reclaims, but not
in the process's resident size) and no file descriptor stays open per scan. The
process's peak memory is then one scan while the cache is built and one batch while
training, whatever the number of subjects.

An entry is keyed by what it was made from (the source files' paths, sizes and
modification times, and a description of the transformation), so a changed input gets
a new entry; entries a run did not use are removed by :meth:`ScanCache.prune`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from mschange.checkpoints import fingerprint_of_files
from mschange.io import atomic_path

log = logging.getLogger(__name__)

CACHE_VERSION = 1
CACHE_FOLDER = "scan_cache"  # inside a training run's checkpoint folder


class DiskArray:
    """A read-only array in an uncompressed ``.npy`` file, mapped only while read.

    Indexing (``array[region]``) returns an in-memory copy of the selection, as indexing
    a NumPy array with slices and integers would return (a copy instead of a view).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        mapped = np.load(self.path, mmap_mode="r")
        self.shape: tuple[int, ...] = tuple(int(n) for n in mapped.shape)
        self.dtype = mapped.dtype
        del mapped

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def __getitem__(self, index: Any) -> npt.NDArray[Any]:
        mapped = np.load(self.path, mmap_mode="r")
        # A copy: once ``mapped`` and its views are gone the file is unmapped.
        return np.array(mapped[index])

    def read(self) -> npt.NDArray[Any]:
        """The whole array, in memory."""
        return self[...]

    def __repr__(self) -> str:
        return f"DiskArray({str(self.path)!r}, shape={self.shape}, dtype={self.dtype})"


class ScanCache:
    """A folder of arrays derived from input files, each made once and read from disk."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.used: set[str] = set()
        self.built = 0  # entries made by this instance (the others were reused)

    def key(self, kind: str, sources: Sequence[str | os.PathLike[str]]) -> str:
        """The name of the entry made by ``kind`` from the files ``sources``."""
        described = json.dumps(
            {
                "version": CACHE_VERSION,
                "kind": kind,
                "sources": fingerprint_of_files([str(s) for s in sources]),
            }
        )
        return hashlib.sha256(described.encode()).hexdigest()[:32]

    def entry(
        self,
        kind: str,
        sources: Sequence[str | os.PathLike[str]],
        build: Callable[[], tuple[Mapping[str, npt.NDArray[Any]], dict[str, Any]]],
    ) -> tuple[dict[str, DiskArray], dict[str, Any]]:
        """The arrays and the JSON-able values ``build()`` returns for these sources.

        ``build`` runs only when the entry is not in the folder yet; its arrays are
        written as ``.npy`` files, then a small JSON file that completes the entry (an
        entry cut short by a kill has no JSON file and is made again).
        """
        key = self.key(kind, sources)
        self.used.add(key)
        index = self.folder / f"{key}.json"
        if index.is_file():
            stored = json.loads(index.read_text())
            return (
                {name: DiskArray(self.folder / f"{key}.{name}.npy") for name in stored["arrays"]},
                stored["values"],
            )
        arrays, values = build()
        self.folder.mkdir(parents=True, exist_ok=True)
        for name, array in arrays.items():
            with atomic_path(self.folder / f"{key}.{name}.npy") as tmp, open(tmp, "wb") as file:
                np.save(file, np.ascontiguousarray(array), allow_pickle=False)
        with atomic_path(index) as tmp:
            tmp.write_text(
                json.dumps(
                    {
                        "kind": kind,
                        "sources": [str(s) for s in sources],
                        "arrays": list(arrays),
                        "values": values,
                    }
                )
            )
        self.built += 1
        return ({name: DiskArray(self.folder / f"{key}.{name}.npy") for name in arrays}, values)

    def prune(self) -> int:
        """Delete the files of entries not used since this instance was made; their count."""
        if not self.folder.is_dir():
            return 0
        removed = 0
        for path in self.folder.iterdir():
            if path.name.split(".")[0] not in self.used:
                path.unlink()
                removed += 1
        if removed:
            log.info("removed %d stale file(s) from the scan cache %s", removed, self.folder)
        return removed

    def size_bytes(self) -> int:
        """What the folder holds on disk."""
        if not self.folder.is_dir():
            return 0
        return sum(path.stat().st_size for path in self.folder.iterdir())
