"""`segment` command line: train, predict, evaluate, pseudo-label, augment, import, pretrain. Heavy imports
live inside commands."""

from __future__ import annotations

import argparse
import sys

from mricore.errors import run_cli


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="segment", description="Prostate zonal segmentation (WG, TZ, PZ).")
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train one fold (or all data) from a YAML config")
    t.add_argument("--config", required=True, help="configs/segment/<name>.yaml")
    t.add_argument("--fold", default="0", help="fold index, or 'all' to train on every labelled case")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=5 (repeatable)")
    t.add_argument("--resume", action="store_true", help="continue from checkpoint_last.pt")
    t.add_argument("--init-from", metavar="MODEL_DIR", help="initialise weights from another model folder")
    t.add_argument("--force", action="store_true", help="overwrite an existing model folder")
    t.add_argument("--cv", action="store_true", help="train every fold, then write the cross-validation summary")

    pr = sub.add_parser("predict", help="apply a model folder to volumes, case folders or a datalist")
    pr.add_argument("--model", required=True, help="model folder written by `segment train`")
    pr.add_argument("inputs", nargs="+", help="NIfTI file(s) of one case, a case folder, a dataset folder or datalist")
    pr.add_argument("-o", "--output", required=True, help="output case folder (a dataset or datalist: one "
                    "sub-folder per case), laid out as `ensemble predict` writes it")
    pr.add_argument("--probabilities", action="store_true",
                    help="also write probabilities.nii.gz (float32, background/TZ/PZ on the 4th axis)")
    pr.add_argument("--force", action="store_true")
    pr.add_argument("--explain", metavar="ZONE", default=None,
                    help="also write a Grad-CAM heat map of ZONE (TZ or PZ) into each case folder: "
                    "gradcam_<ZONE>.nii.gz and .png, its faithfulness check in zones.json")

    ev = sub.add_parser("evaluate", help="score predictions against reference zone maps")
    ev.add_argument("--pred", required=True, help="the -o folder of `segment predict` or `ensemble predict` (one "
                    "case or a batch of <case>/zones.nii.gz), or a flat folder of <case>.nii.gz (nnU-Net)")
    ev.add_argument("--ref", required=True, help="dataset folder or datalist holding the references, or a flat "
                    "folder of <case>.nii.gz reference maps")
    ev.add_argument("--label", default="zones", help="reference label key (zones, zones_ai, wg)")
    ev.add_argument("-o", "--output", required=True, help="report folder")
    ev.add_argument("--force", action="store_true")

    ps = sub.add_parser("pseudo-label", help="self-training labels: a teacher's whole glands split into zones "
                        "where an ensemble's probabilities are confident (segment.pseudo)")
    ps.add_argument("--predictions", required=True, help="ensemble predict output of the teacher datalist, run "
                    "with --probabilities (one <case>/probabilities.nii.gz each)")
    ps.add_argument("--teacher", required=True, help="datalist of the teacher's whole glands (wg_teacher), e.g. "
                    "runs/teacher/datalist.json")
    ps.add_argument("--min-conf", type=float, default=0.9, help="share of the gland's probability a zone needs "
                    "(default 0.9); below it the zone stays unknown")
    ps.add_argument("-o", "--output", required=True, help="folder for the zone maps and datalist.json")
    ps.add_argument("--force", action="store_true")

    au = sub.add_parser("augment", help="offline augmentation: write N augmented copies of each training case")
    au.add_argument("--config", required=True)
    au.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    au.add_argument("--copies", type=int, default=None, help="copies per case (default augment.offline_copies)")
    au.add_argument("-o", "--output", required=True)
    au.add_argument("--force", action="store_true")
    _add_import(sub)
    _add_pretrain(sub)
    _add_shape_pairs(sub)
    return p


def _add_shape_pairs(sub) -> None:
    sp = sub.add_parser("shape-pairs", help="expert zone maps without images into training pairs: a donor study "
                        "warped onto each map by label-driven registration, judged by a fixed QC rule (segment.shapes)")
    sp.add_argument("--labels", nargs="+", required=True, help="folder(s) of 0/1 TZ/2 PZ zone maps (*.nii.gz)")
    sp.add_argument("--donors", nargs="+", required=True, help="dataset folder(s) or datalist(s) of T2W + zones studies")
    sp.add_argument("--donor-label", nargs="+", default=["zones"], help="donor label keys, first present is used "
                    "(default zones; add zones_ai for silver donors)")
    sp.add_argument("--per-target", type=int, default=1, help="donors per map, nearest in gland volume (default 1)")
    sp.add_argument("-o", "--output", required=True, help="folder for <pair>/t2, zones.nii.gz, datalist.json, qc.json")
    sp.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    sp.add_argument("--force", action="store_true")


def _add_import(sub) -> None:
    im = sub.add_parser("import", help="a data provider's masked dataset: classify the series of a DICOM tree, "
                        "write <pseudonym>/t2, adc, dwi.nii.gz and manifest.json (segment.importer)")
    im.add_argument("root", help="folder of DICOM studies (any layout, series may be mixed)")
    im.add_argument("-o", "--output", required=True, help="dataset folder; re-running into an earlier import "
                    "made with the same key skips its finished studies")
    im.add_argument("--key-file", help="provider key (created, mode 0600, if missing): the same patient gets the "
                    "same pseudonym every run; the re-identification table goes to KEY_FILE.map.csv. Without it "
                    "a random key is used once")
    im.add_argument("--dicom-out", action="store_true", help="also write de-identified DICOM copies "
                    "(<case>/dicom/<series>/)")
    im.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    im.add_argument("--include-burned-in", action="store_true",
                    help="keep series flagged BurnedInAnnotation=YES (left out by default)")
    im.add_argument("--force", action="store_true", help="re-import finished studies; write into a folder "
                    "that is not an earlier import")
    im.add_argument("--serve", action="store_true", help="after the import, serve a page for the staff at the "
                    "source: every series with a thumbnail and its class; change a class or exclude a series, "
                    "then Export (segment.import_page; needs the serve extra)")
    im.add_argument("--host", default="127.0.0.1", help="--serve address (default 127.0.0.1, this machine only: "
                    "the page shows source images)")
    im.add_argument("--port", type=int, default=8001, help="--serve port (default 8001)")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    commands = {"train": _train, "predict": _predict, "evaluate": _evaluate, "pseudo-label": _pseudo_label,
                "augment": _augment, "import": _import, "pretrain": _pretrain,
                "shape-pairs": _shape_pairs}
    return run_cli(lambda: commands[args.cmd](args))


def _train(args) -> int:
    from mricore.config import load_config
    from mricore.protocol import parse_fold

    from .config import SegmentConfig
    from .train import train

    cfg = load_config(SegmentConfig, args.config, args.overrides)
    if args.cv:
        from .crossval import cross_validate

        cross_validate(cfg, force=args.force, init_from=args.init_from)
        return 0
    out = train(cfg, parse_fold(args.fold), resume=args.resume, init_from=args.init_from, force=args.force)
    print(f"model folder: {out}")
    return 0


def _predict(args) -> int:
    from .predict import predict

    records = predict(args.model, args.inputs, args.output, args.probabilities, args.force, explain=args.explain)
    for r in records:
        if r.explanation:
            e, f = r.explanation, r.explanation["faithfulness"]
            print(f"{r.case_id}: Grad-CAM {e['zone']} top-10% drop {f['drop_top_k']:.3g} "
                  f"vs random {f['drop_random_mean']:.3g}")
        print(f"{r.case_id}: WG {r.volume_ml['WG']:.1f} mL in {sum(r.timings_s.values()):.2f} s")
    return 0


def _evaluate(args) -> int:
    from .evaluate import evaluate

    print(f"report: {evaluate(args.pred, args.ref, args.output, label=args.label, force=args.force)}")
    return 0


def _pseudo_label(args) -> int:
    from .pseudo import write_pseudo_labels

    for r in write_pseudo_labels(args.predictions, args.teacher, args.output, args.min_conf, args.force):
        print(f"{r['case_id']}: TZ {r['TZ']:.0%}, PZ {r['PZ']:.0%}, zone unknown {r['unknown']:.0%} of the gland")
    print(f"datalist: {args.output}/datalist.json")
    return 0


def _augment(args) -> int:
    from mricore.config import load_config

    from .augment import write_augmented
    from .config import SegmentConfig

    write_augmented(load_config(SegmentConfig, args.config, args.overrides), args.output, args.copies,
                    force=args.force)
    return 0


def _add_pretrain(sub) -> None:
    pt = sub.add_parser("pretrain", help="self-supervised pre-training of a segment config's network on every "
                        "study's images, labels never read (masked-image reconstruction, segment.pretrain)")
    pt.add_argument("--config", required=True, help="configs/segment/pretrain_<name>.yaml (names the segment config)")
    pt.add_argument("-o", "--output", required=True, help="model folder to write (kind pretrain), for "
                    "`segment train --config <its segment config> --init-from OUTPUT`")
    pt.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a pretrain config value, e.g. --set epochs=5 (repeatable)")
    pt.add_argument("--data", help="data folder to pre-train on (replaces the config's root)")
    pt.add_argument("--force", action="store_true", help="replace an existing output folder")


def _pretrain(args) -> int:
    from .pretrain import load_pretrain_config, pretrain

    cfg, seg = load_pretrain_config(args.config, args.overrides, args.data)
    print(f"pretrain folder: {pretrain(cfg, seg, args.output, force=args.force)}")
    return 0


def _import(args) -> int:
    from .importer import ImportOptions, import_dicom

    options = ImportOptions(args.dicom_out, args.include_burned_in, args.force, args.workers)
    if args.serve:
        return _serve_import(args, options)
    _print_import(import_dicom(args.root, args.output, args.key_file, options), args.output)
    return 0


def _serve_import(args, options) -> int:
    """`segment import --serve`: the import, then its page (segment.import_page) until interrupted."""
    from mricore.errors import UserError

    try:
        import uvicorn

        from .import_page import create_import_app
    except ImportError as e:
        raise UserError("segment import --serve", "needs the serve extra (FastAPI, uvicorn)", f"missing {e.name}",
                        "pip install -e '.[serve]'") from None
    app = create_import_app(args.root, args.output, options, args.key_file)
    _print_import(app.state.import_page.manifest, args.output)
    print(f"import page on http://{args.host}:{args.port}/ (Ctrl-C to stop)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _print_import(m, output) -> None:
    for s in m.studies:
        print(f"{s.case}: {s.status}" + (f" ({s.reason})" if s.reason else f" ({', '.join(s.outputs)})"))
    counts = m.to_json()["counts"]
    print(f"dataset: {output} ({counts['written']} written, {counts['skipped']} skipped, {counts['failed']} "
          f"failed, {len(m.problems)} unreadable files; see manifest.json)")


def _shape_pairs(args) -> int:
    from .shape_pairs import make_pairs

    s = make_pairs(args.labels, args.donors, args.output, label_keys=tuple(args.donor_label),
                   per_target=args.per_target, workers=args.workers, force=args.force)["summary"]
    print(f"{s['accepted']} of {s['pairs']} pairs accepted ({s['targets_skipped']} maps skipped); "
          f"datalist: {args.output}/datalist.json, QC: {args.output}/qc.json")
    return 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
