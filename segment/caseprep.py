"""Training cases onto the working grid: one case's arrays, and all of them through an on-disk cache
built in parallel over the cores.

`prepare_case` is the one rule (reading, crop centred on the reference gland, the label on the
working grid, a teacher's whole gland as GLAND_UNKNOWN). `cached_cases` runs it once per case and
preprocessing spec into a mricore.cache.ArrayCache, in worker processes (this module imports no
torch, so a worker needs none of it), and afterwards only checks the entries: a changed spec, label
choice or source file (path, size or modification time) is another key, and a corrupt entry is
rebuilt. Entries hold image (C, I, J, K) float32, label (I, J, K) uint8 and fg (N, 3) int64 (the
foreground voxels the sampler centres patches on). Nothing is ever evicted: entries of old specs stay
until the folder is deleted (about 4.5 MB a study at the default 120 mm, 0.6 mm spec).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mricore.cache import ArrayCache, entry_key
from mricore.datasets import Case, load_case
from mricore.preprocess import PreprocessSpec, gland_centre, prepare_label, preprocess

# A `data.teacher` datalist's label columns: a teacher's whole gland (zones unknown), or its zones where
# known (self-training, segment.pseudo: 0, 1 TZ, 2 PZ, GLAND_UNKNOWN); and the value a gland voxel of
# unknown zone takes in training (segment.losses).
TEACHER_LABEL = "wg_teacher"
TEACHER_ZONES = "zones_teacher"
GLAND_UNKNOWN = 3


def label_key_for(case: Case, label: str, silver: str | None) -> tuple[str | None, bool]:
    if label in case.labels:
        return label, False
    if silver and silver in case.labels:
        return silver, True
    for key in (TEACHER_ZONES, TEACHER_LABEL):
        if key in case.labels:
            return key, True
    return None, False


def usable(case: Case, spec: PreprocessSpec, label: str, silver: str | None) -> tuple[str | None, bool]:
    """(label key, silver) of a case that trains, or (None, False) when it lacks the label or a channel."""
    key, is_silver = label_key_for(case, label, silver)
    if key is None or any(c not in case.images for c in spec.channels):
        return None, False
    return key, is_silver


def prepare_case(case: Case, spec: PreprocessSpec, key: str, label: str, register: bool) -> dict[str, np.ndarray]:
    """One case on the working grid: {"image", "label", "fg"} (module docstring), the label from
    `key`. With `spec.crop_centre` "gland" the crop is centred on the reference gland; a whole-gland-only
    label (`TEACHER_LABEL`, from a teacher) becomes GLAND_UNKNOWN inside the gland."""
    image, lab, _ = load_case(case, spec.channels, key, register=register)
    prep = preprocess(image, spec, gland_centre(lab.array[0] > 0, lab.affine))
    y = prepare_label(lab, prep)
    if key == TEACHER_LABEL and key != label:
        y = np.where(y > 0, GLAND_UNKNOWN, 0).astype(np.uint8)
    return {"image": prep.array, "label": y, "fg": np.argwhere(y > 0)}


def source_stamps(refs: dict) -> dict:
    """{name: [file stamp, index]} of image/label references: the cache's one rule for a source's identity."""
    return {n: [_file_stamp(r.path), r.index] for n, r in refs.items()}


def _file_stamp(path: Path) -> list:
    """What identifies a source's content cheaply: size and modification time of the file, or of every
    file of a DICOM folder."""
    path = Path(path)
    if path.is_dir():
        return [str(path.resolve()), sorted([f.name, f.stat().st_size, f.stat().st_mtime_ns]
                                            for f in path.iterdir() if f.is_file())]
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def case_key(case: Case, spec: PreprocessSpec, key: str, label: str, register: bool) -> str:
    """The cache key of a case's arrays: everything `prepare_case` reads or is told."""
    refs = {c: case.images[c] for c in spec.channels} | {"label": case.labels[key]}
    return entry_key({"case": case.case_id, "spec": spec.key(), "label_key": key,
                      "teacher_gland": key == TEACHER_LABEL and key != label, "register": register,
                      "sources": source_stamps(refs)})


def ensure_entry(root: str, ck: str, case: Case, spec: PreprocessSpec, key: str, label: str, register: bool) -> str:
    """The entry `ck` of one case, checked, or built when absent or corrupt (a worker's task)."""
    cache = ArrayCache(root)
    if cache.read(ck) is None:
        cache.write(ck, prepare_case(case, spec, key, label, register), {"case_id": case.case_id})
    return ck


def default_workers() -> int:
    """One process per core this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cached_cases(cases: list[Case], spec: PreprocessSpec, label: str, silver: str | None, register: bool,
                 root: Path, workers: int = 0, progress: bool = False) -> list[tuple[Case, str, bool]]:
    """(case, cache key, silver) of every case that trains, in `cases` order, each entry checked or
    built in `root` by `workers` processes (0: one per core; 1: in this process)."""
    from tqdm import tqdm

    todo = []
    for case in cases:
        key, is_silver = usable(case, spec, label, silver)
        if key is not None:
            todo.append((case, case_key(case, spec, key, label, register), is_silver, key))
    workers = min(workers or default_workers(), len(todo))
    args = [(str(root), ck, case, spec, key, label, register) for case, ck, _, key in todo]
    bar = tqdm(total=len(args), desc="preprocess", disable=not progress, leave=False)
    if workers <= 1:
        for a in args:
            ensure_entry(*a)
            bar.update()
    else:
        from concurrent.futures import ProcessPoolExecutor

        # The platform's start method (fork on Linux, as torch's DataLoader workers): a forked worker
        # runs only this module's numpy/SciPy/NIfTI code, never torch or the process group.
        with ProcessPoolExecutor(workers) as pool:
            for _ in pool.map(ensure_entry, *zip(*args), chunksize=max(1, len(args) // (8 * workers))):
                bar.update()
    bar.close()
    return [(case, ck, is_silver) for case, ck, is_silver, _ in todo]
