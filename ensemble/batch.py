"""`ensemble predict DATASET`: a cohort, case by case into `OUT/<case_id>/`, with reading and writing
overlapped with the networks, and spread over processes or machines under torchrun.

- All cases are checked (members runnable, outputs absent) before the first is run.
- A case that fails (a UserError: unreadable image, not a T2W study, bad geometry, disk full) leaves
  nothing and the batch goes on; `summary.json` and `summary.csv` list every case with its status,
  volumes, review verdict and error.
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
from dataclasses import replace
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


def predict_batch(dataset, out_dir, config=None, force: bool = False, probabilities: bool | None = None,
                  report: bool = False, progress: bool = True, workers: int = 1) -> list[dict]:
    """Every case of a dataset folder / MSD folder / datalist into `out_dir/<case_id>/` (module
    docstring). Returns the rows of every case (all ranks), each with status "ok" or "failed"."""
    from tqdm import tqdm

    from mricore.datasets import load_dataset
    from mricore.errors import InputError, UserError
    from mricore.io import check_absent, check_output_dir, write_csv, write_json

    from .members import read_members
    from .predict import check_outputs, plan_members, resolve_config, infer_case, read_case, source_from_case, write_outputs

    if workers < 1:
        raise InputError("--workers", "must be at least 1", workers, "e.g. --workers 2")
    rank, world = rank_and_world()
    cfg = resolve_config(config)
    out = check_output_dir(out_dir)
    check_absent([out / "summary.json", out / "summary.csv"], force)
    members = read_members(cfg.members)
    sources = [source_from_case(c) for c in load_dataset(dataset)]
    for s in sources:
        plan_members(s, members, cfg, notify=False)
        check_outputs(out / s.case_id, force)
    probs = cfg.probabilities if probabilities is None else probabilities
    run_cfg = replace(cfg, probabilities=probs)
    mine = list(range(rank, len(sources), world))

    def read(i):
        return read_case(sources[i], members, cfg, notify=False, accept=force)

    def write(i, image, result, skipped):
        side = write_outputs(out / sources[i].case_id, image, result, skipped, sources[i], run_cfg, probs, report)
        return {"case_id": sources[i].case_id, "status": "ok", "volume_ml": side["volume_ml"],
                "uncertainty": side["uncertainty"], "review": {k: side["review"][k] for k in ("verdict", "reasons", "score")},
                "members_used": [m["member"] for m in side["members_used"]],
                "members_skipped": [m["member"] for m in side["members_skipped"]]}

    rows: dict[int, dict] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        ahead = {i: pool.submit(read, i) for i in mine[:workers]}
        writes = {}
        for n, i in enumerate(tqdm(mine, desc=f"ensemble predict (rank {rank} of {world})" if world > 1 else
                                   "ensemble predict", disable=not progress, file=sys.stderr)):
            if n + workers < len(mine):
                j = mine[n + workers]
                ahead[j] = pool.submit(read, j)
            try:
                case = ahead.pop(i).result()
                image, result, skipped = infer_case(case, cfg)
            except UserError as e:
                rows[i] = {"case_id": sources[i].case_id, "status": "failed", "error": str(e)}
                continue
            writes[i] = pool.submit(write, i, image, result, skipped)
            del case, image, result
        for i, fut in writes.items():
            try:
                rows[i] = fut.result()
            except UserError as e:
                rows[i] = {"case_id": sources[i].case_id, "status": "failed", "error": str(e)}
    local = [{"index": i, **rows[i]} for i in mine]
    every = _gather(local, world)
    for r in every:
        r.pop("index")
    if rank == 0:
        write_json({"dataset": str(dataset), "method": cfg.method, "world_size": world, "workers": workers,
                    "cases": every}, out / "summary.json")
        write_csv([_flat_row(r) for r in every], out / "summary.csv")
    return every


def _flat_row(r: dict) -> dict:
    if r["status"] != "ok":
        return {"case_id": r["case_id"], "status": r["status"], "error": r["error"]}
    return {"case_id": r["case_id"], "status": "ok", **{f"{z}_ml": v for z, v in r["volume_ml"].items()},
            "uncertainty": r["uncertainty"]["score"], "disagreement": r["uncertainty"]["disagreement"],
            "verdict": r["review"]["verdict"], "reasons": "; ".join(r["review"]["reasons"]),
            "members_used": len(r["members_used"]), "error": ""}


def is_batch_input(inputs: list[str]) -> bool:
    """One datalist, or one folder holding case folders (no NIfTI, no DICOM files of its own)."""
    from mricore.datasets import is_dicom_folder

    if len(inputs) != 1:
        return False
    p = Path(inputs[0])
    if p.is_file():
        return p.suffix in (".csv", ".json")
    return p.is_dir() and not any(p.glob("*.nii*")) and not is_dicom_folder(p)
