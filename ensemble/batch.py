"""`ensemble predict DATASET`: a cohort, case by case into `OUT/<case_id>/`, with reading and writing
overlapped with the networks, and spread over processes or machines under torchrun.

- All cases are checked (members runnable, outputs absent) before the first is run.
- A case that fails (any exception: a UserError such as an unreadable image, not a T2W study, bad
  geometry or a full disk, or a bug such as a stray non-DICOM file read by a writer) leaves nothing and
  the batch goes on (mricore.cohort); `summary.json` and `summary.csv` list every case with its status,
  volumes, review verdict and one-line error, and the traceback goes to `OUT/logs/<case_id>.log`.
- `workers` N > 1: N threads read and check the next cases (NIfTI/DICOM decoding, alignment, input
  checks) and write finished ones while the networks run on the current case in the main thread
  (threads, not processes: the members are loaded once and shared; NumPy, zlib and PyTorch release the
  GIL for the heavy parts). At most N cases are read ahead, so memory stays bounded.
- `resume`: the cases an earlier run of the same config completed in OUT are read back, not run again
  (mricore.cohort.finished_case: a case folder exists only complete; one made by another config is
  refused, fix --force); the failed and missing ones run, and the summary lists every case. The case
  folders are the journal: a run killed at any point (SIGKILL included) loses no finished case, and
  the summary, written at the end, is rebuilt from them. The progress bar (tqdm, stderr) starts at the
  cases already complete, and its rate and ETA count only the cases run now.
- Under `torchrun --nnodes K --nproc_per_node P` (WORLD_SIZE > 1) the ranks plan (and, resuming, find the
  complete cases) before any writes (a barrier over a gloo process group); rank r takes the cases to
  run r, r + W, r + 2W, ...; the rows are gathered and rank 0 writes one summary for all.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) when not under torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _barrier(world: int) -> None:
    """Wait for every rank (gloo over torchrun's rendezvous; the group is made on first use)."""
    if world == 1:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        from datetime import timedelta

        dist.init_process_group("gloo", timeout=timedelta(minutes=30))  # ranks finish their slices unevenly
    dist.barrier()


def _gather(rows: list[dict], world: int) -> list[dict]:
    """Every rank's rows on every rank."""
    if world == 1:
        return rows
    import torch.distributed as dist

    _barrier(world)
    parts: list = [None] * world
    dist.all_gather_object(parts, rows)
    dist.barrier()
    dist.destroy_process_group()  # else gloo's threads abort the process at exit
    return [r for part in parts for r in part]


@dataclass
class Batch:
    """A batch checked and planned: the config, the loaded members, its cases and where they go."""

    cfg: object             # EnsembleConfig as loaded (probabilities as configured)
    run_cfg: object         # as written to each case's ensemble.yaml (probabilities as run)
    probabilities: bool
    report: bool
    force: bool
    out: Path
    members: list
    sources: list
    identity: object = None  # ensemble.dicomseg.Identity for seg.dcm (None: de-identified, random key)
    done: dict = field(default_factory=dict)  # resume: index -> row of a case complete in OUT already


def predict_batch(dataset, out_dir, config=None, force: bool = False, probabilities: bool | None = None,
                  report: bool = False, progress: bool = True, workers: int = 1, identity=None,
                  resume: bool = False) -> list[dict]:
    """Every case of a dataset folder / MSD folder / datalist into `out_dir/<case_id>/` (module
    docstring); `identity` (ensemble.dicomseg.Identity) decides what the cases' seg.dcm carry, as for
    one case; `resume` keeps the cases complete in `out_dir` (refused with `force`). Returns the rows of
    every case (all ranks), each with status "ok" or "failed"."""
    from mricore.errors import InputError
    from mricore.results import write_summary

    if workers < 1:
        raise InputError("--workers", "must be at least 1", workers, "e.g. --workers 2")
    if resume and force:
        raise InputError("--resume", "cannot be combined with --force", "both", "--resume keeps the complete "
                         "cases, --force recomputes every case: pass one of them")
    rank, world = rank_and_world()
    batch = replace(plan_batch(dataset, out_dir, config, force, probabilities, report, resume), identity=identity)
    _barrier(world)  # every rank has looked at OUT before any rank writes into it
    mine = [i for i in range(len(batch.sources)) if i not in batch.done][rank::world]
    rows = run_cases(batch, mine, workers, progress=progress, initial=len(batch.done) if world == 1 else 0,
                     desc=f"ensemble predict (rank {rank} of {world})" if world > 1 else "ensemble predict")
    merged = {r.pop("index"): r for r in _gather([{"index": i, **rows[i]} for i in mine], world)} | batch.done
    every = [merged[i] for i in sorted(merged)]
    if rank == 0:
        write_summary(batch.out, {"dataset": Path(dataset).name, "method": batch.cfg.method, "world_size": world,
                                  "workers": workers, "resumed_cases": len(batch.done), "cases": every},
                      [_flat_row(r) for r in every])
        if batch.report:  # OUT/report.html of the cohort, read from the case folders just written
            from mricore.cohort_report import write_cohort_report

            write_cohort_report(batch.out, every, {s.case_id: s.case_images for s in batch.sources})
    return every


def plan_batch(dataset, out_dir, config, force: bool, probabilities: bool | None, report: bool,
               resume: bool = False) -> Batch:
    """Load the config and members and check every case (members runnable; outputs absent, or with
    `resume` complete from the same config: read back into `Batch.done`) before the first is run."""
    from mricore.cohort import clear_staging, finished_case
    from mricore.config import to_dict
    from mricore.datasets import load_dataset
    from mricore.outputs import check_output_dir
    from mricore.results import CONFIG_YAML, REPORT_HTML, case_dir, check_case, check_summary

    from .members import read_members
    from .predict import plan_members, resolve_config, source_from_case

    cfg = resolve_config(config)
    out = check_output_dir(out_dir)
    check_summary(out, force or resume)  # a resume writes the summary anew, of every case
    members = read_members(cfg.members)
    sources = [source_from_case(c) for c in load_dataset(dataset)]
    probs = cfg.probabilities if probabilities is None else probabilities
    run_cfg = replace(cfg, probabilities=probs)
    done = {}
    for i, s in enumerate(sources):
        plan_members(s, members, cfg, notify=False)
        folder = case_dir(out, s.case_id, batch=True)
        if not resume:
            check_case(folder, force)
        elif (record := finished_case(folder, to_dict(run_cfg), CONFIG_YAML, {REPORT_HTML: report})) is not None:
            done[i] = _ok_row(record)
    if resume:
        clear_staging(out, [s.case_id for i, s in enumerate(sources) if i not in done])
    return Batch(cfg, run_cfg, probs, report, force, out, members, sources, done=done)


def run_cases(batch: Batch, mine: list[int], workers: int, progress: bool, desc: str,
              initial: int = 0) -> dict[int, dict]:
    """Cases `mine` (indices into batch.sources): `workers` threads read ahead and write behind while
    the networks run here. The progress bar starts at `initial` (cases complete before), so its rate
    and ETA count only these. Returns index -> row; any exception fails only its own case; a signal
    (KeyboardInterrupt, Terminated) drops the reads and writes not yet started and ends the run."""
    from tqdm import tqdm

    from .predict import infer_case, read_case

    def read(i):
        return read_case(batch.sources[i], batch.members, batch.cfg, notify=False, accept=batch.force)

    rows: dict[int, dict] = {}
    bar = tqdm(mine, desc=desc, disable=not progress, file=sys.stderr, initial=initial, total=initial + len(mine))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        try:
            ahead = {i: pool.submit(read, i) for i in mine[:workers]}
            writes = {}
            for n, i in enumerate(bar):
                _trim_heap()
                if n + workers < len(mine):
                    j = mine[n + workers]
                    ahead[j] = pool.submit(read, j)
                try:
                    case = ahead.pop(i).result()
                    image, result, skipped = infer_case(case, batch.cfg)
                except Exception as e:  # noqa: BLE001  (mricore.cohort: the case fails, the cohort goes on)
                    rows[i] = _failed(batch, i, e)
                    continue
                writes[i] = pool.submit(_write, batch, batch.sources[i], image, result, skipped)
                del case, image, result
            for i, fut in writes.items():
                try:
                    rows[i] = fut.result()
                except Exception as e:  # noqa: BLE001
                    rows[i] = _failed(batch, i, e)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # a write already running finishes or cleans up
            raise
    return rows


def _trim_heap() -> None:
    """Give the heap memory freed by the cases before back to the system (glibc's malloc_trim; nothing
    elsewhere). Why: glibc raises its mmap threshold after freeing a large array, so later arrays of a
    few MB come from the heap, whose free holes it keeps; over a cohort of varied grids the RSS between
    cases would creep up (bench/cohort_bench.py measured +23 % from case 22 to 43 without this)."""
    import ctypes

    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
            _LIBC = False
    if _LIBC:
        _LIBC(0)


_LIBC = None  # glibc's malloc_trim once looked up; False where there is none


def _write(batch: Batch, source, image, result, skipped) -> dict:
    """Write one case's folder; its summary row."""
    from mricore.cohort import succeeded
    from mricore.results import case_dir

    from .predict import write_outputs

    record = write_outputs(case_dir(batch.out, source.case_id, batch=True), image, result, skipped, source,
                           batch.run_cfg, batch.probabilities, batch.report, identity=batch.identity)
    succeeded(batch.out, source.case_id)
    return _ok_row(record)


def _ok_row(record) -> dict:
    """The summary row of a case written (now, or by the run a resume continues) from its record."""
    return {"case_id": record.case_id, "status": "ok", **record.headline(),
            "members_used": [m["member"] for m in record.members_used],
            "members_skipped": [m["member"] for m in record.members_skipped or []]}


def _failed(batch: Batch, i: int, error: Exception) -> dict:
    from mricore.cohort import failed_row

    return failed_row(batch.out, batch.sources[i].case_id, error)


def _flat_row(r: dict) -> dict:
    """A summary.csv row of a summary.json row."""
    from mricore.results import volume_columns

    if r["status"] != "ok":
        return {"case_id": r["case_id"], "status": r["status"], "error": r["error"]}
    return {"case_id": r["case_id"], "status": "ok", **volume_columns(r["volume_ml"]),
            "uncertainty": r["uncertainty"]["score"], "disagreement": r["uncertainty"]["disagreement"],
            "verdict": r["review"]["verdict"], "reasons": "; ".join(r["review"]["reasons"]),
            "members_used": len(r["members_used"]), "error": ""}
