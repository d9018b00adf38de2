"""Calibrate and measure the review verdict (mricore.review) on a failure set made from the real cases.

The set (built in memory, never written into ../shared/data): every T2W study with an image here
(Prostate158, I2CVB, PROMISE12, ProstateX, the unlabelled Siemens studies and the Philips studies), each
as it is ("normal") and corrupted in seven ways: sagittal or coronal reformat (every other study), strong bias
field, heavy noise, every third slice kept, off-centre crop, anterior-posterior flip in the header only;
plus wrong sequences given as T2W (real ADC and DWI, on their own grid and resampled onto the T2 grid)
and the real sagittal and coronal DICOM series of ProstateX-0000.

Every variant goes through the bundled ensemble (`run_case`, with --force's acceptance so rejected
inputs are still segmented and scored). A failure is a variant whose whole-gland DSC against its
reference is below 0.70; the reference is the expert gland (Prostate158 zones > 0, I2CVB and PROMISE12
wg), the AI gland of ProstateX (wg_ai: good enough to call a failure, not to claim accuracy), or, for
studies without labels, the ensemble's own map of the uncorrupted study carried through the same
transform. The uncorrupted unlabelled studies therefore cannot fail by construction, and the uncorrupted
Philips studies (another vendor, nothing to compare with) are reported but left out of the rates.

Calibration: base studies are split in two halves by patient (seeded, alternating within each dataset,
every variant of a study in its study's half). The content limits (dark fraction, sharpness, noise,
non-uniformity) and the output limits (member disagreement, entropy, PZ/TZ intensity) are set on half A as the most
extreme value among its uncorrupted non-failure studies, with a 10 % margin; half B then gives the
false-alarm rate on its uncorrupted studies, the detection rate of its failures, the flag rate per
corruption kind and the ROC AUC of the combined score (largest check excess) for failure vs not. The
same is repeated with the halves swapped. The fit is the package's (mricore.review_limits.fit_limits);
the limits from half A are the shipped ones: `make review-limits` writes them, from this file's rows,
into the bundle's ensemble.yaml, the one place they are stored. The bundle trained on nearly every study
here, so these maps and the limits fitted on them are in sample; bench/qa_oos.py measures the same
failure set on the studies that some members never trained on, segmented by those members only.

    python -m bench.qa_bench [--data ../shared/data] [--limit N]   # ~20 min on 2 cores (make review-bench)
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from bench.common import RESULTS, add_data, add_out, command, parser, write_result
from ensemble.config import load_ensemble_config
from ensemble.members import read_members
from ensemble.predict import Source, run_case
from mricore import review
from mricore.align import resample_to
from mricore.gland_reference import load_reference
from mricore.io import read_label, read_nifti
from mricore.metrics import dice
from mricore.review_limits import MARGIN, calibration_set, fit_limits, has_outcome
from mricore.volume import Volume

FAIL_DSC = 0.70
KINDS = ("normal", "reformat", "bias_field", "noise", "thick_slices", "off_centre_crop", "flipped_header",
         "adc_as_t2", "dwi_as_t2", "dicom_sag_cor")


# ----------------------------------------------------------------------------- the set

def base_studies(data: Path) -> list[dict]:
    out = []
    for d in sorted((data / "prostate158").glob("*/")):
        out.append({"id": f"prostate158/{d.name}", "dir": d, "ref": ("zones", "expert")})
    for d in sorted((data / "i2cvb").glob("*/")):
        out.append({"id": f"i2cvb/{d.name}", "dir": d, "ref": ("wg", "expert")})
    for d in sorted((data / "promise12").glob("*/")):
        out.append({"id": f"promise12/{d.name}", "dir": d, "ref": ("wg", "expert")})
    for d in sorted((data / "prostatex").glob("ProstateX-*/")):
        out.append({"id": f"prostatex/{d.name}", "dir": d, "ref": ("wg_ai", "silver")})
    for ds in ("unlabelled", "philips"):
        for d in sorted((data / ds).glob("*/")):
            if (d / "t2.nii.gz").exists():
                out.append({"id": f"{ds}/{d.name}", "dir": d, "ref": (None, "own prediction")})
    return out


def _flip_axis(affine: np.ndarray, shape, axis: int) -> np.ndarray:
    f = np.eye(4)
    f[axis, axis], f[axis, 3] = -1, shape[axis] - 1
    return affine @ f


def reformat(vol: Volume, plane: str, inplane_mm: float = 0.8, slice_mm: float = 3.0):
    """The study resampled onto a sagittal or coronal grid covering the same box (grid only)."""
    corners = np.array([[i, j, k, 1] for i in (0, vol.shape[0] - 1) for j in (0, vol.shape[1] - 1)
                        for k in (0, vol.shape[2] - 1)], float)
    world = (vol.affine @ corners.T)[:3]
    lo, hi = world.min(axis=1), world.max(axis=1)
    # Voxel axes: two in-plane axes then the slice axis, as RAS unit vectors.
    order = {"sagittal": (1, 2, 0), "coronal": (0, 2, 1)}[plane]
    spacing = [inplane_mm, inplane_mm, slice_mm]
    aff = np.zeros((4, 4))
    aff[3, 3] = 1.0
    shape = []
    for col, (ax, sp) in enumerate(zip(order, spacing)):
        aff[ax, col] = sp
        aff[ax, 3] = lo[ax]
        shape.append(int(np.ceil((hi[ax] - lo[ax]) / sp)) + 1)
    return tuple(shape), aff


def corruptions(study: Volume, ref: Volume, idx: int, rng: np.random.Generator):
    """(kind, image, reference) variants of one T2W study and its reference gland map (same grid)."""
    x = study.array[0].astype(np.float32)
    k = review._thickest(study.affine)
    out = []
    if idx % 2 == 0:  # every other study (a reformat has ~3x the slices to segment): sagittal, coronal, ...
        grid = reformat(study, "sagittal" if idx % 4 == 0 else "coronal")
        out.append(("reformat", resample_to(study, grid), resample_to(ref, grid)))
    # Bias field: exp of a linear ramp along a random in-plane direction, 8x from one side to the other.
    ii = np.indices(x.shape, dtype=np.float32)
    ang = rng.uniform(0, 2 * np.pi)
    inplane = [a for a in range(3) if a != k]
    ramp = (np.cos(ang) * ii[inplane[0]] / x.shape[inplane[0]] + np.sin(ang) * ii[inplane[1]] / x.shape[inplane[1]])
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    out.append(("bias_field", study.with_array((x * np.exp(np.log(8.0) * (ramp - 0.5)))[None]), ref))
    med = float(np.median(x[x > 0.1 * np.percentile(x, 99.5)]))
    noisy = np.abs(x + rng.normal(0, 0.35 * med, x.shape) + 1j * rng.normal(0, 0.35 * med, x.shape))
    out.append(("noise", study.with_array(noisy.astype(np.float32)[None]), ref))
    if x.shape[k] >= 6:
        sl = [slice(None)] * 3
        sl[k] = slice(0, None, 3)
        aff = study.affine.copy()
        aff[:3, k] *= 3
        out.append(("thick_slices", Volume(x[tuple(sl)][None], aff, ("T2W",), study.case_id),
                    Volume(ref.array[0][tuple(sl)][None], aff, ("WG",), study.case_id)))
    # Off-centre crop: a window of 70 % of the in-plane FOV with the gland 20 % from one edge.
    wg = ref.array[0] > 0
    if wg.any():
        c = np.argwhere(wg).mean(axis=0)
        sl = [slice(None)] * 3
        shift = np.eye(4)
        for n, a in enumerate(inplane):
            size = int(0.7 * x.shape[a])
            frac = 0.2 if (idx + n) % 2 == 0 else 0.8
            start = int(np.clip(round(c[a] - frac * size), 0, x.shape[a] - size))
            sl[a] = slice(start, start + size)
            shift[a, 3] = start
        aff = study.affine @ shift
        out.append(("off_centre_crop", Volume(x[tuple(sl)][None], aff, ("T2W",), study.case_id),
                    Volume(ref.array[0][tuple(sl)][None], aff, ("WG",), study.case_id)))
    # Header flip anterior-posterior: the voxels stay, the affine says the anatomy is upside down.
    ap = max(inplane, key=lambda a: abs(study.affine[1, a]))
    aff = _flip_axis(study.affine, study.shape, ap)
    out.append(("flipped_header", Volume(study.array, aff, ("T2W",), study.case_id),
                Volume(ref.array, aff, ("WG",), study.case_id)))
    return out


def sequence_variants(b: dict, t2: Volume, ref: Volume):
    """Real ADC / DWI of the study given as T2W: on their own grid and resampled onto the T2 grid."""
    out = []
    for name, kind in (("adc", "adc_as_t2"), ("dwi", "dwi_as_t2")):
        p = b["dir"] / f"{name}.nii.gz"
        if not p.exists():
            continue
        v = read_nifti(p, "T2W", b["id"])
        if v.same_grid(t2):
            out.append((kind, v, ref))
        else:
            out.append((kind, v, resample_to(ref, v)))
            out.append((kind, resample_to(v, t2), ref))
    return out


def dicom_variants(data: Path, refs: dict):
    from mricore.dicom import read_dicom_series

    out = []
    root = data / "dicom/ProstateX-0000"
    ref = refs.get("prostatex/ProstateX-0000")
    if ref is None or not root.exists():
        return out
    for folder in sorted(root.glob("*t2tse[sc]*")):
        v = read_dicom_series(folder, "T2W", "prostatex/ProstateX-0000")
        out.append(("dicom_sag_cor", v, resample_to(ref, v)))
    return out


# ----------------------------------------------------------------------------- run

def predict(vol: Volume, members, cfg):
    src = Source(vol.case_id, ["T2W"], lambda channels, register: (vol, {}), [vol.case_id])
    _, result, _ = run_case(src, members, cfg, notify=False, accept=True)
    return result


def record(case: str, half: str, kind: str, vol: Volume, ref: np.ndarray | None, result, ref_kind: str) -> dict:
    pred = result.label > 0
    dsc = None if ref is None else float(dice(pred, ref > 0))
    if dsc is not None and np.isnan(dsc):
        dsc = 1.0  # both empty
    rev = result.info["review"]
    return {"case": case, "half": half, "kind": kind, "reference": ref_kind, "shape": list(vol.shape),
            "dsc_wg": dsc, "failure": None if dsc is None else bool(dsc < FAIL_DSC),
            "features": rev["features"], "shipped_verdict": rev["verdict"], "shipped_reasons": rev["reasons"]}


def measure_study(b: dict, n: int, half: str, members, cfg, rng: np.random.Generator) -> tuple[list[dict], Volume]:
    """(rows, reference) of base study `b`, the n-th of `base_studies`, in calibration half `half`: the
    uncorrupted study first, then each variant (`corruptions`, drawing from the shared `rng`, and
    `sequence_variants`), every one segmented by `members`. The reference is the study's gland label,
    or the members' own map where it has none."""
    t2 = read_nifti(b["dir"] / "t2.nii.gz", "T2W", b["id"])
    res = predict(t2, members, cfg)
    key, ref_kind = b["ref"]
    if key is None:
        ref = Volume(res.label[None].astype(np.uint8), t2.affine, ("WG",), b["id"])
    else:
        ref = read_label(b["dir"] / f"{key}.nii.gz", "WG", b["id"])
    rows = [record(b["id"], half, "normal", t2, ref.array[0], res, ref_kind)]
    for kind, vol, vref in corruptions(t2, ref, n, rng) + sequence_variants(b, t2, ref):
        rows.append(record(b["id"], half, kind, vol, vref.array[0], predict(vol, members, cfg), ref_kind))
    return rows, ref


def halves(studies: list[dict], seed: int = 0) -> dict[str, str]:
    rng = np.random.default_rng(seed)
    out = {}
    by_ds: dict[str, list[str]] = {}
    for s in studies:
        by_ds.setdefault(s["id"].split("/")[0], []).append(s["id"])
    flip = 0
    for ds in sorted(by_ds):
        ids = list(rng.permutation(by_ds[ds]))
        for n, i in enumerate(ids):
            out[str(i)] = "AB"[(n + flip) % 2]
        flip += len(ids)  # a one-study dataset does not always land in A
    return out


# ----------------------------------------------------------------------------- calibrate and score

def calibrate(rows: list[dict], half: str) -> dict:
    """The package's fit on `half` (mricore.review_limits) and the studies it used."""
    normal = calibration_set(rows, half)
    return {"limits": fit_limits(rows, half), "n_normal_studies": len(normal),
            "studies": sorted(r["case"] for r in normal)}


def review_of(r: dict, cfg: review.ReviewConfig, reference: dict) -> dict:
    f = r["features"]
    checks = review.input_checks(f, cfg) + review.output_checks(f, cfg, reference)
    return review.verdict(checks)


def score(rows: list[dict], half: str, cfg: review.ReviewConfig, reference: dict) -> dict:
    from mricore.metrics import roc_auc

    test = [r for r in rows if r["half"] == half]
    for r in test:
        v = review_of(r, cfg, reference)
        r["_verdict"], r["_score"], r["_reasons"] = v["verdict"], v["score"], v["reasons"]
        r["_all"] = max(c["excess"] for c in v["checks"])  # the first score: every check, input review too
    known = [r for r in test if has_outcome(r)]
    fails = [r for r in known if r["failure"]]
    normal = [r for r in known if r["kind"] == "normal" and not r["failure"]]
    flagged = lambda rs: sum(r["_verdict"] != "ok" for r in rs)  # noqa: E731
    per_kind = {}
    for kind in KINDS:
        rs = [r for r in test if r["kind"] == kind]
        if rs:
            per_kind[kind] = {"n": len(rs), "flagged": flagged(rs), "rejected": sum(r["_verdict"] == "reject" for r in rs),
                              "failures": sum(bool(r["failure"]) for r in rs),
                              "failures_flagged": sum(bool(r["failure"]) and r["_verdict"] != "ok" for r in rs)}
    labels = [bool(r["failure"]) for r in known]
    both = 0 < sum(labels) < len(labels)
    auc = roc_auc([r["_score"] for r in known], labels) if both else None
    auc_all = roc_auc([r["_all"] for r in known], labels) if both else None
    return {"half": half, "n_variants": len(test), "n_with_outcome": len(known), "n_failures": len(fails),
            "detection_rate": round(flagged(fails) / len(fails), 4) if fails else None,
            "failures_missed": [f"{r['case']} {r['kind']} (DSC {r['dsc_wg']:.2f})" for r in fails if r["_verdict"] == "ok"],
            "n_normal": len(normal), "false_alarm_rate": round(flagged(normal) / len(normal), 4) if normal else None,
            "false_alarms": [f"{r['case']}: {'; '.join(r['_reasons'])}" for r in normal if r["_verdict"] != "ok"],
            "non_failures_flagged": f"{flagged([r for r in known if not r['failure']])} of "
                                    f"{sum(not r['failure'] for r in known)}",
            "auc_failure_vs_not": None if auc is None else round(float(auc), 4),
            "auc_with_every_check_in_the_score": None if auc_all is None else round(float(auc_all), 4),
            "per_kind": per_kind}


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    add_data(ap)
    ap.add_argument("--limit", type=int, default=None, help="only the first N base studies (a quick look)")
    add_out(ap, RESULTS / "qa_bench.json")
    ap.add_argument("--rows", help="a JSON this script wrote: re-score its measured rows (features, DSC) "
                                   "without running the ensemble again (after a change of limits or score)")
    args = ap.parse_args(argv)
    data = args.data
    if not data.exists():
        sys.exit(f"{data}: data folder not found; fix: pass --data ../shared/data")
    t0 = time.perf_counter()
    cfg = load_ensemble_config(None)
    reference = load_reference()
    if args.rows:
        prior = json.loads(Path(args.rows).read_text())
        rows, half_of, n_studies = prior["rows"], prior["halves"], prior["n_studies"]
        return report(rows, half_of, n_studies, cfg, reference, args.out, prior["seconds"])
    members = read_members(cfg.members)
    studies = base_studies(data)[: args.limit]
    half_of = halves(studies)
    rows, refs = [], {}
    rng = np.random.default_rng(0)
    for n, b in enumerate(studies):
        study, refs[b["id"]] = measure_study(b, n, half_of[b["id"]], members, cfg, rng)
        rows += study
        print(f"[{time.perf_counter() - t0:6.0f} s] {b['id']}: normal DSC {study[0]['dsc_wg']}, "
              f"{len(study) - 1} variants", flush=True)
    for kind, vol, vref in dicom_variants(data, refs):
        rows.append(record("prostatex/ProstateX-0000", half_of.get("prostatex/ProstateX-0000", "A"), kind, vol,
                           vref.array[0], predict(vol, members, cfg), "silver"))
    return report(rows, half_of, len(studies), cfg, reference, args.out, round(time.perf_counter() - t0, 1))


def report(rows, half_of, n_studies, cfg, reference, out_path, seconds) -> int:
    results = {}
    for cal, test in (("A", "B"), ("B", "A")):
        c = calibrate(rows, cal)
        rcfg = replace(cfg.review, **c["limits"])
        results[f"calibrate_{cal}_test_{test}"] = {"calibration": c, "held_out": score(rows, test, rcfg, reference),
                                                   "in_sample": score(rows, cal, rcfg, reference)}
    shipped = calibrate(rows, "A")["limits"]
    p12 = [r for r in rows if r["case"].startswith("promise12/") and r["kind"] == "normal"]
    rcfg = replace(cfg.review, **shipped)
    out = {"command": command("qa_bench"), "failure_rule": f"WG DSC < {FAIL_DSC} against the reference",
           "score_definition": "mricore.review.failure_score", "margin": MARGIN, "n_studies": n_studies,
           "n_variants": len(rows),
           "halves": half_of, "shipped_limits": shipped, "review_config": asdict(rcfg), **results,
           "promise12": [{"dsc_wg": r["dsc_wg"], **{k: v for k, v in review_of(r, rcfg, reference).items()
                                                     if k in ("verdict", "score", "reasons")}} for r in p12],
           "philips_normal": {r["case"]: {k: v for k, v in review_of(r, rcfg, reference).items()
                                          if k in ("verdict", "score", "reasons")}
                              for r in rows if r["case"].startswith("philips/") and r["kind"] == "normal"},
           "rows": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows],
           "seconds": seconds}
    write_result(out, out_path)
    for name, res in results.items():
        h = res["held_out"]
        print(f"{name}: held-out detection {h['detection_rate']} of {h['n_failures']} failures, false alarms "
              f"{h['false_alarm_rate']} of {h['n_normal']} normal studies, AUC {h['auc_failure_vs_not']}")
    print(f"shipped limits (half A): {shipped}")
    print(f"wrote {out_path} (measured in {seconds} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
