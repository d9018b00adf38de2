"""Output locations and atomic writes: nothing half-written, nothing overwritten without force.

- `check_output_dir` and `check_absent`: an output location checked before any work (writable, not a
  file; no existing output without force); `output_target` does both for one file.
- `replace_atomically`: one file written to a hidden temporary beside it, then renamed into place;
  `write_json`, `write_text`, `write_csv` write through it (JSON with NaN/Inf as null: `finite_json`).
- `staged_dir`: a case's files all together or none, an existing case folder replaced as a whole;
  `replaced_dir`: a whole folder (an ensemble, an export) built aside and swapped in at the end.
On any error or signal (mricore.errors.run_cli) the temporary files and folders are removed.
NIfTI writing (mricore.io.write_nifti) goes through `output_target` and `replace_atomically`.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, OutputExistsError, check_signals

_UMASK = os.umask(0)
os.umask(_UMASK)


def check_absent(paths, force: bool) -> None:
    """The one rule for outputs: nothing is overwritten without force (checked before any work)."""
    for p in paths:
        if Path(p).exists() and not force:
            raise OutputExistsError(p, "output exists", "a folder" if Path(p).is_dir() else "an existing file",
                                    "pass --force to overwrite, or choose another -o")


def output_target(path: Path, force: bool) -> Path:
    """`path`, after `check_absent`; its folder is created."""
    path = Path(path)
    check_absent([path], force)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def replace_atomically(path: Path, write) -> None:
    """Call `write(tmp)` on a hidden temporary file beside `path`, then rename it onto `path`; the
    temporary file is removed on any error or signal (see mricore.errors.run_cli)."""
    # Named before it exists (as _make_hidden_dir), so a signal just after creation still removes it.
    tmp = f"{_hidden_name(path.parent, f'.{path.name}.')}.tmp{''.join(path.suffixes)}"
    try:
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        write(tmp)
        check_signals()
        os.chmod(tmp, 0o666 & ~_UMASK)  # created 0600; outputs get the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def finite_json(obj: Any) -> Any:
    """`obj` with every NaN/Inf float replaced by None, so the JSON written is valid JSON (RFC 8259),
    and numpy scalars as Python numbers."""
    if isinstance(obj, float) or isinstance(obj, np.floating):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return finite_json(obj.tolist())
    return obj


def read_json(path: str | Path, fix: str) -> Any:
    """The parsed JSON file `path`; InputError naming it when it is not valid JSON (the caller checks
    that it exists: what to say then is the caller's)."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(path, "not valid JSON", str(e)[:80], fix) from None


def write_json(obj: Any, path: str | Path, force: bool = True) -> Path:
    """Write JSON atomically (sidecars are rewritten with their outputs, hence force=True). NaN and
    Inf are written as null: the file is always valid JSON."""
    path = output_target(Path(path), force)
    text = json.dumps(finite_json(obj), indent=2, default=_json_default, allow_nan=False)
    replace_atomically(path, lambda tmp: Path(tmp).write_text(text))
    return path


def repo_relative(obj: Any, root: str | Path) -> Any:
    """`obj` with every absolute path inside `root` (a repository) or beside it written relative to
    `root` ("ensemble/models/...", "../shared/data"), so committed results name no machine's paths."""
    root = Path(root).resolve()
    if isinstance(obj, dict):
        return {k: repo_relative(v, root) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [repo_relative(v, root) for v in obj]
    if isinstance(obj, str):
        return obj.replace(f"{root}/", "").replace(f"{root.parent}/", "../")
    return obj


def write_text(text: str, path: str | Path, force: bool = True) -> Path:
    path = output_target(Path(path), force)
    replace_atomically(path, lambda tmp: Path(tmp).write_text(text))
    return path


def write_csv(rows: list[dict], path: str | Path, force: bool = True) -> Path:
    """Write dict rows atomically as CSV; columns are the union of the rows' keys, in first-seen order."""
    import csv

    path = output_target(Path(path), force)
    keys = list(dict.fromkeys(k for r in rows for k in r))

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
    replace_atomically(path, write)
    return path


def check_output_dir(path: str | Path, fix: str = "choose another -o") -> Path:
    """Check, before any work, that `path` can become an output folder: no name over 255 bytes, no
    symlink loop, not a file, nothing but folders above it, and the nearest existing folder writable
    (probed with a temporary file, which also catches read-only and pseudo file systems). `fix` is
    the advice of the error (how this command chooses its output)."""
    path = Path(path)
    for part in path.parts:
        if len(part.encode()) > 255:
            raise InputError(path, "a path component is longer than 255 bytes", f"{len(part.encode())} bytes", fix)
    try:
        path.resolve(strict=False)
    except (RuntimeError, OSError) as e:
        raise InputError(path, "output path cannot be resolved (symlink loop?)", type(e).__name__, fix) from None
    if path.exists() and not path.is_dir():
        raise InputError(path, "output must be a folder", "an existing file", fix)
    anc = _nearest_existing(path)
    if anc.is_symlink() and not anc.exists():
        raise InputError(path, "output path goes through a broken or looping symlink", str(anc), fix)
    if not anc.is_dir():
        raise InputError(path, "output folder would lie below a file", str(anc), fix)
    try:
        st = anc.stat()
        fd, probe = tempfile.mkstemp(dir=anc, prefix=".write-probe-")
        os.close(fd)
        os.unlink(probe)
        os.utime(anc, ns=(st.st_atime_ns, st.st_mtime_ns))  # a check leaves no trace, not even a new mtime
    except OSError as e:
        raise InputError(path, "output location is not writable", f"{anc}: {e.strerror}", fix) from None
    return path


def _nearest_existing(path: Path) -> Path:
    """`path` or its closest ancestor that exists (a dangling symlink counts, so callers can name it)."""
    while not path.exists() and not path.is_symlink():
        path = path.parent
    return path


@contextmanager
def staged_dir(out: str | Path, stale: tuple[str, ...] = ()):
    """All-or-nothing outputs of one case: yield a hidden staging folder; when the block ends normally
    it replaces `out` as a whole (`_swap`: the old folder renamed aside, the new one renamed in, then the
    old one removed), so no output of an earlier run is ever left mixed with the new ones. Entries of
    an existing `out` that are not named in `stale` (another command's files beside these) are carried
    over into the new folder. On any error or signal (see mricore.errors.run_cli) the staging folder is
    removed with everything in it and `out` is left as it was. The caller checks overwriting (force)
    before any work.

    Raises OutputExistsError (before anything is written) when a name in `stale` is taken by a folder
    in `out` (--force replaces files, never folders), and WriteError (one line, nothing left) when the
    disk is full, a size limit is hit, or similar.
    """
    import shutil

    from .errors import OutputExistsError, WriteError

    out = Path(out)
    out = out.resolve() if out.is_symlink() else out  # replace the folder the link points to, keep the link
    for name in stale:
        if (out / name).is_dir():
            raise OutputExistsError(out / name, "an output's name is taken by a folder", "a folder",
                                    "move or rename that folder (--force replaces files, never folders)")
    stage = _hidden_name(_nearest_existing(out.parent), f".{out.name}.staging-")
    try:
        stage = _make_hidden_dir(stage)
        os.chmod(stage, 0o777 & ~_UMASK)  # made 0700; the output folder gets the usual mode
        yield stage
        check_signals()  # a SIGTERM/SIGINT swallowed while writing: keep nothing
        out.parent.mkdir(parents=True, exist_ok=True)
        _swap(stage, out, stale)
    except OSError as e:
        shutil.rmtree(stage, ignore_errors=True)
        raise WriteError(out, "outputs could not be written (nothing was kept)", e.strerror or type(e).__name__,
                         "free disk space, raise the file size limit or check permissions") from None
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _swap(stage: Path, out: Path, stale: tuple[str, ...]) -> None:
    """Replace `out` by `stage` with two renames on one file system: a reader sees the old folder or the
    new one, never a mix. Foreign files of the old folder are hard-linked into the new one first
    (folders, and files where links fail, are moved across after the swap). On any error or signal
    before the new folder is in place, the old one is put back."""
    import shutil

    if not out.exists():
        os.rename(stage, out)
        return
    new = {p.name for p in stage.iterdir()}
    later = []
    for p in out.iterdir():
        if p.name in new or p.name in stale:
            continue
        try:
            os.link(p, stage / p.name, follow_symlinks=False)
        except OSError:  # a folder, or a file system without hard links
            later.append(p.name)
    aside = _hidden_name(out.parent, f".{out.name}.old-")
    os.rename(out, aside)
    try:
        check_signals()
        os.rename(stage, out)
    except BaseException:
        os.rename(aside, out)
        raise
    for name in later:
        os.rename(aside / name, out / name)
    shutil.rmtree(aside, ignore_errors=True)


def _hidden_name(parent: Path, prefix: str) -> Path:
    import secrets

    return Path(parent) / f"{prefix}{secrets.token_hex(6)}"


def _make_hidden_dir(path: Path) -> Path:
    """Create `path` (0700), or a fresh name beside it if taken. The caller holds the name *before* it
    exists, so a signal arriving just after the folder is made still finds it in the clean-up (with
    tempfile.mkdtemp the name would only be known once the call returned)."""
    while True:
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:  # 2^-48 per try: a fresh name with the same prefix
            path = _hidden_name(path.parent, path.name[:-12])


@contextmanager
def replaced_dir(out: str | Path):
    """Build a whole folder (an ensemble, an export) in a hidden sibling and swap it for `out` at the
    end (`_swap`, nothing of the old folder carried over): the old `out` is removed only then. On any
    error or signal the sibling is removed and `out` is untouched. The caller checks overwriting
    (force) first."""
    import shutil

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _hidden_name(out.parent, f".{out.name}.")
    try:
        tmp = _make_hidden_dir(tmp)
        yield tmp
        check_signals()
        tmp.chmod(0o777 & ~_UMASK)
        _swap(tmp, out, stale=tuple(p.name for p in out.iterdir()) if out.is_dir() else ())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
