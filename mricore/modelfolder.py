"""A trained model is a folder that describes itself.

    model_dir/
      model.json        `ModelMeta`: format version, kind, architecture arguments, preprocessing spec
                        (channels included), label names, predict settings or candidate rules,
                        selection and validation metrics, software version
      weights.pt        state_dict (loaded with torch.load(..., weights_only=True))
      config.yaml       the resolved training config
      history.csv       per-epoch log (training writes it)

Prediction and ensembling need only the path. `read_model` is the one reader of model.json and
`write_model` the one writer; every command and test makes and reads model folders through them.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError
from .outputs import read_json, replace_atomically, write_json
from .preprocess import PreprocessSpec

REQUIRED = ("model.json", "weights.pt")
# model.json format. 1: files without a `version` field (software 0.1.0 and the bundled models), which
# also stored `channels` (= preprocess.channels) and `label_scheme` (= model.label_scheme) at the top
# level; read as version 2 without those two copies.
FORMAT_VERSION = 2
# The kinds of model folder, with the command that writes each.
KINDS = {"segmenter": "segment train", "lesion_classifier": "localize train", "pretrain": "segment pretrain"}
# model.json fields a kind needs, with their JSON type (checked before anything is built).
REQUIRED_FIELDS = {"segmenter": {"model": dict, "preprocess": dict, "patch": list},
                   "lesion_classifier": {"model": dict, "preprocess": dict, "candidates": dict},
                   "pretrain": {"model": dict, "preprocess": dict, "patch": list}}
_V1_COPIES = {"channels": lambda m: m.channels, "label_scheme": lambda m: m.label_scheme}


@dataclass(frozen=True)
class ModelMeta:
    """What a model folder says about itself (its model.json), typed.

    `model` holds the architecture arguments of the kind's own config type (segment.config.ModelConfig
    or localize.config.ModelConfig, which mricore does not import), `predict` a segmenter's
    segment.config.PredictConfig, `candidates` a lesion classifier's localize.config.CandidateConfig.
    Channels are `preprocess.channels` and a segmenter's label scheme is `model["label_scheme"]`:
    each is stored once.

    Example:
        >>> m = ModelMeta("segmenter", {"name": "unet", "label_scheme": "multiclass"}, PreprocessSpec(), patch=[160, 160])
        >>> m.channels, m.label_scheme
        (['T2W'], 'multiclass')
    """

    kind: str
    model: dict
    preprocess: PreprocessSpec
    name: str = ""
    fold: int | str | None = None
    patch: list | None = None            # segmenter: training patch (voxels), the sliding-window size
    predict: dict = field(default_factory=dict)
    candidates: dict | None = None
    labels: dict = field(default_factory=dict)   # label value (as a string) -> name
    outputs: str = ""
    patch_label: str | None = None       # lesion classifier: what makes a patch positive
    best_epoch: int | None = None
    history_epochs: int | None = None
    # What chose the weights, with its metrics (training patients only; may weight an ensemble).
    selection: dict | None = None
    # The fold's held-out patients, scored once on the chosen weights; they decided nothing.
    validation: dict | None = None
    training: dict | None = None         # lesion classifier: patch counts, pos_weight, transfer;
                                         # pretrain: method, mask, head, studies used
    history: list | None = None          # lesion classifier: per-epoch rows
    onnx: dict | None = None             # written by `ensemble export`: the network is model.onnx
    software_version: str = ""
    version: int = FORMAT_VERSION

    @property
    def channels(self) -> list[str]:
        return list(self.preprocess.channels)

    @property
    def label_scheme(self) -> str | None:
        return self.model.get("label_scheme")

    def to_dict(self) -> dict:
        """The JSON object of model.json (fields left at None are not written)."""
        from .config import to_dict

        d = {"version": self.version, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                                          if f.name != "version"}}
        d["preprocess"] = to_dict(self.preprocess)
        return {k: v for k, v in d.items() if v is not None}

    @classmethod
    def from_dict(cls, data, where: str | Path = "model.json") -> "ModelMeta":
        """Check and build; a version-1 file is read as version 2. Raises InputError naming the field."""
        from .config import from_dict

        if not isinstance(data, dict):
            raise InputError(where, "must hold a JSON object", type(data).__name__, "re-export the model")
        data = dict(data)
        version = data.pop("version", 1)
        if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
            raise InputError(where, f"model.json format version must be 1..{FORMAT_VERSION}", repr(version),
                             "update the software or re-export the model with this version")
        kind = data.get("kind")
        if kind not in KINDS:
            raise InputError(where, f"field 'kind' must be one of {sorted(KINDS)}", repr(kind),
                             "use a folder written by `segment train` or `localize train`")
        for key, typ in REQUIRED_FIELDS[kind].items():
            if not isinstance(data.get(key), typ):
                raise InputError(where, f"field '{key}' must be a JSON {typ.__name__}",
                                 type(data.get(key)).__name__ if key in data else "missing", "re-export the model folder")
        copies = {k: data.pop(k) for k in _V1_COPIES if k in data}
        names = {f.name for f in dataclasses.fields(cls)}
        for k in data:
            if k not in names:
                close = difflib.get_close_matches(k, sorted(names), n=1)
                raise InputError(where, f"unknown field '{k}'", repr(k),
                                 f"did you mean '{close[0]}'?" if close else "re-export the model folder")
        spec = from_dict(PreprocessSpec, data.pop("preprocess"), str(where), "preprocess.")
        meta = cls(preprocess=spec, version=FORMAT_VERSION, **data)
        for k, v in copies.items():  # version 1 stored these twice: the copies must agree
            if v != _V1_COPIES[k](meta):
                raise InputError(where, f"field '{k}' disagrees with its source", f"{v!r} vs {_V1_COPIES[k](meta)!r}",
                                 "re-export the model folder")
        return meta


def read_model(folder: str | Path, kind: str | None = None) -> ModelMeta:
    """The one reader of a model folder's model.json: the folder complete (model.json and weights.pt,
    or model.onnx for an `ensemble export` folder), valid JSON, of `kind` when given, every field typed.

    Raises InputError naming the folder or file, the rule, the value and the fix.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "model folder does not exist", "nothing at that path", "pass a folder made by `segment train`")
    for name in REQUIRED:
        if name == "weights.pt" and (folder / "model.onnx").exists():
            continue  # an exported folder (`ensemble export`): the network is model.onnx
        if not (folder / name).exists():
            raise InputError(folder, f"model folder is missing {name}", "no such file",
                             "use a complete folder written by `segment train` / `localize train`")
    where = folder / "model.json"
    data = read_json(where, "re-export the model")
    if kind is not None and isinstance(data, dict) and data.get("kind") != kind:
        raise InputError(folder, f"not a {kind} model folder", data.get("kind"), f"pass a folder written by `{KINDS[kind]}`")
    return ModelMeta.from_dict(data, where)


def write_model(folder: str | Path, meta: ModelMeta, state_dict=None, half: bool = False) -> Path:
    """The one writer of a model folder: weights.pt (when `state_dict` is given; fp16 with half) and
    model.json at the current format version, stamped with this software version unless `meta`
    carries the version that trained it. Both files are written atomically."""
    from . import __version__

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if state_dict is not None:
        save_weights(state_dict, folder / "weights.pt", half=half)
    meta = dataclasses.replace(meta, version=FORMAT_VERSION, software_version=meta.software_version or __version__)
    write_json(meta.to_dict(), folder / "model.json")
    return folder


def save_weights(state_dict, path: Path, half: bool = False) -> Path:
    """Atomically save a state_dict; half=True stores floating tensors as fp16 (bundled models)."""
    import torch

    if half:
        state_dict = {k: (v.half() if v.is_floating_point() else v) for k, v in state_dict.items()}
    replace_atomically(Path(path), lambda tmp: torch.save(state_dict, tmp))
    return Path(path)


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
    from .protocol import save_splits

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
        raise OutputExistsError(run_dir, "model folder exists", "a folder with files", "pass --resume to continue or --force to restart")
    if resume and not last.exists():
        raise InputError(last, "nothing to resume", "no checkpoint_last.pt", "train without --resume first")
    if force and not resume and clear and run_dir.exists():
        shutil.rmtree(run_dir)
    return run_dir, last
