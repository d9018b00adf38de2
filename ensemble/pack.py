"""`ensemble pack`: turn trained member folders into a self-contained ensemble folder (the bundle).

    OUT/
      ensemble.yaml          members (relative to OUT), method; what `ensemble predict` reads
      <name>_fold<K>/        one per member: model.json, weights.pt (fp16 with --half), config.yaml,
                             history.csv, splits.json (what exists in the source folder)
      MODEL_CARD.md          training data, folds, cross-validated per-zone DSC, limits (when given
                             the report of `ensemble evaluate --cv`)
      cv_evaluate.json       that report's summary, kept beside the card

The folder is built under a temporary name beside OUT and renamed into place, so a failed pack
never leaves a half-written bundle; an existing OUT is replaced only with force.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from mricore.errors import InputError, OutputExistsError
from mricore.modelfolder import ModelMeta, load_weights, write_model
from mricore.results import CONFIG_YAML

from .card import locator_section, model_card, training_record

COPY = ("history.csv", "splits.json")  # as they are; config.yaml is rewritten repository-relative
REPO = Path(__file__).resolve().parents[1]


def member_folder_name(meta: ModelMeta, src: Path) -> str:
    return f"{meta.name or src.parent.name}_fold{meta.fold}" if meta.fold is not None else src.name


def _copy_model(src: Path, dest: Path, meta: ModelMeta, half: bool) -> None:
    """A member into the bundle; its training config names paths relative to the repository (a
    committed bundle names no machine's paths)."""
    from mricore.outputs import repo_relative

    write_model(dest, meta, load_weights(src), half=half)
    for f in COPY:
        if (src / f).exists():
            shutil.copy2(src / f, dest / f)
    if (src / "config.yaml").exists():
        cfg = repo_relative(yaml.safe_load((src / "config.yaml").read_text()), REPO)
        (dest / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def member_folder_names(members: list[str | Path], metas: list[ModelMeta]) -> list[str]:
    """Each member's folder name in the bundle (`member_folder_name`); two alike, or one named
    "locator" (the stage-one folder), is an InputError naming the member."""
    names: list[str] = []
    for src, meta in zip(map(Path, members), metas):
        name = member_folder_name(meta, src)
        if name in names or name == "locator":
            raise InputError(src, "two members would get the same folder name", name,
                             "give the training configs different names")
        names.append(name)
    return names


def read_cv_report(cv_report: str | Path | None) -> dict | None:
    """The summary (evaluate.json) of an `ensemble evaluate --cv` report folder; None without one."""
    if cv_report is None:
        return None
    p = Path(cv_report) / "evaluate.json"
    if not p.exists():
        raise InputError(p, "cross-validation report not found", "nothing at that path",
                         "run `ensemble evaluate --cv ... -o DIR` first and pass DIR")
    return json.loads(p.read_text())


def pack(members: list[str | Path], out_dir: str | Path, method: str = "mean", half: bool = True,
         cv_report: str | Path | None = None, force: bool = False, notes: str | Path | None = None,
         locator: str | Path | None = None, settings: list[str] | None = None) -> Path:
    """Copy member folders (weights optionally as fp16) and write ensemble.yaml (+ model card).

    notes: a Markdown file appended to the model card (measurements made outside `ensemble evaluate`,
    e.g. ablations, with their commands).
    locator: a model folder copied to OUT/locator as the ensemble's stage one (EnsembleConfig.locator).
    settings: KEY=VALUE ensemble settings written to ensemble.yaml (e.g. whole_slice=true); members
        and locator come from the folders given."""
    from mricore.config import from_dict, parse_overrides, to_dict
    from mricore.errors import ConfigError

    from .config import EnsembleConfig
    from .members import read_members

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not force:
        raise OutputExistsError(out, "ensemble folder exists", "an existing folder", "pass --force to replace it")
    extra = parse_overrides(settings)
    for key in ("members", "locator"):
        if key in extra:
            raise ConfigError(f"--set {key}", "pack takes members and locator from the folders given", key,
                              "list member folders and pass --locator instead")
    loaded = read_members(list(members) + ([locator] if locator else []))  # complete, loadable, platform zones
    metas = [m.meta for m in loaded[:len(members)]]
    names = member_folder_names(members, metas)
    base = {"members": names, "method": method, "locator": "locator" if locator else None}
    cfg = to_dict(from_dict(EnsembleConfig, {**base, **extra}, "ensemble pack --set"))  # checked before any copy
    cv = read_cv_report(cv_report)
    if notes is not None and not Path(notes).is_file():
        raise InputError(notes, "model card notes file not found", "nothing at that path", "pass a Markdown file or leave out --notes")
    from mricore.outputs import replaced_dir

    with replaced_dir(out) as tmp:
        records = []
        for src, name, meta in zip(map(Path, members), names, metas):
            _copy_model(src, tmp / name, meta, half)
            records.append(training_record(tmp / name))
        loc_meta = loaded[-1].meta if locator else None
        if locator:
            _copy_model(Path(locator), tmp / "locator", loc_meta, half)
        header = ("# Bundled ensemble written by `ensemble pack`; member paths are relative to this folder.\n"
                  "# review: limits of the quality checks (mricore.review); fitted ones: `make review-limits`.\n")
        (tmp / CONFIG_YAML).write_text(header + yaml.safe_dump(cfg, sort_keys=False))
        if cv is not None:
            (tmp / "cv_evaluate.json").write_text(json.dumps(cv, indent=2))
        card = model_card(names, metas, records, cv, half)
        if locator:
            card += "\n" + locator_section(tmp / "locator", loc_meta)
        if notes is not None:
            card += "\n" + Path(notes).read_text()
        (tmp / "MODEL_CARD.md").write_text(card)
    return out
