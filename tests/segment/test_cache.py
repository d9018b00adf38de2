"""The preprocessed-case cache (mricore.cache, segment.caseprep): built once in parallel, keyed by case,
source files and spec, read memory-mapped, rebuilt when corrupt, and giving training the very arrays
and batches the in-memory path gives."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from segment_helpers import tiny_config

import segment.caseprep
from mricore.cache import MARKER, ArrayCache
from mricore.datasets import load_dataset
from segment.data import CachedItem, PatchSampler, load_items


@pytest.fixture(scope="module")
def setup(data_dir, tmp_path_factory):
    """A tiny config and three expert-labelled prostate158 cases."""
    cfg = tiny_config(data_dir, tmp_path_factory.mktemp("cfg"))
    cases = [c for c in load_dataset(data_dir / "prostate158")][:3]
    return cfg, cases


def _load(cfg, cases, cache, workers=1, spec=None):
    return load_items(cases, spec or cfg.preprocess, "zones", None, cache_dir=cache, workers=workers)


def _entries(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir() if not p.name.startswith("."))


def test_cached_items_are_the_in_memory_items_built_in_parallel(setup, tmp_path):
    cfg, cases = setup
    cached = _load(cfg, cases, tmp_path, workers=2)      # two worker processes
    memory = load_items(cases, cfg.preprocess, "zones")
    assert [type(i) for i in cached] == [CachedItem] * 3 and len(_entries(tmp_path)) == 3
    for a, b in zip(cached, memory):
        assert (a.case_id, a.patient_id, a.silver) == (b.case_id, b.patient_id, b.silver)
        for name in ("image", "label", "fg"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
            assert getattr(a, name).dtype == getattr(b, name).dtype


def test_a_second_start_reads_the_cache_and_a_new_spec_gets_its_own_entries(setup, tmp_path, monkeypatch):
    cfg, cases = setup
    _load(cfg, cases, tmp_path)
    stamps = {p.name: (p / MARKER).stat().st_mtime_ns for p in _entries(tmp_path)}

    def never(*args):
        raise AssertionError("a complete entry was built again")
    monkeypatch.setattr(segment.caseprep, "prepare_case", never)
    _load(cfg, cases, tmp_path)
    assert {p.name: (p / MARKER).stat().st_mtime_ns for p in _entries(tmp_path)} == stamps
    monkeypatch.undo()
    other = replace(cfg.preprocess, crop_mm=[48.0, 48.0])
    items = _load(cfg, cases, tmp_path, spec=other)
    assert len(_entries(tmp_path)) == 6 and items[0].image.shape[1] == 48


# What can happen to an entry on disk, each one rebuilt, never trusted.
CORRUPTIONS = [
    ("flipped byte", lambda d: _flip(d / "image.npy")),
    ("truncated file", lambda d: os.truncate(d / "label.npy", 100)),
    ("missing file", lambda d: (d / "fg.npy").unlink()),
    ("no completion marker", lambda d: (d / MARKER).unlink()),
    ("unreadable marker", lambda d: (d / MARKER).write_text("{")),
]


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("what,damage", CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_a_corrupt_entry_is_rebuilt(setup, tmp_path, what, damage):
    cfg, cases = setup
    good = _load(cfg, cases[:1], tmp_path)[0]
    reference = np.array(good.image)
    entry = tmp_path / good.key
    damage(entry)
    assert ArrayCache(tmp_path).read(good.key) is None and not entry.exists()
    again = _load(cfg, cases[:1], tmp_path)[0]
    assert again.key == good.key and ArrayCache(tmp_path).read(good.key) == {"case_id": good.case_id}
    np.testing.assert_array_equal(again.image, reference)


def test_a_changed_source_file_is_another_entry(setup, tmp_path):
    cfg, cases = setup
    copy = tmp_path / "case"
    copy.mkdir()
    for ref in list(cases[0].images.values()) + [cases[0].labels["zones"]]:
        (copy / ref.path.name).write_bytes(ref.path.read_bytes())
    case = load_dataset(copy)[0]
    first = _load(cfg, [case], tmp_path / "cache")[0]
    t2 = next(copy.glob("t2.nii*"))
    os.utime(t2, ns=(t2.stat().st_atime_ns, t2.stat().st_mtime_ns + 10**9))
    second = _load(cfg, [case], tmp_path / "cache")[0]
    assert first.key != second.key and len(_entries(tmp_path / "cache")) == 2


def test_the_same_entry_written_twice_keeps_the_first(tmp_path):
    """Two ranks (or nodes on one file system) finishing one entry: the second rename finds it."""
    cache = ArrayCache(tmp_path)
    cache.write("k", {"a": np.arange(4)}, {"n": 1})
    cache.write("k", {"a": np.arange(4)}, {"n": 2})
    assert cache.read("k") == {"n": 1} and os.listdir(tmp_path) == ["k"]
    assert json.loads((tmp_path / "k" / MARKER).read_text())["arrays"]["a"]["shape"] == [4]


def _mapped(root: Path) -> int:
    """Memory maps of files under `root` this process holds now."""
    return sum(str(root) in line for line in Path("/proc/self/maps").read_text().splitlines())


def test_sampling_from_the_cache_draws_the_same_batches_and_keeps_no_file_mapped(setup, tmp_path):
    cfg, cases = setup
    cached, memory = _load(cfg, cases, tmp_path), load_items(cases, cfg.preprocess, "zones")
    draws = []
    for items in (cached, memory):
        sampler = PatchSampler(items, [48, 48], 2, 1, 0.7, cfg.augment)
        draws.append(sampler.batch(np.random.default_rng(3), 4))
    for a, b in zip(*draws):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert _mapped(tmp_path) == 0  # the maps went with the arrays: memory does not grow with the cases
