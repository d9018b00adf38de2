"""`ensemble` command line: predict (one case or a batch) and evaluate. Heavy imports (torch, MONAI)
live inside the commands, so `ensemble --help` is instant."""

from __future__ import annotations

import argparse
import sys

from mricore.errors import run_cli


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ensemble", description="Combine zonal segmenters into one zone map "
                                "with uncertainty (0 background, 1 TZ, 2 PZ).")
    sub = p.add_subparsers(dest="cmd", required=True)

    _add_predict(sub)
    _add_listen(sub)

    ev = sub.add_parser("evaluate", help="score the ensemble and each member side by side on labelled cases")
    _add_config(ev)
    ev.add_argument("--ref", required=True, help="dataset folder or datalist holding the reference labels")
    ev.add_argument("--label", default="zones", help="reference label key (zones, zones_ai)")
    ev.add_argument("-o", "--output", required=True, help="report folder")
    ev.add_argument("--cv", action="store_true",
                    help="cross-validated: score each case only with the members that held it out "
                         "(validation cases in each member's model.json)")
    ev.add_argument("--compare", metavar="DIR", help="also score these zone maps (a peer's predictions, an earlier "
                    "batch or evaluation folder) and compare the ensemble with them")
    ev.add_argument("--force", action="store_true")

    _add_serve(sub)

    ex = sub.add_parser("export", help="write every member as ONNX with its preprocessing spec and the ensemble config")
    ex.add_argument("--config", help="configs/ensemble/<name>.yaml (default: the bundled PyTorch members)")
    ex.add_argument("-o", "--output", required=True, help="export folder; predict with --config DIR/ensemble.yaml")
    ex.add_argument("--force", action="store_true", help="replace an existing export folder")

    pk = sub.add_parser("pack", help="copy trained member folders into one self-contained ensemble folder")
    pk.add_argument("members", nargs="+", metavar="MODEL_DIR", help="model folders written by `segment train`")
    pk.add_argument("-o", "--output", required=True, help="ensemble folder (e.g. ensemble/models/default)")
    pk.add_argument("--method", default="mean", help="combination method written to ensemble.yaml")
    pk.add_argument("--fp32", action="store_true", help="keep fp32 weights (default: fp16, half the size)")
    pk.add_argument("--cv-report", metavar="DIR", help="report folder of `ensemble evaluate --cv`, for the model card")
    pk.add_argument("--notes", metavar="FILE", help="Markdown appended to the model card")
    pk.add_argument("--locator", metavar="MODEL_DIR", help="stage one: a coarse gland segmenter (model folder)")
    pk.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="an ensemble setting written to ensemble.yaml, e.g. --set whole_slice=true (repeatable)")
    pk.add_argument("--force", action="store_true", help="replace an existing ensemble folder")
    return p


def _add_predict(sub) -> None:
    """The `predict` subcommand's arguments."""
    pr = sub.add_parser("predict", help="zones of one case (or every case of a dataset folder / datalist)")
    pr.add_argument("inputs", nargs="*", metavar="INPUT",
                    help="a volume, several channel files (t2/adc/dwi by name, else T2W, ADC, DWI in order), "
                         "a case folder, a DICOM series folder; or one dataset folder / .csv / .json datalist")
    _add_config(pr)
    pr.add_argument("-o", "--output", required=True, help="output folder (batch: one sub-folder per case)")
    pr.add_argument("--probabilities", action="store_true", help="also write probabilities.nii.gz (float32; NIfTI-1 has no float16)")
    pr.add_argument("--report", action="store_true", help="also write report.html (a dataset: each case's, and "
                    "OUT/report.html of the cohort: verdicts, volumes, flagged cases, time per case)")
    pr.add_argument("--workers", type=int, default=1, metavar="N",
                    help="batch: N threads read and write cases while the networks run (default 1); under "
                         "torchrun each rank takes its own slice of the cases")
    pr.add_argument("--force", action="store_true", help="overwrite existing outputs, and segment an input the "
                    "checks reject as not an axial T2W study (its verdict stays reject)")
    pr.add_argument("--resume", action="store_true", help="batch: keep the cases an earlier run with the same "
                    "config completed in OUT, run the failed and missing ones, summarise all (not with --force)")
    _add_keep_identity(pr, "seg.dcm keeps the source's patient, study and UIDs (a round trip into your own "
                       "PACS); nothing else ever carries them")
    pr.add_argument("--key-file", metavar="K", help="de-identify seg.dcm with the provider's key K: the "
                    "pseudonyms and UIDs `segment import --key-file K --dicom-out` writes (default: a random key)")
    pr.add_argument("--dicomweb", metavar="URL", help="instead of INPUT: retrieve study --study over WADO-RS from "
                    "this DICOMweb root (e.g. http://pacs:8042/dicom-web); the pacs extra")
    pr.add_argument("--study", metavar="UID", help="with --dicomweb: the StudyInstanceUID to segment")
    pr.add_argument("--stow", action="store_true", help="with --dicomweb: store the SEG and the SR measurement "
                    "report back over STOW-RS (with --keep-identity, into the patient's own study)")


def _add_listen(sub) -> None:
    """The `listen` subcommand's arguments."""
    ls = sub.add_parser("listen", help="a DICOM node: receive studies by C-STORE, send the DICOM-SEG and an SR "
                        "of the volumes back")
    ls.add_argument("--port", type=int, required=True, help="TCP port to listen on (e.g. 11112)")
    ls.add_argument("--ae-title", required=True, help="this node's AE title, as the PACS knows it")
    ls.add_argument("--send-to", required=True, metavar="AET@HOST:PORT", help="where the SEG and SR go (C-STORE); "
                    "loopback or the local network only, unless --keep-identity")
    ls.add_argument("--allowed-ae", metavar="A,B", help="accept associations only from these calling AE titles")
    ls.add_argument("--study-timeout", type=float, default=10.0, metavar="S",
                    help="a study is complete after S seconds without a new instance (default 10)")
    _add_keep_identity(ls, "results keep the patient, study and UIDs and land in the patient's own study")
    ls.add_argument("--workers", type=int, default=1, metavar="N", help="studies processed at once (default 1)")
    ls.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0: the PACS must reach it)")
    _add_config(ls)


def _add_config(p) -> None:
    """--config and --set, as predict, listen and evaluate take them."""
    p.add_argument("--config", help="configs/ensemble/<name>.yaml (default: the bundled ensemble)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set method=vote (repeatable)")


def _add_keep_identity(p, kept: str) -> None:
    """--keep-identity: what keeps the source identity (`kept`); de-identified by default."""
    p.add_argument("--keep-identity", action="store_true",
                   help=f"{kept}; default: de-identified (DICOM PS3.15 Basic Profile)")


def _add_serve(sub) -> None:
    sv = sub.add_parser("serve", help="serve the ensemble over HTTP: a page, POST /predict, results, DICOM-SEG")
    sv.add_argument("--config", help="configs/ensemble/<name>.yaml (default: the bundled ensemble)")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--results", default="serve_results", help="folder for RESULTS/<id>/ outputs")
    sv.add_argument("--workers", type=int, default=1, help="predictions running at once")
    sv.add_argument("--queue", type=int, default=4, help="requests waiting beyond --workers; more get 503")
    sv.add_argument("--max-upload-mb", type=float, default=512, help="largest request body; counted while it "
                    "streams, a larger one gets 413 (default 512)")
    sv.add_argument("--upload-timeout", type=float, default=300, metavar="S",
                    help="seconds an upload may take; a slower one gets 408 and holds no worker (default 300)")
    sv.add_argument("--keep-hours", type=float, default=24,
                    help="results older than this are removed and answer 404 (default 24)")
    sv.add_argument("--token", default=None, help="require 'Authorization: Bearer TOKEN' on every endpoint "
                    "but /health")
    sv.add_argument("--import", dest="import_root", metavar="DICOM_ROOT", default=None,
                    help="also offer the data provider's page of `segment import --serve` for this tree at /import/")
    sv.add_argument("--import-to", dest="import_dataset", metavar="DATASET", default=None,
                    help="the dataset folder that page writes (with --import)")
    sv.add_argument("--key-file", default=None, help="the provider's key for that page's pseudonyms (with --import)")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    commands = {"pack": _pack, "export": _export, "serve": _serve, "predict": _predict, "evaluate": _evaluate,
                "listen": _listen}
    return run_cli(lambda: commands[args.cmd](args))


def _pack(args) -> int:
    from .config import METHODS
    from .pack import pack

    if args.method not in METHODS:
        from mricore.errors import ConfigError

        raise ConfigError("--method", "unknown combination method", repr(args.method), f"use one of {list(METHODS)}")
    out = pack(args.members, args.output, args.method, half=not args.fp32, cv_report=args.cv_report,
               force=args.force, notes=args.notes, locator=args.locator, settings=args.overrides)
    print(f"ensemble folder: {out}")
    return 0


def _export(args) -> int:
    from .config import BUNDLED, load_ensemble_config
    from .export import export

    cfg = load_ensemble_config(args.config or BUNDLED)  # the PyTorch members, never an export
    print(f"export folder: {export(cfg, args.output, args.force)}")
    return 0


def _serve(args) -> int:
    from .config import load_ensemble_config

    try:
        from .serve import serve
    except ImportError as e:
        from mricore.errors import UserError

        raise UserError("ensemble serve", "needs the serve extra (FastAPI, uvicorn, python-multipart)",
                        f"missing {e.name}", "pip install -e '.[serve]'") from None
    if (args.import_root is None) != (args.import_dataset is None):
        from mricore.errors import UserError

        raise UserError("--import/--import-to", "go together", "one of them", "give the DICOM tree and the dataset folder")
    serve(load_ensemble_config(args.config), args.host, args.port, args.results, args.workers,
          args.queue, args.max_upload_mb, args.upload_timeout, args.keep_hours, args.token,
          (args.import_root, args.import_dataset, args.key_file) if args.import_root else None)
    return 0


def _predict(args) -> int:
    """One case into OUT, or a batch into OUT/<case>/ (mricore.results.is_batch_input decides)."""
    from mricore.results import is_batch_input

    from .config import load_ensemble_config
    from .dicomseg import Identity

    cfg = load_ensemble_config(args.config, args.overrides)
    probs = True if args.probabilities else None
    identity = Identity(args.keep_identity, args.key_file).check()
    if args.dicomweb or args.study or args.stow or not args.inputs:
        return _predict_dicomweb(args, cfg, probs, identity)
    if not is_batch_input(args.inputs):
        from .predict import predict

        if args.resume:
            from mricore.errors import InputError

            raise InputError("--resume", "applies to a batch (a dataset folder or a datalist)", "one case",
                             "drop --resume (a finished case is refused without --force)")
        record = predict(args.inputs, args.output, cfg, args.force, probs, args.report, identity=identity)
        _print_case(record.case_id, record.headline())
        return 0
    from .batch import predict_batch, rank_and_world

    rows = predict_batch(args.inputs[0], args.output, cfg, args.force, probs, args.report, workers=args.workers,
                         identity=identity, resume=args.resume)
    for r in rows if rank_and_world()[0] == 0 else []:
        if r["status"] == "ok":
            _print_case(r["case_id"], r)
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        from mricore.errors import UserError
        from mricore.results import SUMMARY_CSV

        raise UserError(args.output, f"{len(failed)} of {len(rows)} cases failed (nothing kept of "
                        "them; the others are complete)", failed[0]["error"],
                        f"see {args.output}/{SUMMARY_CSV}; to retry only those, run again with --resume")
    return 0


def _predict_dicomweb(args, cfg, probs, identity) -> int:
    """`predict --dicomweb URL --study UID`: one study over WADO-RS into OUT, SEG and SR back with --stow."""
    from .dicomweb import check_request, predict_dicomweb

    check_request(args.inputs, args.dicomweb, args.study)
    record, stored = predict_dicomweb(args.dicomweb, args.study, args.output, cfg, args.force, probs, args.report,
                                      identity, args.stow)
    _print_case(record.case_id, record.headline())
    if stored:
        print(f"stored over STOW-RS: {', '.join(stored)}")
    return 0


def _listen(args) -> int:
    """`listen`: checks (AE titles, --send-to and the destination rule, config) before the port opens."""
    from .config import load_ensemble_config
    from .listen import Listener
    from .nodes import Node, check_ae_title, check_destination, require_pacs

    require_pacs()
    send_to = Node.parse(args.send_to)
    check_destination(send_to.host, args.keep_identity)
    allowed = [check_ae_title(a, "--allowed-ae") for a in (args.allowed_ae or "").split(",") if a.strip()]
    cfg = load_ensemble_config(args.config, args.overrides)
    Listener(cfg, args.port, check_ae_title(args.ae_title), send_to, allowed, args.study_timeout,
             args.keep_identity, args.workers, args.host).serve_forever()
    return 0


def _evaluate(args) -> int:
    from pathlib import Path

    from mricore.results import REPORT_HTML
    from mricore.stats import fmt

    from .config import load_ensemble_config
    from .evaluate import evaluate

    cfg = load_ensemble_config(args.config, args.overrides)
    summary = evaluate(cfg, args.ref, args.output, label=args.label, force=args.force, cross_validated=args.cv,
                       compare=args.compare)
    for zone, z in summary["zones"].items():
        if "ensemble_minus_best_member_dsc" in z:
            print(f"{zone}: DSC ensemble − best member ({z['best_member']}): "
                  f"{fmt(z['ensemble_minus_best_member_dsc'])}")
        for name, d in z.get("ensemble_minus_compared_dsc", {}).items():
            print(f"{zone}: DSC ensemble − {name}: {fmt(d)}")
    print(f"report: {Path(args.output) / REPORT_HTML}")
    return 0


def _print_case(case_id: str, headline: dict) -> None:
    """One line per case from its headline fields (mricore.results.ZonesRecord.headline)."""
    vol, unc, review = headline["volume_ml"], headline["uncertainty"], headline["review"]
    why = f" ({'; '.join(review['reasons'])})" if review["reasons"] else ""
    print(f"{case_id}: WG {vol['WG']:.1f} mL (TZ {vol['TZ']:.1f}, PZ {vol['PZ']:.1f}), "
          f"entropy {unc['score']:.3f}, disagreement {unc['disagreement']:.3f}: {review['verdict']}{why}")


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
