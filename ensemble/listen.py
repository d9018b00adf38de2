"""`ensemble listen`: a DICOM Storage SCP (pynetdicom) beside the PACS. Studies arrive by C-STORE; the
DICOM-SEG and the SR measurement report of each go back by C-STORE to `--send-to`.

- Gathering: each instance is written at once into the study's folder in a private work folder
  (ensemble.study layout; memory holds one instance at a time). A study is complete after
  `study_timeout` seconds without a new instance (and no file still being written); instances of it
  arriving later start a new study.
- Queue: complete studies wait in a queue (paths, not images) for `workers` threads that share the
  members loaded once. Each study runs ensemble.study.analyse_study (axial T2W and ADC chosen as
  `segment import` chooses; `ensemble predict`; SR), then ensemble.nodes.send. Any exception of a study
  is logged with its reason and never stops the others; a study with no axial T2W is logged and skipped.
  Its received files and results are deleted once it is processed, skipped or failed (`Outcome`).
- Identity: de-identified results (DICOM PS3.15 Basic Profile, a new key per study) unless
  `keep_identity`, which files them into the patient's own study in the PACS. The destination rule
  (ensemble.nodes.check_destination) is checked before the port is opened.
- Associations: a calling AE title outside `allowed` (when given) is rejected; presentation contexts
  other than MR Image Storage (and SEG / Comprehensive 3D SR, accepted and discarded: a PACS that
  forwards a whole study with our own results must not fail) and Verification are refused; an
  association aborted mid-study leaves its studies to time out, then they are dropped unprocessed; a
  connection that sends no valid association request is dropped. Each gets one log line, and no
  handler lets an exception reach pynetdicom.
Log lines name studies by a short hash of their UID (the UID itself with `keep_identity`), never a patient.
"""

from __future__ import annotations

import queue
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from mricore.errors import InputError, UserError, without_paths

from .nodes import COMPREHENSIVE_3D_SR_STORAGE, SEGMENTATION_STORAGE, Node
from .study import NoT2W, add_instance, folder_name

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
VERIFICATION = "1.2.840.10008.1.1"
DISCARDED = (SEGMENTATION_STORAGE, COMPREHENSIVE_3D_SR_STORAGE)  # accepted, not kept


def stderr_log(line: str) -> None:
    """The default log: one time-stamped line on stderr."""
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} listen: {line}", file=sys.stderr, flush=True)


@dataclass
class Study:
    """A study being received: its folder, instance count, last arrival (monotonic) and state."""

    uid: str
    folder: Path
    last: float
    instances: int = 0
    writing: int = 0                           # files being written now
    partial: bool = False                      # an association that delivered to it was aborted
    associations: set = field(default_factory=set)


@dataclass(frozen=True)
class Outcome:
    """What became of one study: stored, skipped, failed or dropped, with times (monotonic s)."""

    study: str                                 # the log's name of the study (`Listener.name`)
    status: str
    instances: int
    last_received: float
    finished: float
    reason: str = ""
    volume_ml: dict | None = None
    verdict: str | None = None


class Listener:
    """The SCP, its queue and workers (module docstring). `start()`, then `stop()`; `serve_forever()`
    for the CLI. `outcomes` lists every finished study in order."""

    def __init__(self, cfg, port: int, ae_title: str, send_to: Node, allowed=(), study_timeout: float = 10.0,
                 keep_identity: bool = False, workers: int = 1, host: str = "0.0.0.0", log=stderr_log):
        self.cfg, self.port, self.ae_title, self.send_to = cfg, port, ae_title, send_to
        self.allowed, self.timeout, self.keep, self.workers = list(allowed), study_timeout, keep_identity, workers
        self.host, self.log = host, log
        self.studies: dict[str, Study] = {}
        self.outcomes: list[Outcome] = []
        self.queue: queue.Queue = queue.Queue()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.negotiated: set = set()            # associations that got as far as accept or reject
        self.threads: list[threading.Thread] = []
        self.server = self.work = self.members = None

    def name(self, uid: str) -> str:
        return uid if self.keep else f"study-{folder_name(uid)[:10]}"

    # ------------------------------------------------------------------ life cycle
    def start(self) -> "Listener":
        from .members import read_members
        from .predict import resolve_config

        if self.workers < 1 or self.timeout <= 0:
            raise InputError("--workers/--study-timeout", "need at least 1 worker and a timeout above 0 s",
                             f"{self.workers} workers, {self.timeout} s", "e.g. --workers 1 --study-timeout 10")
        self.cfg = resolve_config(self.cfg)
        self.members = read_members(self.cfg.members)   # once, before the port opens
        self.work = Path(tempfile.mkdtemp(prefix="ensemble-listen-"))  # private (0700)
        self.server = self._server()
        self.threads = [threading.Thread(target=self._monitor, daemon=True, name="listen-monitor")]
        self.threads += [threading.Thread(target=self._worker, daemon=True, name=f"listen-worker-{i}")
                         for i in range(self.workers)]
        for t in self.threads:
            t.start()
        self.log(f"listening on port {self.port} as {self.ae_title}; results to {self.send_to}; "
                 f"study complete after {self.timeout:g} s; {self.workers} worker(s); identity "
                 f"{'kept' if self.keep else 'removed (PS3.15 Basic Profile)'}")
        return self

    def _server(self):
        import logging

        from pynetdicom import AE, evt

        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # our own log lines say what happened
        ae = AE(ae_title=self.ae_title)
        for uid in (MR_IMAGE_STORAGE, *DISCARDED, VERIFICATION):
            ae.add_supported_context(uid)
        if self.allowed:
            ae.require_calling_aet = self.allowed
        handlers = [(evt.EVT_C_STORE, self._guard(self._on_store, 0xC211)),
                    (evt.EVT_ACCEPTED, self._guard(self._on_accepted)), (evt.EVT_REJECTED, self._guard(self._on_rejected)),
                    (evt.EVT_ABORTED, self._guard(self._on_aborted)), (evt.EVT_RELEASED, self._guard(self._on_released)),
                    (evt.EVT_CONN_CLOSE, self._guard(self._on_close))]
        try:
            return ae.start_server((self.host, self.port), block=False, evt_handlers=handlers)
        except OSError as e:
            shutil.rmtree(self.work, ignore_errors=True)
            raise InputError("--port", "the port must be free to listen on", f"{self.port} ({e.strerror})",
                             "choose another port, or stop what listens there") from None

    def stop(self) -> None:
        """Close the port, let the workers finish the study they hold, drop what waits, remove the work folder."""
        self.stopping.set()
        if self.server is not None:
            self.server.shutdown()
        for _ in range(self.workers):
            self.queue.put(None)
        for t in self.threads:
            t.join(timeout=120)
        waiting = len(self.studies) + sum(1 for s in list(self.queue.queue) if s is not None)
        if waiting:
            self.log(f"stopped with {waiting} study(ies) not processed; their files are deleted")
        if self.work is not None:
            shutil.rmtree(self.work, ignore_errors=True)

    def serve_forever(self) -> None:
        """`start`, then wait for SIGINT/SIGTERM (KeyboardInterrupt / Terminated); `stop` whatever ends it."""
        self.start()
        try:
            while not self.stopping.wait(0.5):
                pass
        finally:
            self.stop()

    # ------------------------------------------------------------------ association events
    def _guard(self, handler, failure=None):
        """`handler` that logs an exception instead of raising it into pynetdicom (returns `failure`)."""
        def run(event):
            try:
                return handler(event)
            except Exception as e:  # nothing an association does may crash the listener
                self.log(f"error handling {type(e).__name__}: {without_paths(str(e))[:200]}")
                return failure
        return run

    @staticmethod
    def _peer(event) -> str:
        r = event.assoc.requestor
        return f"{r.ae_title or '?'} ({r.address})"

    def _on_accepted(self, event) -> None:
        self.negotiated.add(event.assoc)
        accepted = {c.abstract_syntax for c in event.assoc.accepted_contexts}
        refused = {c.abstract_syntax for c in event.assoc.rejected_contexts} - accepted  # not a transfer syntax
        if refused:
            self.log(f"association from {self._peer(event)}: refused unsupported SOP class(es) "
                     f"{', '.join(sorted(refused))} (this node stores MR images)")

    def _on_rejected(self, event) -> None:
        self.negotiated.add(event.assoc)
        self.log(f"refused an association from {self._peer(event)}: calling AE title not in --allowed-ae")

    def _on_close(self, event) -> None:
        if event.assoc in self.negotiated:
            self.negotiated.discard(event.assoc)
        else:
            self.log(f"dropped a connection from {event.assoc.requestor.address}: no valid association request")

    def _on_released(self, event) -> None:
        with self.lock:
            for s in self.studies.values():
                if event.assoc in s.associations:
                    s.associations.discard(event.assoc)
                    s.partial = False  # a sender that completes its association delivered the study

    def _on_aborted(self, event) -> None:
        with self.lock:
            hit = [s for s in self.studies.values() if event.assoc in s.associations]
            for s in hit:
                s.partial = True
                s.associations.discard(event.assoc)
        what = "; ".join(f"{self.name(s.uid)} ({s.instances} instances) will be dropped when it times out"
                         for s in hit) or "nothing received"
        self.log(f"association from {self._peer(event)} aborted: {what}")

    def _on_store(self, event) -> int:
        if event.request.AffectedSOPClassUID in DISCARDED:
            return 0x0000
        ds = event.dataset
        study_uid, series_uid, sop_uid = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
        with self.lock:
            s = self.studies.get(study_uid)
            if s is None:
                s = self.studies[study_uid] = Study(study_uid, self.work / f"{folder_name(study_uid)}-{time.time_ns()}",
                                                    time.monotonic())
            s.writing += 1
            s.associations.add(event.assoc)
        try:
            add_instance(s.folder / "in", series_uid, sop_uid, event.encoded_dataset())
        except OSError as e:
            self.log(f"{self.name(study_uid)}: could not write an instance ({e.strerror}); answered Out of Resources")
            return 0xA700
        finally:
            with self.lock:
                s.writing -= 1
                s.instances += 1
                s.last = time.monotonic()
        return 0x0000

    # ------------------------------------------------------------------ studies
    def _monitor(self) -> None:
        """Move each study idle for the timeout to the queue, or drop it when its sender aborted."""
        while not self.stopping.wait(min(0.2, self.timeout / 5)):
            now = time.monotonic()
            with self.lock:
                done = [s for s in self.studies.values() if not s.writing and now - s.last >= self.timeout]
                for s in done:
                    del self.studies[s.uid]
            for s in done:
                if s.partial:
                    shutil.rmtree(s.folder, ignore_errors=True)
                    self._finish(s, "dropped", "its association was aborted and nothing completed it")
                    continue
                self.queue.put(s)
                self.log(f"{self.name(s.uid)}: complete, {s.instances} instances; queued ({self.queue.qsize()} waiting)")

    def _worker(self) -> None:
        while (s := self.queue.get()) is not None:
            try:
                self._process(s)
            except Exception as e:  # a bug in one study never stops the worker
                self._finish(s, "failed", f"{type(e).__name__}: {without_paths(str(e))[:200]}")
            finally:
                shutil.rmtree(s.folder, ignore_errors=True)  # received files and results, whatever happened

    def _process(self, s: Study) -> None:
        from .dicomseg import Identity
        from .nodes import send
        from .study import analyse_study

        try:
            r = analyse_study(s.folder / "in", s.folder / "out", s.folder / "sr.dcm", self.cfg, self.members,
                              Identity(keep=self.keep))
            send(self.send_to, [r.seg, r.sr], self.ae_title)
        except NoT2W as e:
            return self._finish(s, "skipped", str(e))
        except UserError as e:
            return self._finish(s, "failed", without_paths(str(e)))
        v = r.record.volume_ml
        verdict = (r.record.review or {}).get("verdict")
        self._finish(s, "stored", f"WG {v['WG']:.1f} mL (TZ {v['TZ']:.1f}, PZ {v['PZ']:.1f}), verdict {verdict}; "
                     f"SEG and SR stored at {self.send_to}", v, verdict)

    def _finish(self, s: Study, status: str, reason: str, volume_ml=None, verdict=None) -> None:
        o = Outcome(self.name(s.uid), status, s.instances, s.last, time.monotonic(), reason, volume_ml, verdict)
        with self.lock:
            self.outcomes.append(o)
        self.log(f"{o.study}: {status} in {o.finished - o.last_received:.1f} s after its last instance: {reason}")
