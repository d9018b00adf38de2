"""What an MR series is (T2W, ADC, DWI or other) and which series of a study a zonal model reads.

The header says what the scanner made, the voxels confirm it:
- header (`header_facts`, `b_value_of`): SeriesDescription (or ProtocolName), ImageType (ADC, TRACEW,
  DIFFUSION), the diffusion b-value (DiffusionBValue, else the Siemens, GE or Philips private tag,
  else a Siemens sequence name such as "*ep_b800t"), the orientation of the slice normal
  (ImageOrientationPatient), echo time and scanning sequence for a T2W without a telling name;
- voxels (`classify` with the review's input features, mricore.review.input_features/input_checks):
  the slice normal from the affine, the in-plane spacing (a 1.6-2 mm grid is a diffusion grid, not a
  T2W) and, where fitted limits are given, the dark-tissue share and sharpness of a T2W. An axial T2W
  that the review's input checks would reject is not chosen, with the check as the reason.

`choose` picks per study the axial T2W (finest in-plane grid, then most slices, then the latest
series), the ADC (latest) and the DWI with the highest b-value (a calculated high-b image included),
and says for every other series why it was left out. Classes: T2W, ADC, DWI, other; roles: t2, adc, dwi.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from .review import input_checks, input_features
from .review_limits import ReviewConfig

KINDS = ("T2W", "ADC", "DWI", "other")
ROLES = {"t2": "T2W", "adc": "ADC", "dwi": "DWI"}  # output file stem -> class
# Private b-value tags: (group, private creator, element offset); values may be bytes or numbers.
_PRIVATE_B = ((0x0019, "SIEMENS MR HEADER", 0x0C), (0x0043, "GEMS_PARM_01", 0x39),
              (0x2001, "Philips Imaging DD 001", 0x03))
_GE_B_OFFSET = 10**9  # GE stores b + 1e9 in its first value on some software versions


def _words(text: str) -> str:
    """Lower case, every non-alphanumeric run a space: "ep2d_diff_tra_ADC" -> " ep2d diff tra adc "."""
    return " " + re.sub(r"[^a-z0-9]+", " ", text.lower()) + " "


def _number(value) -> float | None:
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("ascii", "ignore")
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else None
    try:
        return float(str(value).strip().split("\\")[0])
    except (TypeError, ValueError):
        return None


def b_value_of(ds) -> float | None:
    """The diffusion b-value (s/mm^2) of one slice's header, or None when it has none (module docstring)."""
    b = _number(ds.get("DiffusionBValue")) if "DiffusionBValue" in ds else None
    for group, creator, offset in _PRIVATE_B:
        if b is not None:
            break
        try:
            b = _number(ds.private_block(group, creator)[offset].value)
        except (KeyError, ValueError):
            continue
        if b is not None and b >= _GE_B_OFFSET:
            b -= _GE_B_OFFSET
    if b is None:
        m = re.search(r"_b(\d+)t?$", str(ds.get("SequenceName", "")))
        b = float(m.group(1)) if m else None
    return b


def orientation_of(iop) -> str:
    """axial, coronal or sagittal: the patient axis the slice normal lies nearest; "unknown" without one."""
    try:
        v = np.array([float(x) for x in iop], dtype=np.float64)
    except (TypeError, ValueError):
        return "unknown"
    if v.shape != (6,):
        return "unknown"
    normal = np.abs(np.cross(v[:3], v[3:]))
    return ("sagittal", "coronal", "axial")[int(np.argmax(normal))] if normal.any() else "unknown"


def header_facts(ds) -> dict:
    """What the classifier reads from a series' header (one slice); any attribute may be absent."""
    def text(keyword):
        return str(ds.get(keyword, "") or "").strip()

    return {"description": text("SeriesDescription") or text("ProtocolName"),
            "image_type": [str(t) for t in (ds.get("ImageType") or [])],
            "modality": text("Modality"), "series_number": _number(ds.get("SeriesNumber")),
            "orientation": orientation_of(ds.get("ImageOrientationPatient")),
            "echo_time_ms": _number(ds.get("EchoTime")), "scanning_sequence": text("ScanningSequence"),
            "burned_in": text("BurnedInAnnotation").upper() == "YES"}


def header_class(facts: dict, b_value: float | None) -> tuple[str, list[str]]:
    """The class the header gives, with the evidence in words (module docstring)."""
    words, types = _words(facts["description"]), {t.upper() for t in facts["image_type"]}
    if facts["modality"] and facts["modality"] != "MR":
        return "other", [f"modality {facts['modality']}"]
    if "ADC" in types or re.search(r" (adc|apparent diffusion)", words):
        return "ADC", ["ImageType ADC" if "ADC" in types else f"description '{facts['description']}' names ADC"]
    if types & {"FA", "EADC", "TENSOR"}:
        return "other", [f"ImageType {sorted(types & {'FA', 'EADC', 'TENSOR'})[0]}"]
    if types & {"TRACEW", "DIFFUSION"} or b_value is not None or re.search(r" (dwi|diff|diffusion|trace|bval|b\d+) ",
                                                                           words):
        why = [f"ImageType {'/'.join(sorted(types & {'TRACEW', 'DIFFUSION'}))}"] if types & {"TRACEW", "DIFFUSION"} else []
        why += [f"b-value {b_value:g}"] if b_value is not None else []
        why += ["description names a calculated b-value image"] if re.search(r"calc|bval", words) else []
        return "DWI", why or [f"description '{facts['description']}' names diffusion"]
    if re.search(r" t2w? ", words) and not re.search(r" t2 ?(map|star) ", words):
        return "T2W", [f"description '{facts['description']}' names T2"]
    te = facts["echo_time_ms"]
    if te is not None and te >= 60 and "SE" in facts["scanning_sequence"].split("\\"):
        return "T2W", [f"spin echo with TE {te:g} ms"]
    return "other", [f"description '{facts['description']}' names no T2W, ADC or DWI"]


@dataclass
class SeriesClass:
    """One series' class and its evidence. `axial_t2w` is set for a T2W: whether the voxels confirm
    an axial T2W a zonal model can read (the review's input checks pass); `checks` their reasons."""

    kind: str
    orientation: str
    b_value: float | None
    evidence: list[str] = field(default_factory=list)
    features: dict = field(default_factory=dict)
    axial_t2w: bool = False
    checks: list[str] = field(default_factory=list)


def classify(facts: dict, b_value: float | None, image: np.ndarray | None, affine: np.ndarray | None,
             limits: ReviewConfig | None = None) -> SeriesClass:
    """Class of one series from its header facts, b-value and (when read) its voxels (I, J, K) and RAS
    affine; `limits` the review limits (ReviewConfig(): geometry only, content n/a)."""
    kind, evidence = header_class(facts, b_value)
    out = SeriesClass(kind, facts["orientation"], b_value, evidence)
    if image is None:
        return out
    if kind != "T2W" or facts["orientation"] not in ("axial", "unknown"):
        f = geometry(affine, image.shape)  # the content features judge only a would-be axial T2W
        evidence.append(f"voxels: slice normal {f['slice_tilt_deg']:.0f} deg from superior, in-plane "
                        f"{f['inplane_mm']:.2f} mm")
        out.features = {k: round(float(v), 4) for k, v in f.items()}
        return out
    f = input_features(image, affine)
    out.features = {k: round(float(v), 4) for k, v in f.items()}
    evidence.append(f"voxels: slice normal {f['slice_tilt_deg']:.0f} deg from superior, in-plane "
                    f"{f['inplane_mm']:.2f} mm, dark share {f['dark_fraction']:.2f}, sharpness {f['sharpness']:.2f}")
    failed = [c for c in input_checks(f, limits or ReviewConfig()) if c.verdict == "reject"]
    out.checks = [c.reason() for c in failed]
    out.axial_t2w = not failed
    return out


def geometry(affine: np.ndarray, shape) -> dict:
    """The geometry part of the review's input features (mricore.review.input_features), from the
    affine alone: slice tilt from superior (deg), in-plane and slice spacing (mm)."""
    sp = np.linalg.norm(affine[:3, :3], axis=0)
    k = int(len(sp) - 1 - np.argmax(np.round(sp, 3)[::-1]))  # the coarsest axis, the last on a tie
    normal = affine[:3, k] / sp[k]
    return {"slice_tilt_deg": float(np.degrees(np.arccos(min(1.0, abs(normal[2]))))),
            "inplane_mm": float(max(sp[a] for a in range(3) if a != k)), "slice_mm": float(sp[k]),
            "coverage_mm": float(shape[k] * sp[k])}


def _t2_rank(c: SeriesClass, number) -> tuple:
    return (-c.features.get("inplane_mm", 99.0), c.features.get("coverage_mm", 0.0), number or 0)


def choose(classes: list[SeriesClass], numbers: list, excluded: list[str]) -> tuple[dict[str, int], list[str]]:
    """The series index per role (t2, adc, dwi; a role without a candidate is absent) and, per series,
    why it was left out ("" for a chosen one). `numbers` are the series numbers (None allowed);
    `excluded[i]` is a reason decided before (burned-in annotation, unreadable) or ""."""
    pick: dict[str, int] = {}
    ok = [i for i in range(len(classes)) if not excluded[i]]
    t2 = [i for i in ok if classes[i].kind == "T2W" and classes[i].axial_t2w]
    if t2:
        pick["t2"] = max(t2, key=lambda i: _t2_rank(classes[i], numbers[i]))
    adc = [i for i in ok if classes[i].kind == "ADC" and classes[i].orientation != "sagittal"]
    if adc:
        pick["adc"] = max(adc, key=lambda i: numbers[i] or 0)
    dwi = [i for i in ok if classes[i].kind == "DWI" and classes[i].orientation != "sagittal"]
    if dwi:
        pick["dwi"] = max(dwi, key=lambda i: (classes[i].b_value or -1.0, numbers[i] or 0))
    chosen = {i: role for role, i in pick.items()}
    return pick, [excluded[i] or ("" if i in chosen else _why_not(classes[i], classes, pick))
                  for i in range(len(classes))]


def _why_not(c: SeriesClass, classes: list[SeriesClass], pick: dict[str, int]) -> str:
    if c.kind == "other":
        return "not a T2W, ADC or DWI"
    if c.kind == "T2W" and not c.axial_t2w:
        return ("not axial: " + c.orientation) if c.orientation not in ("axial", "unknown") else \
            "voxels do not confirm an axial T2W: " + "; ".join(c.checks)
    role = {v: k for k, v in ROLES.items()}[c.kind]
    if role not in pick:
        return f"not axial: {c.orientation}"
    other = classes[pick[role]]
    if c.kind == "DWI" and (c.b_value or -1.0) < (other.b_value or -1.0):
        return f"b-value {c.b_value if c.b_value is None else f'{c.b_value:g}'} below the chosen DWI's {other.b_value:g}"
    return f"another {c.kind} series was chosen"
