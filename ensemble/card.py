"""The model card `ensemble pack` writes: members, protocol, held-out and cross-validated DSC, and the
training data and limits as the members' own model.json, config.yaml and splits.json record them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from mricore.modelfolder import ModelMeta
from mricore.results import CONFIG_YAML


def _cell(s: dict | None) -> str:
    if not s or not s.get("n"):
        return "n/a"
    return (f"{s['mean']:.3f} / {s['median']:.3f} ({s['ci_low']:.2f}-{s['ci_high']:.2f}), n={s['n']}"
            + (f" ({s['n_excluded']} excl.)" if s.get("n_excluded") else ""))


def training_record(src: Path) -> dict:
    """A member folder's resolved training config (config.yaml) and patient-level splits (splits.json),
    as plain data ({} where a file is absent)."""
    src = Path(src)
    config = yaml.safe_load((src / "config.yaml").read_text()) if (src / "config.yaml").is_file() else None
    splits = json.loads((src / "splits.json").read_text()) if (src / "splits.json").is_file() else None
    return {"config": config if isinstance(config, dict) else {}, "splits": splits if isinstance(splits, list) else []}


def member_table(names: list[str], metas: list[ModelMeta], cv: dict | None) -> list[str]:
    """Per-member held-out DSC: at the crop the member gets at inference (its family's cross-validated
    per-case DSC on the member's own held-out cases, from `ensemble evaluate --cv`: the locator's crop,
    scored on the input grid, as `ensemble predict` runs it) beside the figure `segment train` wrote to
    model.json (a crop centred on the reference gland, scored on the working grid). On the shipped bundle
    the first is the higher in most cells: the ensemble's pass and grid differ, not only its crop centre."""
    per_case = (cv or {}).get("per_case_dsc", {})
    head = ["## Per-member held-out DSC (own held-out fold)", ""]
    if per_case:
        head += ["At inference: the locator's crop, scored on the input grid (`ensemble evaluate --cv`, per case). "
                 "At training: model.json, what `segment train` prints: a crop centred on the reference gland, scored "
                 "on the working grid, not the crop or grid the member gets in `ensemble predict`.", "",
                 "| member | WG at inference | TZ at inference | PZ at inference | WG / TZ / PZ at training |",
                 "| --- | --- | --- | --- | --- |"]
    else:
        head += ["model.json (`segment train`): a crop centred on the reference gland, scored on the working grid, "
                 "not the crop or grid the member gets in `ensemble predict`; no `ensemble evaluate --cv` report "
                 "here to give that.", "",
                 "| member | WG | TZ | PZ |", "| --- | --- | --- | --- |"]
    for n, m in zip(names, metas):
        v = m.validation or {}
        train = [f"{v.get(z + '_mean', float('nan')):.3f} (n={v.get(z + '_n', 0)})" for z in ("WG", "TZ", "PZ")]
        if not per_case:
            head.append(f"| {n} | " + " | ".join(train) + " |")
            continue
        family, cases = m.name or n, v.get("cases", [])
        cells = []
        for z in ("WG", "TZ", "PZ"):
            got = [per_case.get(z, {}).get(family, {}).get(c) for c in cases]
            got = [x for x in got if x is not None and np.isfinite(x)]
            cells.append(f"{np.mean(got):.3f} (n={len(got)})" if got else "n/a")
        head.append(f"| {n} | " + " | ".join(cells) + " | " + " / ".join(t.split(" ")[0] for t in train) + " |")
    return head


def model_card(names: list[str], metas: list[ModelMeta], records: list[dict], cv: dict | None, half: bool) -> str:
    """Markdown model card from the members' model.json, their training records (`training_record`) and
    the cross-validated evaluation. Facts that no member records (data origins, licences, scanners) come
    from the notes file `ensemble pack --notes` appends."""
    spec = metas[0].preprocess
    lines = ["# Ensemble model card", "",
             f"**Intended use: research only, not for diagnosis.** Zonal segmentation of prostate MRI ({_channels(metas)}) "
             "(0 background, 1 transition zone / central gland, 2 peripheral zone; WG = TZ ∪ PZ).", "",
             "## Members", "",
             "| member | architecture | input | fold | weights chosen by | epoch | held-out cases (expert) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for n, m in zip(names, metas):
        arch = m.model["name"] + (f" {m.model['spatial_dims']}D" if not m.model.get("context")
                                  else f" 2.5D (context {m.model['context']})")
        val = (m.validation or {}).get("cases", [])
        sel = m.selection or {}
        rule = sel.get("rule", "unknown (no selection record)").split(":")[0]
        if sel.get("cases"):
            rule += f" ({', '.join(sel['cases'])})"
        lines.append(f"| {n} | {arch}, channels {m.model['channels']} | {', '.join(m.channels)} | "
                     f"{m.fold} | {rule} | {m.best_epoch} | {', '.join(val) or 'none'} |")
    lines += ["", f"Weights stored as {'fp16' if half else 'fp32'} (loaded as float32). Preprocessing: "
              f"{spec.target_spacing} mm target spacing (None = as acquired), "
              f"{spec.crop_mm} mm in-plane field of view around the "
              f"{'gland (the locator finds it, stage one)' if spec.crop_centre == 'gland' else 'volume centre'}.", ""]
    lines += ["Protocol: a member's held-out patients decide nothing (no epoch choice, early stopping, weight or "
              "threshold); its weights are the last epoch of a fixed schedule (`fixed`) or the best epoch on an "
              "inner split of its training patients (`inner`), and the held-out patients are scored once, after "
              "training, in eval mode.", ""]
    lines += member_table(names, metas, cv)
    if cv is not None:
        lines += ["", "## Cross-validated DSC on the input grid (`ensemble evaluate --cv`)", "",
                  f"Each expert-labelled case is scored only by the members of the fold that held it out "
                  f"(patient-level folds); {cv['n_cases']} cases, reference label `{cv['label']}`, "
                  f"method `{cv['method']}`. Cells: mean / median (bootstrap 95 % CI of the mean), n.", "",
                  "| zone | model | DSC |", "| --- | --- | --- |"]
        for zone, z in cv["zones"].items():
            for model, s in z["dsc"].items():
                lines.append(f"| {zone} | {model} | {_cell(s)} |")
        lines += ["", "Ensemble minus its best member, per-case paired DSC differences:", "",
                  "| zone | best member | mean difference (95 % CI) | Wilcoxon p | n |", "| --- | --- | --- | --- | --- |"]
        for zone, z in cv["zones"].items():
            d = z.get("ensemble_minus_best_member_dsc")
            if d:
                lines.append(f"| {zone} | {z['best_member']} | {d['mean']:+.3f} ({d['ci_low']:+.3f} to "
                             f"{d['ci_high']:+.3f}) | {d['wilcoxon_p']:.3g} | {d['n']} |")
    lines += ["", "## Training data", "", *training_data(names, metas, records), "", "## Known limits", "",
              *known_limits(metas, records),
              "- Every prediction gets a review verdict (ok / review / reject) from input and output quality "
              "checks (mricore.review); their limits are in ensemble.yaml and their measured detection and "
              "false-alarm rates in docs/RESULTS.md (in sample: bench/qa_bench.py; out of sample, the fit that "
              "ships: bench/qa_oos.py). A verdict of ok is not a guarantee.", "",
              "## Retraining", "", "`make bundle` (see the Makefile) retrains every member from scratch with "
              "`segment train`, scores them with `ensemble evaluate --cv` and packs them with `ensemble pack`.", ""]
    return "\n".join(lines)


def _patients(records: list[dict]) -> list[str]:
    """Every expert-labelled case id in the members' patient-level splits (training and held-out)."""
    return sorted({c for r in records for f in r["splits"] for key in ("train", "val") for c in f.get(key, [])})


def training_data(names: list[str], metas: list[ModelMeta], records: list[dict]) -> list[str]:
    """Markdown lines: data, labels and folds as each member's own config and splits record them."""
    groups: dict[tuple, list[str]] = {}
    for n, r in zip(names, records):
        d = r["config"].get("data") or {}
        if d:
            fact = (d.get("root"), tuple(d.get("datasets") or ("all",)), d.get("label"), d.get("silver_label"),
                    d.get("folds"), d.get("split_seed"), d.get("teacher"))
            groups.setdefault(fact, []).append(n)
    lines = []
    for (root, datasets, label, silver, folds, seed, teacher), who in groups.items():
        lines.append(f"- {', '.join(who)}: data root `{root}`, datasets {', '.join(datasets)}; expert labels "
                     f"`{label}`, {folds} patient-level folds (split_seed {seed})"
                     + (f"; silver labels `{silver}` where the expert label is missing, in training sets only, "
                        "never used to measure accuracy" if silver else "")
                     + (f"; a teacher's whole glands (`{teacher}`, zones unknown: partial-label loss), in training "
                        "sets only" if teacher else "") + ".")
    patients = _patients(records)
    if patients:
        lines.append(f"- Expert-labelled patients in the splits ({len(patients)}): {', '.join(patients)}. The "
                     "held-out fold of each member is scored once after training and decides nothing.")
    lines.append(f"- Input channels: {_channels(metas)}.")
    return lines


def _channels(metas: list[ModelMeta]) -> str:
    return ", ".join(sorted({c for m in metas for c in m.channels}))


def known_limits(metas: list[ModelMeta], records: list[dict]) -> list[str]:
    """Markdown lines: the limits that follow from the members' own records."""
    n = len(_patients(records))
    spec = metas[0].preprocess
    lines = []
    if n:
        lines.append(f"- Cross-validated figures come from {n} expert-labelled patients: their confidence "
                     "intervals are wide and they are not a claim of clinical accuracy.")
    lines.append(f"- Input channels {_channels(metas)} only.")
    if spec.crop_mm is not None and spec.crop_centre == "gland":
        lines.append(f"- The members see {spec.crop_mm} mm around the gland the locator (stage one) finds, and "
                     "nothing beyond its margin is labelled: a gland the locator misses is missed.")
    elif spec.crop_mm is not None:
        lines.append(f"- The in-plane field of view is cropped to {spec.crop_mm} mm around the image centre: a "
                     "gland far from the image centre will be missed.")
    return lines


def locator_section(folder: Path, meta: ModelMeta) -> str:
    """Markdown: the locator (stage one) of a bundle, from its model.json and training config."""
    spec = meta.preprocess
    cfg = yaml.safe_load((folder / "config.yaml").read_text()) if (folder / "config.yaml").exists() else {}
    data = cfg.get("data", {})
    arch = meta.model["name"] + f" {meta.model['spatial_dims']}D, channels {meta.model['channels']}"
    return "\n".join([
        "## Stage one: the locator", "",
        f"`locator/`: {arch} on {', '.join(meta.channels)}, {spec.target_spacing} mm, field of view "
        f"{'whole' if spec.crop_mm is None else spec.crop_mm}; trained with fold `{meta.fold}`, last epoch "
        f"{meta.best_epoch}, on: datasets {data.get('datasets') or 'all'} (label `{data.get('label')}`, "
        f"silver `{data.get('silver_label')}`) and teacher datalist "
        f"`{Path(data['teacher']).name if data.get('teacher') else 'none'}`.",
        "It runs first on the whole field of view; the members segment a crop centred on the bounding box of its "
        "largest gland component, and nothing farther than the ensemble's `locator_margin_mm` from that box is "
        "labelled (ensemble/engine.py).", ""])


def _stored_half(weights: Path) -> bool:
    """Whether a packed member's weights are stored as fp16 (read only, weights_only=True)."""
    import torch

    sd = torch.load(weights, map_location="cpu", weights_only=True)
    return any(v.dtype == torch.float16 for v in sd.values())


def render_card(folder: str | Path, notes: str | None = None, figures: str | None = None) -> str:
    """The model card of a packed ensemble folder, rendered again from what the folder holds (its
    ensemble.yaml, each member's model.json, config.yaml and splits.json, cv_evaluate.json, the locator),
    as `ensemble pack` wrote it; `figures` (Markdown made from measured results) goes before `notes`
    (Markdown appended last, like `pack --notes`). Reads the folder only: weights are never written.

    Raises InputError (mricore.modelfolder.read_model) for an incomplete member folder."""
    from mricore.modelfolder import read_model

    folder = Path(folder)
    cfg = yaml.safe_load((folder / CONFIG_YAML).read_text())
    names = list(cfg["members"])
    metas = [read_model(folder / n, "segmenter") for n in names]
    records = [training_record(folder / n) for n in names]
    cv_path = folder / "cv_evaluate.json"
    cv = json.loads(cv_path.read_text()) if cv_path.is_file() else None
    card = model_card(names, metas, records, cv, _stored_half(folder / names[0] / "weights.pt"))
    if cfg.get("locator"):
        card += "\n" + locator_section(folder / cfg["locator"], read_model(folder / cfg["locator"]))
    if figures:
        card += "\n" + figures
    if notes:
        card += "\n" + notes
    return card
