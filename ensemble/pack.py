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
from mricore.modelfolder import load_weights, read_model_meta, save_weights

COPY = ("model.json", "config.yaml", "history.csv", "splits.json")


def member_folder_name(meta: dict, src: Path) -> str:
    fold = meta.get("fold")
    return f"{meta.get('name', src.parent.name)}_fold{fold}" if fold is not None else src.name


def pack(members: list[str | Path], out_dir: str | Path, method: str = "mean", half: bool = True,
         cv_report: str | Path | None = None, force: bool = False, notes: str | Path | None = None) -> Path:
    """Copy member folders (weights optionally as fp16) and write ensemble.yaml (+ model card).

    notes: a Markdown file appended to the model card (measurements made outside `ensemble evaluate`,
    e.g. ablations, with their commands)."""
    from .members import read_members

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not force:
        raise OutputExistsError(out, "ensemble folder exists", None, "pass --force to replace it")
    read_members(members)  # every member complete, loadable, segmenter, platform zone labels: checked first
    cv = None
    if cv_report is not None:
        p = Path(cv_report) / "evaluate.json"
        if not p.exists():
            raise InputError(p, "cross-validation report not found", None,
                             "run `ensemble evaluate --cv ... -o DIR` first and pass DIR")
        cv = json.loads(p.read_text())
    if notes is not None and not Path(notes).is_file():
        raise InputError(notes, "model card notes file not found", None, "pass a Markdown file or leave out --notes")
    from mricore.io import replaced_dir

    with replaced_dir(out) as tmp:
        names, metas = [], []
        for src in map(Path, members):
            meta = read_model_meta(src)
            name = member_folder_name(meta, src)
            if name in names:
                raise InputError(src, "two members would get the same folder name", name,
                                 "give the training configs different names")
            (tmp / name).mkdir()
            for f in COPY:
                if (src / f).exists():
                    shutil.copy2(src / f, tmp / name / f)
            save_weights(load_weights(src), tmp / name / "weights.pt", half=half)
            names.append(name)
            metas.append(meta)
        from mricore.config import to_dict

        from .config import EnsembleConfig

        cfg = to_dict(EnsembleConfig(members=names, method=method))
        header = ("# Bundled ensemble written by `ensemble pack`; member paths are relative to this folder.\n"
                  "# review: limits of the quality checks (mricore.qa), calibrated by bench/qa_bench.py.\n")
        (tmp / "ensemble.yaml").write_text(header + yaml.safe_dump(cfg, sort_keys=False))
        if cv is not None:
            (tmp / "cv_evaluate.json").write_text(json.dumps(cv, indent=2))
        card = model_card(names, metas, cv, half)
        if notes is not None:
            card += "\n" + Path(notes).read_text()
        (tmp / "MODEL_CARD.md").write_text(card)
    return out


def _cell(s: dict | None) -> str:
    if not s or not s.get("n"):
        return "n/a"
    return (f"{s['mean']:.3f} / {s['median']:.3f} ({s['ci_low']:.2f}-{s['ci_high']:.2f}), n={s['n']}"
            + (f" ({s['n_excluded']} excl.)" if s.get("n_excluded") else ""))


def model_card(names: list[str], metas: list[dict], cv: dict | None, half: bool) -> str:
    """Markdown model card from the members' model.json and the cross-validated evaluation."""
    cfg0 = metas[0]
    lines = ["# Bundled default ensemble: model card", "",
             "**Intended use: research only, not for diagnosis.** Zonal segmentation of prostate T2W MRI "
             "(0 background, 1 transition zone / central gland, 2 peripheral zone; WG = TZ ∪ PZ).", "",
             "## Members", "",
             "| member | architecture | input | fold | weights chosen by | epoch | held-out cases (expert) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for n, m in zip(names, metas):
        arch = m["model"]["name"] + (f" {m['model']['spatial_dims']}D" if not m["model"].get("context")
                                     else f" 2.5D (context {m['model']['context']})")
        val = (m.get("validation") or {}).get("cases", [])
        sel = m.get("selection") or {}
        rule = sel.get("rule", "unknown (no selection record)").split(":")[0]
        if sel.get("cases"):
            rule += f" ({', '.join(sel['cases'])})"
        lines.append(f"| {n} | {arch}, channels {m['model']['channels']} | {', '.join(m['channels'])} | "
                     f"{m.get('fold')} | {rule} | {m.get('best_epoch')} | {', '.join(val) or 'none'} |")
    lines += ["", f"Weights stored as {'fp16' if half else 'fp32'} (loaded as float32). Preprocessing: "
              f"{cfg0['preprocess']['target_spacing']} mm target spacing (null = as acquired), "
              f"{cfg0['preprocess']['crop_mm']} mm in-plane field of view around the volume centre.", ""]
    lines += ["Protocol: a member's held-out patients decide nothing (no epoch choice, early stopping, weight or "
              "threshold); its weights are the last epoch of a fixed schedule (`fixed`) or the best epoch on an "
              "inner split of its training patients (`inner`), and the held-out patients are scored once, after "
              "training, in eval mode.", ""]
    lines += ["## Per-member held-out DSC (own held-out fold, working grid)", "",
              "| member | WG | TZ | PZ |", "| --- | --- | --- | --- |"]
    for n, m in zip(names, metas):
        v = m.get("validation") or {}
        cells = [f"{v.get(z + '_mean', float('nan')):.3f} (n={v.get(z + '_n', 0)})" for z in ("WG", "TZ", "PZ")]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
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
    lines += ["", "## Training data", "", TRAINING_DATA, "", "## Known limits", "", LIMITS,
              "- Every prediction gets a review verdict (ok / review / reject) from input and output quality "
              "checks (mricore.qa); their limits and measured detection and false-alarm rates are in the README "
              "(bench/qa_bench.py). A verdict of ok is not a guarantee.", "",
              "## Retraining", "", "`make bundle` (see the Makefile) retrains every member from scratch with "
              "`segment train`, scores them with `ensemble evaluate --cv` and packs them with `ensemble pack`.", ""]
    return "\n".join(lines)


TRAINING_DATA = """\
From `../shared/data` (its README gives origins and licences):
- Expert zone labels (`zones.nii.gz`): Prostate158 cases 001, 002, 021 (Charité Berlin, 3 T Siemens;
  Zenodo record, licence to be checked before redistribution) and I2CVB Patient_52209036 and
  Patient_68619 (3- and 5-slice slabs, CHU Dijon; repository licence GPL-2.0, no data licence stated).
  These 5 patients are split into 3 patient-level folds; the held-out fold of each member is scored
  once after training and decides nothing.
- Silver labels: AI-generated zones (`zones_ai.nii.gz`, Yuan et al. 2023, PI-CAI labels, CC BY-NC 4.0)
  of ProstateX-0000, 0002, 0003, 0004, 0005 and 0176 (TCIA), added to every fold's training set only.
  Never used to measure accuracy.
- T2W only: the expert-labelled cases have no ADC here."""

LIMITS = """\
- Very few training cases (5 expert-labelled patients, 6 silver), from Siemens 3 T scanners at three
  sites: expect lower accuracy on other vendors, 1.5 T, endorectal-coil or non-axial studies.
- Cross-validated figures come from 5 patients (two of them thin slabs): their confidence intervals are
  wide and they are not a claim of clinical accuracy.
- T2W input only. The in-plane field of view is cropped to the central region of the image: a gland far
  from the image centre will be missed."""
