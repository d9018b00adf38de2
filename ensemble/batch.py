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
- Under `torchrun --nnodes K --nproc_per_node P` (WORLD_SIZE > 1) rank r takes cases r, r + W, r + 2W,
  ...; the rows are gathered over a gloo process group and rank 0 writes one summary for all.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) when not under torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _gather(rows: list[dict], world: int) -> list[dict]:
    """Every rank's rows on every rank (gloo over torchrun's rendezvous), in case order."""
    if world == 1:
        return rows
    import torch.distributed as dist

    if not dist.is_initialized():
        from datetime import timedelta

        dist.init_process_group("gloo", timeout=timedelta(minutes=30))  # ranks finish their slices unevenly
    parts: list = [None] * world
    dist.all_gather_object(parts, rows)
    dist.barrier()
    dist.destroy_process_group()  # else gloo's threads abort the process at exit
    return sorted((r for part in parts for r in part), key=lambda r: r["index"])


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


def predict_batch(dataset, out_dir, config=None, force: bool = False, probabilities: bool | None = None,
                  report: bool = False, progress: bool = True, workers: int = 1, identity=None) -> list[dict]:
    """Every case of a dataset folder / MSD folder / datalist into `out_dir/<case_id>/` (module
    docstring); `identity` (ensemble.dicomseg.Identity) decides what the cases' seg.dcm carry, as for
    one case. Returns the rows of every case (all ranks), each with status "ok" or "failed"."""
    from mricore.errors import InputError
    from mricore.results import write_summary

    if workers < 1:
        raise InputError("--workers", "must be at least 1", workers, "e.g. --workers 2")
    rank, world = rank_and_world()
    batch = replace(plan_batch(dataset, out_dir, config, force, probabilities, report), identity=identity)
    mine = list(range(rank, len(batch.sources), world))
    rows = run_cases(batch, mine, workers, progress=progress,
                     desc=f"ensemble predict (rank {rank} of {world})" if world > 1 else "ensemble predict")
    every = _gather([{"index": i, **rows[i]} for i in mine], world)
    for r in every:
        r.pop("index")
    if rank == 0:
        write_summary(batch.out, {"dataset": Path(dataset).name, "method": batch.cfg.method, "world_size": world,
                                  "workers": workers, "cases": every},
                      [_flat_row(r) for r in every])
        if batch.report:  # OUT/report.html of the cohort, read from the case folders just written
            from mricore.cohort_report import write_cohort_report

            write_cohort_report(batch.out, every, {s.case_id: s.case_images for s in batch.sources})
    return every


def plan_batch(dataset, out_dir, config, force: bool, probabilities: bool | None, report: bool) -> Batch:
    """Load the config and members and check every case (members runnable, outputs absent) before the
    first is run."""
    from mricore.datasets import load_dataset
    from mricore.outputs import check_output_dir
    from mricore.results import case_dir, check_case, check_summary

    from .members import read_members
    from .predict import plan_members, resolve_config, source_from_case

    cfg = resolve_config(config)
    out = check_output_dir(out_dir)
    check_summary(out, force)
    members = read_members(cfg.members)
    sources = [source_from_case(c) for c in load_dataset(dataset)]
    for s in sources:
        plan_members(s, members, cfg, notify=False)
        check_case(case_dir(out, s.case_id, batch=True), force)
    probs = cfg.probabilities if probabilities is None else probabilities
    return Batch(cfg, replace(cfg, probabilities=probs), probs, report, force, out, members, sources)


def run_cases(batch: Batch, mine: list[int], workers: int, progress: bool, desc: str) -> dict[int, dict]:
    """Cases `mine` (indices into batch.sources): `workers` threads read ahead and write behind while
    the networks run here. Returns index -> row; any exception fails only its own case."""
    from tqdm import tqdm

    from .predict import infer_case, read_case

    def read(i):
        return read_case(batch.sources[i], batch.members, batch.cfg, notify=False, accept=batch.force)

    rows: dict[int, dict] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        ahead = {i: pool.submit(read, i) for i in mine[:workers]}
        writes = {}
        for n, i in enumerate(tqdm(mine, desc=desc, disable=not progress, file=sys.stderr)):
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
    return rows


def _write(batch: Batch, source, image, result, skipped) -> dict:
    """Write one case's folder; its summary row."""
    from mricore.cohort import succeeded
    from mricore.results import case_dir

    from .predict import write_outputs

    record = write_outputs(case_dir(batch.out, source.case_id, batch=True), image, result, skipped, source,
                           batch.run_cfg, batch.probabilities, batch.report, identity=batch.identity)
    succeeded(batch.out, source.case_id)
    return {"case_id": record.case_id, "status": "ok", **record.headline(),
            "members_used": [m["member"] for m in record.members_used],
            "members_skipped": [m["member"] for m in record.members_skipped]}


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
