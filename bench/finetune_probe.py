"""One member family, one fold: does a training change help where it is aimed? (issue 37, items 1 and 3)

Each arm fine-tunes the shipped fold-F 2D DynUNet (`--init-from ensemble/models/default/dynunet2d_long_fold{F}`)
for the same short schedule at half the learning rate, with the TAPS teacher glands off in every arm (they
are not on this machine), so the arms differ only in what they name:
- control: configs/bundle/coil_finetune.yaml with the three acquisition augmentations off;
- coil: the same file as it is (endorectal-coil gain, low SNR, 1.5 T-like contrast; segment.acquisition);
- shapes: control plus the expert-shape pairs of `segment shape-pairs` (runs/shape_pairs/datalist.json) as
  extra training studies (each pair's patient is its donor's, so the fold guard keeps held-out donors out).
Each run folder is scored as a one-member ensemble behind the shipped locator (the bundle's ensemble.yaml
with `--set members=[DIR]`), as `ensemble predict` runs it: PROMISE12 Case00 (endorectal coil, never trained
on) WG DSC, and the fold's held-out expert patients (from the member's splits.json, scored by nothing else)
WG / TZ / PZ DSC; the shipped member itself is scored the same way for reference.

RULE (fixed in this file before any arm was scored; one fold of one family, so no arm ships from it: a
pass says the change is worth training the bundle's families with):
- coil passes if its Case00 WG DSC is at least the control's + 0.10 and no zone's held-out mean is more
  than 0.02 below the control's;
- shapes passes if its held-out PZ mean is at least the control's + 0.03 and neither WG nor TZ is more
  than 0.02 below the control's.

    python -m bench.finetune_probe --runs control=runs/bundle/ft_control/fold_0 coil=... shapes=... --fold 0
"""

from __future__ import annotations

import json
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

from bench.common import ENSEMBLE, RESULTS, ROOT, add_data, add_out, command, parser, write_result
from mricore.io import read_label
from mricore.metrics import dice
from mricore.zones import SELECTORS

LOCATOR_CONFIG = ROOT / "ensemble" / "models" / "default" / "ensemble.yaml"  # the bundle (PyTorch members), its locator
ZONES = tuple(SELECTORS)  # WG, TZ, PZ
RULE = {"coil": "Case00 WG >= control + 0.10 and no zone's held-out mean below control - 0.02",
        "shapes": "held-out PZ >= control + 0.03 and WG, TZ not below control - 0.02"}


def predict(member: Path, t2: Path, out: Path) -> Path:
    """The one-member ensemble behind the shipped locator on `t2` -> its zones.nii.gz."""
    subprocess.run([str(ENSEMBLE), "predict", str(t2), "--config", str(LOCATOR_CONFIG), "-o", str(out), "--force",
                    "--set", f"members=[{member.resolve()}]"], check=True, stdout=subprocess.DEVNULL)
    return out / "zones.nii.gz"


def held_out(member: Path, fold: int) -> list[str]:
    """The fold's held-out expert cases, as the member's splits.json lists them."""
    splits = json.loads((member / "splits.json").read_text())
    return next(s["val"] for s in splits if s["fold"] == fold)


@lru_cache(maxsize=None)
def cases_of(data: Path) -> dict:
    """{(dataset, case id): Case} of the data folder (mricore.datasets: its files and labels)."""
    from mricore.datasets import load_dataset

    return {(c.dataset, c.case_id): c for c in load_dataset(data)}


def expert_case(data: Path, case_id: str):
    return next(c for (d, i), c in cases_of(data).items() if i == case_id and d in ("prostate158", "i2cvb"))


def score(member: Path, fold: int, data: Path, work: Path) -> dict:
    """Case00 WG DSC and the held-out cases' zone DSCs of one member folder."""
    c00 = cases_of(data)[("promise12", "Case00")]
    pred = read_label(predict(member, c00.images["T2W"].path, work / "case00")).array[0]
    result = {"case00_wg": round(float(dice(pred > 0, read_label(c00.labels["wg"].path).array[0] > 0)), 4),
              "held_out": {}}
    for case_id in held_out(member, fold):
        case = expert_case(data, case_id)
        pred = read_label(predict(member, case.images["T2W"].path, work / case_id)).array[0]
        ref = read_label(case.labels["zones"].path).array[0]
        result["held_out"][case_id] = {z: round(float(dice(SELECTORS[z](pred), SELECTORS[z](ref))), 4) for z in ZONES}
    result["held_out_mean"] = {z: round(sum(c[z] for c in result["held_out"].values()) / len(result["held_out"]), 4)
                               for z in ZONES}
    return result


def verdicts(arms: dict) -> dict:
    """The RULE applied to each arm that has a control to compare with."""
    if "control" not in arms:
        return {}
    c, out = arms["control"], {}
    if "coil" in arms:
        a = arms["coil"]
        out["coil"] = bool(a["case00_wg"] >= c["case00_wg"] + 0.10
                           and all(a["held_out_mean"][z] >= c["held_out_mean"][z] - 0.02 for z in ZONES))
    if "shapes" in arms:
        a = arms["shapes"]
        out["shapes"] = bool(a["held_out_mean"]["PZ"] >= c["held_out_mean"]["PZ"] + 0.03
                             and all(a["held_out_mean"][z] >= c["held_out_mean"][z] - 0.02 for z in ("WG", "TZ")))
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = parser(__doc__)
    ap.add_argument("--runs", nargs="+", required=True, help="NAME=RUN_FOLDER for each arm (control, coil, shapes)")
    ap.add_argument("--fold", type=int, default=0)
    add_data(ap)
    add_out(ap, RESULTS / "finetune_probe.json")
    args = ap.parse_args(argv)
    runs = dict(r.split("=", 1) for r in args.runs)
    runs = {"shipped": str(ROOT / "ensemble" / "models" / "default" / f"dynunet2d_long_fold{args.fold}"), **runs}
    work = ROOT / "runs" / "finetune_probe"
    arms = {}
    for name, folder in runs.items():
        arms[name] = score(Path(folder), args.fold, args.data, work / name)
        print(name, json.dumps(arms[name]), flush=True)
    result = {"command": command("finetune_probe", argv), "fold": args.fold, "rule": RULE,
              "runs": {k: str(Path(v)) for k, v in runs.items()}, "arms": arms, "passes": verdicts(arms)}
    write_result(result, args.out)
    print("passes:", result["passes"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
