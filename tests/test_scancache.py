"""The scan cache training reads its crops from: made once, reused, pruned, never resident."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from mschange.scancache import DiskArray, ScanCache


def mapped_files() -> set[str]:
    """Paths of the files mapped into this process (Linux)."""
    lines = Path("/proc/self/maps").read_text().splitlines()
    return {line.split(maxsplit=5)[5] for line in lines if len(line.split(maxsplit=5)) == 6}


def open_files() -> set[str]:
    """Paths of this process's open file descriptors (Linux)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the descriptor listdir itself used
            found.add(os.readlink(f"/proc/self/fd/{fd}"))
    return found


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _source(tmp_path: Path, name: str = "scan.bin") -> Path:
    path = tmp_path / name
    path.write_bytes(b"a scan")
    return path


def test_an_entry_is_built_once_then_read_from_disk(tmp_path):
    source = _source(tmp_path)
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    calls = []

    def build():
        calls.append(1)
        return {"volume": data, "rows": np.zeros((0, 3), np.int32)}, {"box": [1, 2, 3]}

    cache = ScanCache(tmp_path / "cache")
    arrays, values = cache.entry("kind", [source], build)
    assert values == {"box": [1, 2, 3]} and cache.built == 1
    assert isinstance(arrays["volume"], DiskArray)
    assert arrays["volume"].shape == (4, 5, 6) and arrays["volume"].dtype == np.float32
    assert len(arrays["rows"]) == 0 and arrays["rows"].shape == (0, 3)
    np.testing.assert_array_equal(arrays["volume"][1:3, :, 2], data[1:3, :, 2])
    np.testing.assert_array_equal(arrays["volume"].read(), data)
    # A read is a copy in memory, not a view of the file.
    part = arrays["volume"][0]
    assert type(part) is np.ndarray and part.base is None

    again = ScanCache(tmp_path / "cache")  # as a resumed run would
    arrays, values = again.entry("kind", [source], build)
    assert len(calls) == 1 and again.built == 0 and values == {"box": [1, 2, 3]}
    np.testing.assert_array_equal(arrays["volume"].read(), data)


def test_a_changed_source_or_kind_is_a_new_entry_and_stale_ones_are_pruned(tmp_path):
    source, other = _source(tmp_path), _source(tmp_path, "other.bin")
    cache = ScanCache(tmp_path / "cache")
    key = cache.key("kind", [source])
    assert key == ScanCache(tmp_path / "x").key("kind", [source])
    assert key != cache.key("kind 2", [source]) and key != cache.key("kind", [other])
    cache.entry("kind", [source], lambda: ({"a": np.ones(3)}, {}))
    cache.entry("kind", [other], lambda: ({"a": np.zeros(3)}, {}))
    os.utime(source, ns=(1, 1))  # the input changed
    (tmp_path / "cache" / ".leftover.tmp123.npy").write_bytes(b"cut short")

    rerun = ScanCache(tmp_path / "cache")
    arrays, _ = rerun.entry("kind", [source], lambda: ({"a": np.full(3, 7.0)}, {}))
    assert rerun.built == 1 and arrays["a"].read().tolist() == [7.0, 7.0, 7.0]
    assert rerun.prune() == 5  # the old entries of both sources (2 files each), the tmp
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        f"{rerun.key('kind', [source])}.a.npy",
        f"{rerun.key('kind', [source])}.json",
    ]
    assert rerun.size_bytes() > 0 and ScanCache(tmp_path / "none").prune() == 0


def test_an_entry_cut_short_is_made_again(tmp_path):
    source = _source(tmp_path)
    cache = ScanCache(tmp_path / "cache")
    cache.entry("kind", [source], lambda: ({"a": np.ones(3)}, {}))
    (tmp_path / "cache" / f"{cache.key('kind', [source])}.json").unlink()  # killed here
    rerun = ScanCache(tmp_path / "cache")
    arrays, _ = rerun.entry("kind", [source], lambda: ({"a": np.full(3, 2.0)}, {}))
    assert rerun.built == 1 and arrays["a"].read().tolist() == [2.0, 2.0, 2.0]


@linux_only
def test_a_disk_array_keeps_no_mapping_and_no_file_open(tmp_path):
    cache = ScanCache(tmp_path / "cache")
    arrays, _ = cache.entry(
        "kind", [_source(tmp_path)], lambda: ({"volume": np.ones((64, 64, 64), np.float16)}, {})
    )
    volume = arrays["volume"]
    path = str(volume.path)
    mapped = np.load(path, mmap_mode="r")  # the check sees a mapping when there is one
    assert path in mapped_files() and path in open_files()
    del mapped
    assert path not in mapped_files() and path not in open_files()
    crop = volume[10:30, 5:50, :]
    assert crop.shape == (20, 45, 64) and float(crop.sum()) == 20 * 45 * 64
    assert path not in mapped_files() and path not in open_files()
