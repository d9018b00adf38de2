"""mricore.outputs: JSON always valid and numpy-aware, a case's files all together or none."""

import numpy as np
import pytest

from mricore.outputs import staged_dir, write_json


def test_write_json_is_atomic_and_serialises_numpy(tmp_path):
    path = write_json({"a": np.float32(1.5), "b": np.arange(3), "p": tmp_path}, tmp_path / "x.json")
    assert '"a": 1.5' in path.read_text() and "[\n    0," in path.read_text()


def test_json_is_always_valid_json(tmp_path):
    # NaN / Inf (e.g. a DSC with both masks empty) are written as null, never as a bare NaN token.
    import json

    p = write_json({"dsc": float("nan"), "hd95": np.float32("inf"), "rows": [1.0, float("-inf")],
                    "arr": np.array([0.5, np.nan])}, tmp_path / "x.json")
    text = p.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"dsc": None, "hd95": None, "rows": [1.0, None], "arr": [0.5, None]}


def test_staged_dir_moves_all_files_or_none(tmp_path):
    import os

    out = tmp_path / "a" / "case"
    with staged_dir(out) as stage:
        (stage / "x.txt").write_text("1")
        (stage / "y.txt").write_text("2")
        assert not out.exists()
    assert sorted(p.name for p in out.iterdir()) == ["x.txt", "y.txt"]
    mask = os.umask(0)
    os.umask(mask)
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~mask)
    with pytest.raises(KeyError):
        with staged_dir(out, stale=("y.txt",)) as stage:
            (stage / "x.txt").write_text("new")
            raise KeyError("fails half-way")
    assert (out / "x.txt").read_text() == "1" and (out / "y.txt").exists()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["case"]  # no staging folder left
    with staged_dir(out, stale=("y.txt",)) as stage:  # a rerun replaces, and drops the stale output
        (stage / "x.txt").write_text("new")
    assert (out / "x.txt").read_text() == "new" and not (out / "y.txt").exists()


def _tree(folder):
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def test_staged_dir_replaces_the_case_folder_whole_and_keeps_foreign_files(tmp_path):
    """The old folder is swapped for the new one; files and folders it does not own (another command's,
    such as localize's lesion files beside the zones) are carried over, nothing hidden is left."""
    out = tmp_path / "case"
    (out / "sub").mkdir(parents=True)
    for name, text in {"x.txt": "old", "y.txt": "old", "lesion.json": "{}", "sub/a": "a"}.items():
        (out / name).write_text(text)
    inode = (out / "lesion.json").stat().st_ino
    with staged_dir(out, stale=("x.txt", "y.txt")) as stage:
        (stage / "x.txt").write_text("new")
    assert _tree(out) == {"lesion.json": b"{}", "sub": None, "sub/a": b"a", "x.txt": b"new"}
    assert (out / "lesion.json").stat().st_ino == inode  # hard-linked across, not copied
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case"]


def test_a_failure_between_the_renames_leaves_the_old_folder(tmp_path, monkeypatch):
    """The new folder cannot be renamed in (a fault between the two renames): the old folder is put
    back as it was, and neither the staging folder nor the set-aside copy is left."""
    import os

    from mricore.errors import WriteError

    out = tmp_path / "case"
    out.mkdir()
    (out / "x.txt").write_text("old")
    (out / "y.txt").write_text("old")
    before = _tree(out)
    real = os.rename

    def failing(src, dst):
        if ".staging-" in str(src):
            raise OSError(28, "No space left on device")
        return real(src, dst)
    monkeypatch.setattr(os, "rename", failing)
    with pytest.raises(WriteError, match="nothing was kept"):
        with staged_dir(out, stale=("x.txt", "y.txt")) as stage:
            (stage / "x.txt").write_text("new")
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case"]


def test_a_folder_in_the_place_of_an_output_is_refused_before_writing(tmp_path):
    from mricore.errors import OutputExistsError

    out = tmp_path / "case"
    (out / "y.txt").mkdir(parents=True)
    (out / "x.txt").write_text("old")
    before = _tree(out)
    with pytest.raises(OutputExistsError, match="taken by a folder"):
        with staged_dir(out, stale=("x.txt", "y.txt")) as stage:
            (stage / "x.txt").write_text("new")
    assert _tree(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["case"]
