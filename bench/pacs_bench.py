"""PACS round trip of `ensemble listen` against a real Orthanc: latency per study and studies per hour.

Measured in one run, with the bundled ensemble (or --config), on copies of ../shared/data/dicom/ProstateX-0000
(its six series, new UIDs per copy), Orthanc on loopback (tests/orthanc.py) sending by C-STORE:
- latency (--workers 1, one study at a time: the next is sent once the last is stored): from the last
  instance the listener received to the SEG and SR stored in Orthanc (its C-STORE answered success),
  median over --studies;
- `ensemble predict` on the same study's T2W and ADC series, in-process with the members loaded
  (median of 3 warm runs), and the overhead: latency - study timeout - predict (target: <= 2 s);
- throughput at --workers 1 and 2: --studies studies sent back to back (one Orthanc job each), studies per
  hour from the first send to the last SEG stored.
The result records the load average at start and end: the machine may be shared, and predict and
latency then vary by seconds from study to study.
Prints and writes bench/results/pacs_bench.json.

    python -m bench.pacs_bench [--data ../shared/data] [--studies 10] [--study-timeout 2]
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS, add_data, add_out, command, parser, write_result

from tests.orthanc import ADC, STUDY, T2  # the tests' study and Orthanc (as serve_bench uses the tests' client)

AET = "PZBENCH"


def _outcome(listener, uid: str, timeout: float = 900.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [o for o in list(listener.outcomes) if o.study == uid]
        if done:
            if done[0].status != "stored":
                raise RuntimeError(f"study {uid}: {done[0].status}: {done[0].reason}")
            return done[0]
        time.sleep(0.05)
    raise TimeoutError(f"study {uid} not stored within {timeout} s")


def _upload(pacs, folders) -> tuple[str, str]:
    """A new copy of the study in Orthanc: (Orthanc id, StudyInstanceUID)."""
    from tests.orthanc import copy_study

    orthanc_id = pacs.upload(copy_study(folders, 1)[0])
    return orthanc_id, pacs.get(f"/studies/{orthanc_id}")["MainDicomTags"]["StudyInstanceUID"]


def _listener(pacs, cfg, workers: int, timeout: float, lines: list):
    from ensemble.listen import Listener
    from ensemble.nodes import Node
    from tests.orthanc import free_port

    port = free_port()
    listener = Listener(cfg, port, AET, Node("ORTHANC", "127.0.0.1", pacs.dicom_port), study_timeout=timeout,
                        keep_identity=True, workers=workers, host="127.0.0.1", log=lines.append).start()
    pacs.add_modality(f"bench{workers}", AET, port)
    return listener


def latency(pacs, listener, folders, n: int) -> list[float]:
    """Seconds from the last instance received to the SEG and SR stored, one study at a time."""
    out = []
    for _ in range(n):
        orthanc_id, uid = _upload(pacs, folders)
        pacs.store("bench1", orthanc_id)
        o = _outcome(listener, uid)
        out.append(round(o.finished - o.last_received, 3))
        pacs.request("DELETE", f"/studies/{orthanc_id}")  # keep Orthanc's storage small
        print(f"  latency {out[-1]:.2f} s ({o.reason})", flush=True)
    return out


def throughput(pacs, listener, folders, n: int, workers: int) -> dict:
    """Studies per hour with `n` studies sent back to back."""
    studies = [_upload(pacs, folders) for _ in range(n)]
    t = time.monotonic()
    for orthanc_id, _ in studies:
        pacs.post(f"/modalities/bench{workers}/store", {"Resources": [orthanc_id], "Asynchronous": True})
    last = max(_outcome(listener, uid).finished for _, uid in studies)
    for orthanc_id, _ in studies:
        pacs.request("DELETE", f"/studies/{orthanc_id}")
    wall = last - t
    return {"studies": n, "wall_s": round(wall, 1), "studies_per_hour": round(n / wall * 3600, 1)}


def predict_seconds(cfg, members, study: Path, repeats: int = 3) -> list[float]:
    """`ensemble predict` on the T2W and ADC series, in-process, warm (one untimed run first)."""
    from ensemble.predict import predict

    out, times = Path(tempfile.mkdtemp(prefix="pacs_bench_predict_")), []
    try:
        for i in range(repeats + 1):
            t = time.perf_counter()
            predict([study / T2, study / ADC], out, cfg, force=True, members=members, notify=False)
            times.append(round(time.perf_counter() - t, 3))
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return times[1:]


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    add_data(ap)
    add_out(ap, RESULTS / "pacs_bench.json")
    ap.add_argument("--studies", type=int, default=10, help="studies per measurement (default 10)")
    ap.add_argument("--study-timeout", type=float, default=2.0, help="the listener's --study-timeout (default 2 s)")
    ap.add_argument("--config", help="ensemble config (default: the bundled ensemble)")
    args = ap.parse_args(argv)
    from ensemble.config import load_ensemble_config
    from tests.orthanc import BINARY, Orthanc

    if not BINARY.exists():
        raise SystemExit(f"Orthanc is not installed ({BINARY}): apt-get install orthanc orthanc-dicomweb")
    study = args.data / STUDY
    folders = sorted(p for p in study.iterdir() if p.is_dir())
    cfg = load_ensemble_config(args.config)
    result = {"command": command("pacs_bench", sys.argv[1:] if argv is None else argv, ("--data", "--out", "--config")),
              "config": Path(args.config).name if args.config else "bundled", "study": STUDY, "series": len(folders),
              "studies": args.studies, "study_timeout_s": args.study_timeout, "members": len(cfg.members)}
    load = [round(x, 2) for x in os.getloadavg()]  # the machine is shared: how busy it was, start and end
    tmp, lines = Path(tempfile.mkdtemp(prefix="pacs_bench_")), []
    try:
        with Orthanc(tmp / "orthanc") as pacs:
            for workers in (1, 2):
                listener = _listener(pacs, cfg, workers, args.study_timeout, lines)
                try:
                    if workers == 1:
                        result["predict_s"] = predict_seconds(listener.cfg, listener.members, study)
                        result["latency_s"] = latency(pacs, listener, folders, args.studies)
                    result[f"workers_{workers}"] = throughput(pacs, listener, folders, args.studies, workers)
                    print(f"workers {workers}: {result[f'workers_{workers}']}", flush=True)
                finally:
                    listener.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["load_average_1_5_15min"] = {"start": load, "end": [round(x, 2) for x in os.getloadavg()]}
    lat, pred = round(statistics.median(result["latency_s"]), 3), round(statistics.median(result["predict_s"]), 3)
    result["latency_median_s"], result["predict_median_s"] = lat, pred
    result["overhead_median_s"] = round(lat - args.study_timeout - pred, 3)
    result["target"] = "latency <= study timeout + predict + 2 s"
    result["target_met"] = result["overhead_median_s"] <= 2.0
    print(f"latency median {lat:.2f} s = timeout {args.study_timeout:g} s + predict {pred:.2f} s + "
          f"{result['overhead_median_s']:.2f} s; written {write_result(result, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
