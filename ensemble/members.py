"""Ensemble members: model folders, each loaded once (network built, weights read with
weights_only=True) before any input is read.

Checks made before any input is read or output written:
- the folder is a complete segmenter model folder (mricore.modelfolder.read_model),
  its weights readable and matching its architecture (segment.torch_segmenter.Segmenter.load), so a broken
  or hostile member is a one-line error naming it, not a traceback after the input was read; a folder
  written by `ensemble export` (model.onnx) runs on ONNX Runtime (segment.onnx_segmenter.OnnxSegmenter);
- every member uses the platform's zone coding `LABEL_NAMES` (label values and names). A member with
  other label names or values is rejected with an error naming it. The output parameterisation
  (model.label_scheme multiclass or regions) may differ between members: segment.networks
  .class_probabilities maps both to (background, TZ, PZ), so they average like with like.
Members whose input channels the case lacks are skipped (`split_available`; ensemble.predict says so).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from mricore.errors import ConfigError
from mricore.modelfolder import ModelMeta, read_model
from mricore.preprocess import PreprocessSpec
from mricore.zones import LABEL_NAMES



@dataclass(frozen=True)
class Member:
    path: Path
    name: str            # unique in the ensemble: folder name, or parent/folder when folder names repeat
    meta: ModelMeta      # its model.json
    segmenter: object = field(compare=False, repr=False)  # segment.torch_segmenter.Segmenter, loaded once

    @property
    def spec(self) -> PreprocessSpec:
        return self.segmenter.spec

    @property
    def channels(self) -> list[str]:
        return list(self.spec.channels)

    @property
    def validation(self) -> dict | None:
        return self.meta.validation


def read_members(paths: list[str | Path]) -> list[Member]:
    """Each member folder, checked and loaded; raises ConfigError/InputError naming it."""
    if not paths:
        raise ConfigError("members", "an ensemble needs at least one member", "[]",
                          "list model folders written by `segment train` under members:")
    paths = [Path(p) for p in paths]
    folder_names = [p.name for p in paths]
    members, names = [], set()
    for p in paths:
        meta = read_model(p, "segmenter")
        labels = {str(k): v for k, v in meta.labels.items()}
        if labels != LABEL_NAMES:
            raise ConfigError(f"member {p}", f"label scheme must be the platform's zones {LABEL_NAMES}",
                              labels or None, "remove this member or retrain it with the zone labels 0/1/2")
        # Folder names like fold_0 repeat across runs: then the run folder is part of the name.
        name = p.name if folder_names.count(p.name) == 1 else f"{p.parent.name}/{p.name}"
        while name in names:
            name += "'"
        names.add(name)
        if (p / "model.onnx").exists():  # exported by `ensemble export`: ONNX Runtime, no PyTorch
            from segment.onnx_segmenter import OnnxSegmenter

            members.append(Member(p, name, meta, OnnxSegmenter(p, meta)))
            continue
        from segment.torch_segmenter import Segmenter

        members.append(Member(p, name, meta, Segmenter.load(p, meta)))
    return members


@functools.lru_cache(maxsize=4)
def read_locator(path: str) -> Member:
    """Stage one of a two-stage ensemble (EnsembleConfig.locator): checked and loaded as a member is,
    once per process."""
    return read_members([path])[0]


def split_available(members: list[Member], available: list[str]):
    """(usable members, skipped [{member, reason}]) for a case whose channels are `available`."""
    used, skipped = [], []
    for m in members:
        missing = [c for c in m.channels if c not in available]
        if missing:
            reason = f"needs channel(s) {', '.join(missing)}; the input has {', '.join(available) or 'none'}"
            skipped.append({"member": m.name, "path": str(m.path), "reason": reason})
        else:
            used.append(m)
    return used, skipped


def channel_order(members: list[Member]) -> list[str]:
    """Union of member channels, T2W first: the first available one is the reference (output) grid."""
    seen = []
    for m in members:
        for c in m.channels:
            if c not in seen:
                seen.append(c)
    return sorted(seen, key=lambda c: (c != "T2W", seen.index(c)))
