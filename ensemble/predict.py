"""`ensemble predict`: one case (a volume, several channel files, a case folder or a DICOM series
folder) or a batch (a dataset folder or a datalist) through an ensemble of segmenters.

Outputs per case in OUT (batch: OUT/<case_id>/), all on the input's exact grid, affine and header
(qform/sform copied from the reference channel, T2W when present), each written atomically:
- zones.nii.gz: uint8 0 background, 1 TZ, 2 PZ (WG = label > 0 = TZ ∪ PZ);
- uncertainty.nii.gz: float32 4D, two volumes along the 4th axis: [..., 0] normalised entropy (0..1)
  of the combined probabilities, [..., 1] fraction of members disagreeing with the combined label;
- probabilities.nii.gz (optional): float32 4D, background/TZ/PZ along the 4th axis (float16 was
  asked for, but NIfTI-1 has no half-float type: nibabel refuses to write one);
- zones.json: the channels given (names, never paths), members used and skipped (with reasons), method,
  weights, volumes in mL, uncertainty
  (entropy and member disagreement in the gland), the review verdict (ok / review / reject) with its
  reasons and every input and output check (mricore.review), alignment of the inputs, timings per stage,
  software version;
- ensemble.yaml: the resolved config (member paths absolute);
- report.html and overlay.png (optional): volumes, review verdict, uncertainty, members, three-plane
  overlay of the zones and of the member disagreement;
- seg.dcm (DICOM series input): DICOM-SEG with TZ and PZ segments (SNOMED CT) referencing the source
  series, frames on the source slices, de-identified by the DICOM PS3.15 Basic Profile unless
  `identity` keeps it (ensemble.dicomseg.Identity: --keep-identity, --key-file).
No output carries a patient identifier or an input's path (the member model folders in zones.json and
ensemble.yaml are the software's own, kept to re-run it): a DICOM series' case id names its images, not
its folder (mricore.dicom.series_case_id), and seg.dcm is the one file that can keep the source identity.
mricore.results holds the file names, the zones.json record (`ZonesRecord`) and the folder layout.
Nothing is written until every check has passed (config, members loaded, inputs, output location);
existing outputs need force=True. An input that is not an axial T2W study (mricore.review input checks,
judged on the voxels and the affine before any network runs) is refused unless force=True. A case's
files appear all together or not at all (mricore.results.write_case): they are written into a hidden
staging folder that is renamed into place at the end and removed on any error, SIGINT or SIGTERM.
A batch goes on past a failing case, lists it in summary.csv and summary.json, and ends with exit
code 2; the cases that completed stay complete.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from mricore.errors import InputError

from .config import EnsembleConfig, load_ensemble_config
from .members import Member, channel_order, read_members, split_available

# NIfTI files with an unknown stem (and DICOM folders) take these names in the order given.
POSITIONAL_CHANNELS = ["T2W", "ADC", "DWI"]


@dataclass
class Source:
    """A case before reading: its id, the channel names it offers, and a reader for some of them."""

    case_id: str
    available: list[str]
    read: Callable  # (channels, register) -> (Volume, alignment info {channel: {...}})
    inputs: list[str]  # the channel names offered (zones.json `inputs`: names, never paths)
    case_images: dict = field(default_factory=dict)  # channel -> mricore.datasets.ImageRef

    @property
    def dicom(self) -> Path | None:
        """The reference channel's DICOM series folder (T2W first), for seg.dcm; None for NIfTI input."""
        if not self.case_images:
            return None
        ref = self.case_images.get("T2W") or next(iter(self.case_images.values()))
        return ref.path if ref.path.is_dir() else None


def source_from_case(case) -> Source:
    from mricore.datasets import load_case

    def read(channels, register):
        image, _, info = load_case(case, channels, register=register, optional=True)
        return image, info["alignment"]
    return Source(case.case_id, sorted(case.images), read, list(case.images), case_images=dict(case.images))


def source_from_inputs(inputs: list[str | Path]) -> Source:
    """What a user typed for one case (mricore.datasets.image_from_inputs, as every command reads it):
    NIfTI file(s), a case folder, or DICOM series folder(s). Files named t2/adc/dwi(.nii.gz) are named
    by their stem; others, and DICOM folders, take T2W, ADC, DWI in the order given. A DICOM reference
    series (the first channel present, T2W first) also gets seg.dcm."""
    from mricore.datasets import image_from_inputs

    paths = [Path(p) for p in inputs]
    if not paths:
        raise InputError("INPUT", "give at least one input", "none", "pass a volume, case folder or DICOM folder")
    return source_from_case(image_from_inputs(paths, POSITIONAL_CHANNELS))


def resolve_config(config) -> EnsembleConfig:
    """The config, its locator (if any) loaded and checked before any input is read. A config built in
    Python takes the fitted review limits it leaves out from the bundle, as a YAML config does."""
    from .config import with_bundle_limits

    cfg = with_bundle_limits(config) if isinstance(config, EnsembleConfig) else load_ensemble_config(config)
    if cfg.locator:
        from .members import read_locator

        read_locator(str(cfg.locator))
    return cfg


def plan_members(source: Source, members: list[Member], cfg: EnsembleConfig, notify: bool):
    """The members that can run on `source` and those skipped; every error before any reading, and the
    skip notices only once the case is known to run."""
    used, skipped = split_available(members, source.available)
    if not used:
        need = sorted({c for m in members for c in m.channels})
        raise InputError(source.case_id, "no ensemble member can run on the channels given",
                         ", ".join(source.available) or "none", f"provide one of the channels {need}")
    if cfg.method == "weighted":
        from .engine import member_weights

        member_weights(cfg, used)  # weight errors before any reading
    if notify:
        for s in skipped:
            print(f"notice: skipping member {s['member']}: {s['reason']}", file=sys.stderr)
    return used, skipped


def check_input(image, case_id: str, cfg: EnsembleConfig, accept: bool = False) -> dict:
    """The input review of a read case (mricore.review.input_checks on its T2W channel). A `reject` (not an
    axial T2W study) raises InputError naming the failed checks unless `accept` (--force)."""
    from mricore.review import input_checks, input_features, verdict

    if "T2W" not in image.channels:
        return verdict([])
    features = input_features(image.channel("T2W"), image.affine)
    checks = input_checks(features, cfg.review)
    review = verdict(checks, features)
    if review["verdict"] == "reject" and not accept:
        failed = "; ".join(c.reason() for c in checks if c.verdict == "reject")
        raise InputError(case_id, "the T2W input is not an axial T2W study", failed,
                         "give the axial T2W series (not ADC/DWI, sagittal or coronal), or pass --force to "
                         "segment it anyway")
    return review


@dataclass
class ReadCase:
    """A case read and checked, ready for the networks."""

    source: Source
    image: object       # Volume on the reference grid
    alignment: dict
    input_review: dict
    used: list
    skipped: list
    read_s: float


def read_case(source: Source, members: list[Member], cfg: EnsembleConfig, notify: bool = True,
              accept: bool = False) -> ReadCase:
    """Read `source` once for the members that can run and check it (`check_input`); no network runs."""
    from mricore.datasets import require_study

    used, skipped = plan_members(source, members, cfg, notify)
    t = time.perf_counter()
    image, alignment = source.read(channel_order(used), cfg.register)
    require_study(image)
    input_review = check_input(image, source.case_id, cfg, accept)
    return ReadCase(source, image, alignment, input_review, used, skipped, time.perf_counter() - t)


def run_case(source: Source, members: list[Member], cfg: EnsembleConfig, notify: bool = True,
             accept: bool = False):
    """Read `source` once, check it (`check_input`), run the usable members, combine.
    Returns (image, EnsembleResult, skipped); the result's info["review"] holds the input and output
    checks and their verdict."""
    return infer_case(read_case(source, members, cfg, notify, accept), cfg)


def infer_case(case: ReadCase, cfg: EnsembleConfig):
    """The networks and the combination for a case from `read_case`: (image, EnsembleResult, skipped)."""
    from mricore.results import alignment_record
    from mricore.review import merge

    from .engine import run_ensemble

    image, read_s = case.image, case.read_s
    result = run_ensemble(image, case.used, cfg)
    result.info["review"] = merge(case.input_review, result.info["review"])
    result.info["timings_s"] = {"read_align": round(read_s, 4), **result.info["timings_s"]}
    result.info["alignment"] = alignment_record(image.channels[0], case.alignment)
    return image, result, case.skipped


def write_outputs(final: Path, image, result, skipped: list[dict], source: Source, cfg: EnsembleConfig,
                  probabilities: bool, report: bool, identity=None):
    """Write every output of one case into `final`, all together or none (mricore.results.write_case;
    see module docstring); returns the zones.json record. `identity`: seg.dcm's
    (ensemble.dicomseg.Identity, checked by the caller; None: de-identified with a random key)."""
    from mricore.results import ZonesRecord, grid_record, write_case

    if not (np.all(np.isfinite(result.prob)) and np.all(np.isfinite(result.entropy))):
        raise InputError(source.case_id, "the combined probabilities must be finite", "NaN/Inf values",
                         "check the member weights and the input image")
    # Every key of the engine's info is a ZonesRecord field: a new one gets its field there.
    record = ZonesRecord(case_id=source.case_id, inputs=source.inputs, grid=grid_record(image),
                         members_skipped=skipped, **result.info)

    def extra(out: Path, record: ZonesRecord) -> None:
        _write_files(out, image, result, source, cfg, (probabilities, report, identity), record)
    return write_case(final, image, result.label, record, extra)


def _write_files(out: Path, image, result, source: Source, cfg: EnsembleConfig, options: tuple, record) -> None:
    """The case's files besides zones.nii.gz and zones.json, into the staging folder `out`;
    `options`: (probabilities, report, identity) as `write_outputs` takes them."""
    from mricore import results
    from mricore.config import save_config
    from mricore.io import write_nifti

    probabilities, report, identity = options
    unc = np.stack([result.entropy, result.disagreement], axis=-1)
    write_nifti(unc, image, out / results.UNCERTAINTY_NII, dtype=np.float32, force=True)
    if probabilities:
        # float32, not float16: NIfTI-1 has no half-float type (nibabel refuses to write one).
        write_nifti(result.prob.transpose(1, 2, 3, 0), image, out / results.PROBABILITIES_NII,
                    dtype=np.float32, force=True)
    save_config(cfg, out / results.CONFIG_YAML)
    if source.dicom is not None:
        from .dicomseg import Identity, write_dicom_seg

        write_dicom_seg(result.label, image.affine, source.dicom, out / results.SEG_DCM,
                        identity=identity or Identity())
    if report:
        from .report import overlay_png, write_predict_report

        png = overlay_png(image.array[0], result.label, image.affine)
        write_predict_report(out / results.REPORT_HTML, image, result.label, record, result.disagreement, png,
                             force=True)
        (out / results.OVERLAY_PNG).write_bytes(png)


def predict(inputs, out_dir, config=None, force: bool = False, probabilities: bool | None = None,
            report: bool = False, notify: bool = True, members: list[Member] | None = None, identity=None):
    """Run the ensemble on one case and write its outputs to `out_dir`; returns the zones.json record
    (mricore.results.ZonesRecord).

    inputs: a path or list of paths (volume, channel files, case folder, DICOM series folder(s)).
    config: an EnsembleConfig, a YAML path, or None for the bundled ensemble.
    probabilities: write probabilities.nii.gz (None: as the config says).
    members: the config's members already loaded (`read_members`), as a server keeps them.
    identity: seg.dcm's (ensemble.dicomseg.Identity); None: de-identified with a random key.
    Raises UserError subclasses (nothing written) for bad config, members, inputs, key file or
    existing outputs.
    """
    from mricore.outputs import check_output_dir
    from mricore.results import check_case

    cfg = resolve_config(config)
    if identity is not None:
        identity.check()
    out = check_output_dir(out_dir)
    check_case(out, force)
    members = read_members(cfg.members) if members is None else members
    source = source_from_inputs([inputs] if isinstance(inputs, (str, Path)) else list(inputs))
    image, result, skipped = run_case(source, members, cfg, notify, accept=force)  # plans before reading
    probs = cfg.probabilities if probabilities is None else probabilities
    return write_outputs(out, image, result, skipped, source, replace(cfg, probabilities=probs), probs, report,
                         identity)
