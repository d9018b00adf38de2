"""`localize` command line: train, predict, evaluate. Heavy imports (torch, MONAI) live inside commands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mricore.errors import run_cli

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "localize" / "lesion_zone_lr.yaml"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="localize", description="Lesion localisation downstream of the zone map.")
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train the patch lesion classifier on one patient-level fold")
    t.add_argument("--config", default=str(DEFAULT_CONFIG),
                   help="configs/localize/<name>.yaml (default: lesion_zone_lr.yaml, the zone-statistics logistic "
                        "regression, which scored better than the CNN under patient-level cross-validation on the "
                        "real lesion masks: see the README)")
    t.add_argument("--fold", default="0", help="fold index, or 'all' to train on every labelled case")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=5 (repeatable)")
    t.add_argument("--resume", action="store_true", help="continue from checkpoint_last.pt")
    t.add_argument("--force", action="store_true", help="overwrite an existing model folder")

    pr = sub.add_parser("predict", help="lesion probability map, candidates and their record for one study")
    pr.add_argument("--model", required=True, help="model folder written by `localize train`")
    pr.add_argument("--zones", required=True, help="zone map (0 bg, 1 TZ, 2 PZ) on the grid of the first input")
    pr.add_argument("inputs", nargs="+", help="NIfTI file(s) of one case (T2W first) or a case folder")
    pr.add_argument("-o", "--output", required=True, help="output folder")
    pr.add_argument("--explain", action="store_true", help="also write the Grad-CAM heat map (NIfTI + PNG)")
    pr.add_argument("--layer", default=None, help="Grad-CAM target layer (default: the model's)")
    pr.add_argument("--clinical", default=None, help="CSV with case_id, age, psa, psad, prostate_volume_ml "
                                                       "(for models with clinical covariates)")
    pr.add_argument("--force", action="store_true")

    ev = sub.add_parser("evaluate", help="patient- and lesion-level scores against expert lesion masks")
    ev.add_argument("--pred", required=True, help="output folder of `localize predict`, or a folder of them")
    ev.add_argument("--ref", required=True, help="dataset holding lesion masks and zone maps")
    ev.add_argument("-o", "--output", required=True, help="report folder")
    ev.add_argument("--force", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    commands = {"train": _train, "predict": _predict, "evaluate": _evaluate}
    return run_cli(lambda: commands[args.cmd](args))


def _train(args) -> int:
    from mricore.config import load_config
    from mricore.protocol import parse_fold

    from .config import LocalizeConfig
    from .train import train

    cfg = load_config(LocalizeConfig, args.config, args.overrides)
    print(f"model folder: {train(cfg, parse_fold(args.fold), resume=args.resume, force=args.force)}")
    return 0


def _predict(args) -> int:
    from .predict import predict

    r = predict(args.model, args.inputs, args.zones, args.output, args.explain, args.layer, args.force, args.clinical)
    print(f"{r['case_id']}: patient score {r['patient_score']:.3f}, {len(r['candidates'])} candidate(s)")
    return 0


def _evaluate(args) -> int:
    from .evaluate import evaluate

    s = evaluate(args.pred, args.ref, args.output, force=args.force)
    print(f"{s['n_cases']} cases: patient AUC {s['patient_level']['WG']['auc']:.3f}; report {s['report']}")
    return 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
