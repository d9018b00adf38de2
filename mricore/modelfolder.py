"""A trained model is a folder that describes itself.

    model_dir/
      model.json        kind, architecture name and arguments, channels, labels, label scheme,
                        preprocessing spec, validation metrics, software version
      weights.pt        state_dict (loaded with torch.load(..., weights_only=True))
      config.yaml       the resolved training config
      history.csv       per-epoch log (training writes it)

Prediction and ensembling need only the path.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import InputError
from .io import replace_atomically, write_json

REQUIRED = ("model.json", "weights.pt")


def save_weights(state_dict, path: Path, half: bool = False) -> Path:
    """Atomically save a state_dict; half=True stores floating tensors as fp16 (bundled models)."""
    import torch

    if half:
        state_dict = {k: (v.half() if v.is_floating_point() else v) for k, v in state_dict.items()}
    replace_atomically(Path(path), lambda tmp: torch.save(state_dict, tmp))
    return Path(path)


def save_model_folder(folder: str | Path, state_dict, meta: dict, half: bool = False) -> Path:
    from . import __version__

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(state_dict, folder / "weights.pt", half=half)
    write_json({**meta, "software_version": __version__}, folder / "model.json")
    return folder


def read_model_meta(folder: str | Path) -> dict:
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "model folder does not exist", None, "pass a folder made by `segment train`")
    for name in REQUIRED:
        if name == "weights.pt" and (folder / "model.onnx").exists():
            continue  # an exported folder (`ensemble export`): the network is model.onnx
        if not (folder / name).exists():
            raise InputError(folder, f"model folder is missing {name}", None,
                             "use a complete folder written by `segment train` / `localize train`")
    try:
        meta = json.loads((folder / "model.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(folder / "model.json", "not valid JSON", str(e)[:80], "re-export the model") from None
    if not isinstance(meta, dict):
        raise InputError(folder / "model.json", "must hold a JSON object", type(meta).__name__, "re-export the model")
    return meta


# model.json fields a command needs, by kind, with their JSON type.
REQUIRED_FIELDS = {"segmenter": {"model": dict, "preprocess": dict, "patch": list},
                   "lesion_classifier": {"model": dict, "preprocess": dict, "candidates": dict}}


def check_meta(meta: dict, folder: str | Path, kind: str) -> dict:
    """The fields `kind` needs are present with the right JSON type; else one line naming the field."""
    if meta.get("kind") != kind:
        raise InputError(folder, f"not a {kind} model folder", meta.get("kind"),
                         "pass a folder written by `segment train`" if kind == "segmenter"
                         else "pass a folder written by `localize train`")
    for key, typ in REQUIRED_FIELDS[kind].items():
        if not isinstance(meta.get(key), typ):
            raise InputError(Path(folder) / "model.json", f"field '{key}' must be a JSON {typ.__name__}",
                             type(meta.get(key)).__name__ if key in meta else "missing", "re-export the model folder")
    return meta


def load_weights(folder: str | Path):
    """state_dict as float32 tensors, read with weights_only=True (pickled code is refused); an
    unreadable, truncated, empty or hostile file is a one-line InputError."""
    import torch

    path = Path(folder) / "weights.pt"
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, EOFError, RuntimeError, OSError ...
        first = (str(e).strip().splitlines() or [""])[0][:100]
        raise InputError(path, "weights could not be read with weights_only=True", f"{type(e).__name__}: {first}",
                         "re-export the model folder from a trusted source") from None
    if not isinstance(sd, dict) or not all(hasattr(v, "is_floating_point") for v in sd.values()):
        raise InputError(path, "weights must be a state_dict of tensors", type(sd).__name__, "re-export the model folder")
    return {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}


def start_run(run_dir: str | Path, cfg, splits: list | None) -> None:
    """Create a training run's folder with its resolved `config.yaml` (and `splits.json`). Called with
    the first checkpoint, so a run that fails earlier leaves nothing to block a rerun; a no-op when the
    folder was started before (--resume)."""
    from .config import save_config
    from .splits import save_splits

    run_dir = Path(run_dir)
    if (run_dir / "config.yaml").exists():
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    if splits is not None:
        save_splits(splits, run_dir / "splits.json")


def run_folder(output_dir: str | Path, name: str, fold, resume: bool, force: bool,
               clear: bool = True) -> tuple[Path, Path]:
    """The folder of one training run (output_dir/name/fold_K) and its last checkpoint, after the rules:
    an existing run is continued only with resume and replaced only with force. Replacing empties the
    folder first (with `clear`; under torchrun only rank 0 clears), so no file of the old run survives."""
    import shutil

    from .errors import OutputExistsError

    run_dir = Path(output_dir) / name / f"fold_{fold}"
    last = run_dir / "checkpoint_last.pt"
    if run_dir.exists() and any(run_dir.iterdir()) and not (resume or force):
        raise OutputExistsError(run_dir, "model folder exists", None, "pass --resume to continue or --force to restart")
    if resume and not last.exists():
        raise InputError(last, "nothing to resume", None, "train without --resume first")
    if force and not resume and clear and run_dir.exists():
        shutil.rmtree(run_dir)
    return run_dir, last
