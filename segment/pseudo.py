"""Self-training labels: a teacher's whole gland, split into zones where an ensemble is confident.

The teacher studies (`data.teacher`: unlabelled/ and philips/, TAPS's whole glands) say where the
gland is but not which zone. An ensemble's probabilities on the same studies (`ensemble predict
DATALIST --probabilities`) fill in the zones, voxel by voxel, where it is confident:

    inside the teacher's gland:  q = p(TZ) / (p(TZ) + p(PZ))
        TZ (1)             where q >= min_conf
        PZ (2)             where q <= 1 - min_conf
        GLAND_UNKNOWN (3)  elsewhere (the partial-label loss leaves its zone open, as before)
    outside it:            background (0): the teacher keeps the final word on the gland

and the result is a `zones_teacher` label (segment.data.TEACHER_ZONES) in a new datalist. For honest
cross-validation each fold's labels come from that fold's members only, which never saw its held-out
patients; `data.teacher` takes the fold's datalist through a `{fold}` in its path.

Example (fold 0 of the bundle; `make bundle-pseudo` runs every fold):
    ensemble predict runs/teacher/datalist.json --probabilities -o runs/pseudo/fold_0/pred \\
        --set "members=[runs/bundle/unet2d_long/fold_0,runs/bundle/dynunet2d_long/fold_0]"
    segment pseudo-label --predictions runs/pseudo/fold_0/pred --teacher runs/teacher/datalist.json \\
        -o runs/pseudo/fold_0/labels
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mricore.datasets import load_dataset
from mricore.errors import InputError
from mricore.io import load_nifti_image, read_label, write_nifti
from mricore.outputs import check_absent, replaced_dir, write_json

from .data import GLAND_UNKNOWN, TEACHER_LABEL, TEACHER_ZONES


def pseudo_zones(prob: np.ndarray, gland: np.ndarray, min_conf: float) -> np.ndarray:
    """prob (I, J, K, 3) background/TZ/PZ; gland (I, J, K) bool -> uint8 zones 0/1/2/GLAND_UNKNOWN.

    >>> p = np.array([[[[.1, .85, .05], [.1, .5, .4], [.9, .05, .05]]]])  # one row of 3 voxels
    >>> pseudo_zones(p, np.array([[[True, True, False]]]), 0.9).tolist()
    [[[1, 3, 0]]]
    """
    tz, pz = prob[..., 1], prob[..., 2]
    q = tz / np.maximum(tz + pz, 1e-6)
    out = np.where(gland, GLAND_UNKNOWN, 0).astype(np.uint8)
    out[gland & (q >= min_conf)] = 1
    out[gland & (q <= 1 - min_conf)] = 2
    return out


def write_pseudo_labels(predictions: str | Path, teacher: str | Path, out: str | Path, min_conf: float = 0.9,
                        force: bool = False) -> list[dict]:
    """One `zones_teacher` map per teacher study (from `predictions`/<case>/probabilities.nii.gz) and
    `out`/datalist.json listing them; returns per-study label shares. All or nothing."""
    from mricore.results import PROBABILITIES_NII, case_dir

    if not 0.5 < min_conf <= 1.0:
        raise InputError("--min-conf", "must be in (0.5, 1]: a zone needs more than half of the gland's probability",
                         min_conf, "e.g. 0.9")
    predictions, out = Path(predictions), Path(out)
    cases = [c for c in load_dataset(teacher) if TEACHER_LABEL in c.labels]
    if not cases:
        raise InputError(teacher, f"no study with a teacher's whole gland ('{TEACHER_LABEL}')", 0,
                         "pass the datalist of bench/peer_taps.py --teacher")
    probs = {c.case_id: case_dir(predictions, c.case_id, batch=True) / PROBABILITIES_NII for c in cases}
    missing = [cid for cid, p in probs.items() if not p.exists()]
    if missing:
        raise InputError(predictions, "needs <case>/probabilities.nii.gz of every teacher study",
                         ", ".join(missing[:3]),
                         "run ensemble predict on the teacher datalist with --probabilities")
    check_absent([out], force)
    rows, stats = [], []
    with replaced_dir(out) as stage:  # the whole folder at once: no map of an earlier run is left
        for c in cases:
            gland_vol = read_label(c.labels[TEACHER_LABEL].path)
            img = load_nifti_image(probs[c.case_id])
            if img.shape != gland_vol.shape + (3,) or not np.allclose(img.affine, gland_vol.affine, atol=1e-3):
                raise InputError(probs[c.case_id], "probabilities (background, TZ, PZ) must lie on the teacher "
                                 "gland's grid", f"shape {img.shape} vs {gland_vol.shape}",
                                 "predict the same T2W studies")
            zones = pseudo_zones(np.asarray(img.dataobj, np.float32), gland_vol.array[0] > 0, min_conf)
            name = f"{c.case_id}_zones_teacher.nii.gz"
            write_nifti(zones, gland_vol, stage / name)
            gland = max(int((zones > 0).sum()), 1)
            stats.append({"case_id": c.case_id, "TZ": round(float((zones == 1).sum()) / gland, 4),
                          "PZ": round(float((zones == 2).sum()) / gland, 4),
                          "unknown": round(float((zones == GLAND_UNKNOWN).sum()) / gland, 4)})
            rows.append({"patient_id": c.patient_id, "case_id": c.case_id, "dataset": c.dataset,
                         "T2W": os.path.relpath(c.images["T2W"].path.resolve(), out.resolve()),
                         TEACHER_ZONES: name})
        write_json(rows, stage / "datalist.json")
        write_json({"min_conf": min_conf, "predictions": str(predictions), "teacher": str(teacher),
                    "share_of_gland": stats}, stage / "pseudo_labels.json")
    return stats
