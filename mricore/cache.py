"""An on-disk cache of arrays: one folder per entry, read back memory-mapped, never trusted blindly.

    cache = ArrayCache(Path("runs/cache"))
    key = entry_key({"case": ..., "spec": spec.key()})     # whatever decides the arrays' content
    if cache.read(key) is None:                             # absent, unfinished or corrupt
        cache.write(key, {"image": x, "label": y}, {"case_id": "001"})
    x = cache.array(key, "image")                           # a copy-on-write memory map

Layout: ROOT/<key>/<name>.npy per array and ROOT/<key>/entry.json, which lists every array's file
size and CRC-32 and is the completion marker. An entry is built in a hidden folder beside it and
renamed into place whole, so a reader never sees half an entry, and two processes building the same
entry (two ranks, two nodes on one file system) cannot mix their files: the second rename finds the
first entry and keeps it. `read` checks every file against entry.json (size and CRC-32: an
interrupted copy, a truncated or flipped file); an entry that fails is removed and reported absent,
so the caller rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import zlib
from pathlib import Path

import numpy as np

FORMAT = 1          # entry layout version, part of every key: a new layout never reads an old entry
MARKER = "entry.json"


def entry_key(parts: dict) -> str:
    """A stable key (32 hex digits) of JSON-serialisable `parts` (everything the content depends on)."""
    text = json.dumps({"format": FORMAT, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def file_crc(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


class ArrayCache:
    """Entries of named arrays under `root` (created on first write)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def folder(self, key: str) -> Path:
        return self.root / key

    def read(self, key: str) -> dict | None:
        """The entry's `info` when it is complete and every array file matches its size and CRC-32;
        None when absent. A corrupt entry (bad marker, missing, short or changed file) is removed."""
        folder = self.folder(key)
        try:
            record = json.loads((folder / MARKER).read_text())
            ok = all((folder / f"{n}.npy").stat().st_size == a["bytes"] and file_crc(folder / f"{n}.npy") == a["crc32"]
                     for n, a in record["arrays"].items())
        except (OSError, ValueError, KeyError, TypeError):
            ok, record = False, None
        if ok:
            return record["info"]
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        return None

    def write(self, key: str, arrays: dict[str, np.ndarray], info: dict) -> dict:
        """Write the entry (see module docstring) and return `info`; when another process completed
        the same entry first, theirs is kept."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            record = {"arrays": {}, "info": info}
            for name, a in arrays.items():
                path = tmp / f"{name}.npy"
                np.save(path, np.ascontiguousarray(a))
                record["arrays"][name] = {"bytes": path.stat().st_size, "crc32": file_crc(path),
                                          "dtype": str(a.dtype), "shape": list(a.shape)}
            (tmp / MARKER).write_text(json.dumps(record))
            try:
                os.rename(tmp, self.folder(key))
            except OSError:  # the entry exists: complete (another process won) or stale and corrupt
                if self.read(key) is not None:
                    return info
                os.rename(tmp, self.folder(key))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return info

    def array(self, key: str, name: str) -> np.ndarray:
        """One array of an entry, memory-mapped copy-on-write: pages are read when touched and belong
        to the page cache, not to the process, once the map is dropped; writes stay private."""
        return np.load(self.folder(key) / f"{name}.npy", mmap_mode="c")
