"""`ensemble serve`: the ensemble loaded once behind a small web server (FastAPI + uvicorn).

Endpoints:
- `GET /`: a page to choose a T2W file (NIfTI, or a zip of one DICOM series) and optionally an ADC file,
  upload them, and see the volumes, the review verdict, the overlay and download links.
- `POST /predict` (multipart: `t2` required, `adc` optional) -> JSON `{id, case_id, volume_ml,
  uncertainty, review, files}`, the fields named as in zones.json (mricore.results.ZonesRecord.headline;
  review holds verdict, reasons and score); the outputs of `ensemble predict` land in `RESULTS/<id>/`
  (written atomically: staged, then renamed).
- `GET /results/{id}/{file}`: zones.nii.gz, uncertainty.nii.gz, zones.json, report.html, overlay.png,
  seg.dcm (DICOM input only). The id is 32 hex digits and the file one of these names, so no request
  reaches outside the results folder.
- `GET /health`: status, members, workers, requests running and waiting.

Limits, each answered at once with JSON `{"error": "<one line>"}`:
- 503 when `workers` predictions run and `queue` more wait (a bounded pool: nothing waits unboundedly);
- 413 when the body exceeds `max_upload_mb` (Content-Length, and counted while reading);
- 415 when a file is neither NIfTI (.nii / .nii.gz) nor a zip; 400 for every other bad input, with the
  one-line message the CLI prints (missing field, truncated gzip, not a T2W study, a zip holding `..`
  or absolute names, more than `MAX_ZIP_FILES` entries or a compression ratio above `MAX_ZIP_RATIO`).
Uploads are written into a hidden folder inside RESULTS that is removed when the request ends, whatever
happens; nothing of a rejected request stays on disk. The server binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import threading
import uuid
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastapi import FastAPI, Request  # the serve extra; only `ensemble serve` imports this module
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.datastructures import UploadFile

from mricore.errors import InputError, UserError
from mricore.results import (MEDIA_TYPES, OVERLAY_PNG, REPORT_HTML, SEG_DCM, UNCERTAINTY_NII, ZONES_JSON,
                             ZONES_NII)

# The case files a client may download (not ensemble.yaml: it names the server's member paths).
RESULT_FILES = (ZONES_NII, UNCERTAINTY_NII, ZONES_JSON, REPORT_HTML, OVERLAY_PNG, SEG_DCM)
ID = re.compile(r"[0-9a-f]{32}")
MAX_ZIP_FILES = 2000
MAX_ZIP_RATIO = 50.0      # uncompressed / compressed, per archive: DICOM compresses about 2-4x


class TooLarge(Exception):
    pass


class Unsupported(UserError):
    """An upload that is neither NIfTI nor a zip: 415."""


def sniff(head: bytes) -> str:
    """'nii.gz', 'nii' or 'zip' from a file's first bytes; Unsupported otherwise."""
    if head[:2] == b"\x1f\x8b":
        return "nii.gz"
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if len(head) >= 348 and (head[:4] in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c")) and head[344:347] in (b"n+1", b"ni1"):
        return "nii"
    raise Unsupported("upload", "must be a NIfTI file (.nii, .nii.gz) or a zip of one DICOM series",
                      f"first bytes {head[:4]!r}", "upload the T2W volume or zip its DICOM folder")


def safe_extract(archive: Path, dest: Path, max_bytes: int) -> Path:
    """Extract a zip of one DICOM series into `dest`, refusing path traversal, absolute names, links,
    too many entries and zip bombs (declared sizes checked before, written sizes counted while
    extracting). Returns the folder holding the files."""
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise InputError("t2", "the zip archive could not be read", "a damaged zip", "zip the DICOM folder again") from None
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        if not infos or len(infos) > MAX_ZIP_FILES:
            raise InputError("t2", f"a zip must hold 1 to {MAX_ZIP_FILES} files", len(infos), "zip one DICOM series")
        total = sum(i.file_size for i in infos)
        packed = max(sum(i.compress_size for i in infos), 1)
        if total > max_bytes or total / packed > MAX_ZIP_RATIO:
            raise InputError("t2", "the zip expands too much (a zip bomb?)",
                             f"{total} bytes from {packed} ({total / packed:.0f}x)", "zip one DICOM series")
        root = dest.resolve()
        for i in infos:
            name = i.filename
            target = (dest / name).resolve()
            if name.startswith(("/", "\\")) or ".." in Path(name).parts or root not in target.parents:
                raise InputError("t2", "zip entries must stay inside the archive", repr(name), "zip the DICOM folder itself")
            if (i.external_attr >> 16) & 0o170000 == 0o120000:
                raise InputError("t2", "zip entries must be files, not links", repr(name), "")
        written = 0
        for i in infos:
            target = dest / i.filename
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(i) as src, open(target, "wb") as dst:
                while chunk := src.read(1 << 20):
                    written += len(chunk)
                    if written > max_bytes:
                        raise InputError("t2", "the zip expands beyond the upload limit", f"> {max_bytes} bytes", "")
                    dst.write(chunk)
    folders = {p.parent for p in dest.rglob("*") if p.is_file()}
    if len(folders) != 1:
        raise InputError("t2", "a zip must hold one DICOM series folder", f"{len(folders)} folders", "zip one series")
    return folders.pop()


class Server:
    """The loaded ensemble, the bounded pool and the results folder."""

    def __init__(self, cfg, results: Path, workers: int, queue: int, max_upload_mb: float):
        from .members import read_members
        from .predict import resolve_config

        self.cfg, self.results = resolve_config(cfg), Path(results)  # the locator, if any, loaded and checked
        self.members = read_members(cfg.members)  # once, before the first request
        self.results.mkdir(parents=True, exist_ok=True)
        self.workers, self.queue = workers, queue
        self.max_bytes = int(max_upload_mb * 1024 * 1024)
        self.pool = ThreadPoolExecutor(max_workers=workers)
        self.slots = threading.BoundedSemaphore(workers + queue)
        self.lock = threading.Lock()
        self.running = self.waiting = 0

    def predict(self, inputs: list[Path], result_id: str):
        from .predict import predict

        with self.lock:
            self.waiting -= 1
            self.running += 1
        try:
            return predict(inputs, self.results / result_id, self.cfg, report=True, notify=False, members=self.members)
        finally:
            with self.lock:
                self.running -= 1


def _error(status: int, message: str):
    return JSONResponse({"error": message}, status_code=status)


async def _save(upload, folder: Path, field: str, budget: list[int]) -> list[Path]:
    """Write one uploaded file under `folder` (name from its content, never from the client); a zip is
    extracted safely. Returns the input paths for `ensemble predict`."""
    head = await upload.read(348)
    kind = sniff(head)
    path = folder / f"{field}.{kind}" if kind != "zip" else folder.parent / f"{field}.zip"
    with open(path, "wb") as f:
        f.write(head)
        budget[0] -= len(head)
        while chunk := await upload.read(1 << 20):
            budget[0] -= len(chunk)
            if budget[0] < 0:
                raise TooLarge()
            f.write(chunk)
    if kind != "zip":
        return [path]
    series = safe_extract(path, folder.parent / f"{field}_dicom", max(budget[0], 0) * 4 + (1 << 20))
    path.unlink()
    return [series]


def create_app(cfg, results: str | Path, workers: int = 1, queue: int = 4, max_upload_mb: float = 512):
    """The FastAPI application (module docstring); `cfg` is a loaded EnsembleConfig."""
    server = Server(cfg, Path(results), workers, queue, max_upload_mb)
    app = FastAPI(title="prostate-zones ensemble", docs_url=None, redoc_url=None)
    app.state.server = server

    @app.get("/", response_class=HTMLResponse)
    def page():
        return PAGE.replace("{MAX_MB}", f"{max_upload_mb:g}").replace("{OVERLAY}", OVERLAY_PNG)

    @app.get("/health")
    def health():
        return {"status": "ok", "members": len(server.members), "workers": server.workers,
                "queue": server.queue, "running": server.running, "waiting": server.waiting}

    @app.get("/results/{result_id}/{name}")
    def result_file(result_id: str, name: str):
        if not ID.fullmatch(result_id) or name not in RESULT_FILES:
            return _error(404, f"{result_id}/{name}: no such result file")
        path = server.results / result_id / name
        if not path.is_file():
            return _error(404, f"{result_id}/{name}: no such result file")
        return FileResponse(path, media_type=MEDIA_TYPES[name], filename=name)

    @app.post("/predict")
    async def predict(request: Request):
        return await _predict(server, request, max_upload_mb)

    return app


async def _predict(server: Server, request: Request, max_upload_mb: float):
    """POST /predict: admit (size, free slot), save the upload, predict in the pool, answer; the
    upload folder is removed and the slot freed whatever happens."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > server.max_bytes:
        return _error(413, f"upload: at most {max_upload_mb:g} MB; got {int(length)} bytes")
    if not server.slots.acquire(blocking=False):
        return _error(503, f"server busy: {server.workers} running and {server.queue} waiting; retry later")
    result_id = uuid.uuid4().hex
    staging = server.results / f".upload-{result_id}"
    form = None
    try:
        try:
            form = await request.form(max_files=2, max_fields=2)
        except Exception as e:  # malformed multipart (starlette raises its own error types)
            return _error(400, f"upload: not a readable multipart form ({type(e).__name__}); send fields t2 [and adc]")
        t2 = form.get("t2")
        if not isinstance(t2, UploadFile):
            return _error(400, "t2: a file field named t2 is required; fix: upload the T2W volume as t2")
        # NIfTI uploads are named t2/adc inside it: the case id is the result id
        inputs = await _save_form(form, staging / result_id, server.max_bytes)
        with server.lock:
            server.waiting += 1
        record = await asyncio.get_running_loop().run_in_executor(server.pool, server.predict, inputs, result_id)
        return _answer(server.results / result_id, result_id, record)
    except TooLarge:
        return _error(413, f"upload: at most {max_upload_mb:g} MB")
    except Unsupported as e:
        return _error(415, str(e))
    except UserError as e:
        return _error(400, str(e))
    finally:
        if form is not None:
            await form.close()
        shutil.rmtree(staging, ignore_errors=True)
        server.slots.release()


async def _save_form(form, case_dir: Path, max_bytes: int) -> list[Path]:
    """The t2 file (and adc, when sent) saved under `case_dir`, within one byte budget."""
    case_dir.mkdir(parents=True)
    budget = [max_bytes]
    inputs = await _save(form.get("t2"), case_dir, "t2", budget)
    adc = form.get("adc")
    if isinstance(adc, UploadFile) and adc.filename:
        inputs += await _save(adc, case_dir, "adc", budget)
    return inputs


def _answer(folder: Path, result_id: str, record) -> dict:
    """The JSON answer of a prediction: the record's headline fields, under their zones.json names."""
    files = [n for n in RESULT_FILES if (folder / n).is_file()]
    return {"id": result_id, "case_id": record.case_id, **record.headline(),
            "files": {n: f"/results/{result_id}/{n}" for n in files}}


def serve(config=None, host: str = "127.0.0.1", port: int = 8000, results: str | Path = "serve_results",
          workers: int = 1, queue: int = 4, max_upload_mb: float = 512) -> None:
    """Load the ensemble and serve it until interrupted."""
    import uvicorn

    from .config import load_ensemble_config

    cfg = load_ensemble_config(config) if not hasattr(config, "members") else config
    if workers < 1 or queue < 0 or max_upload_mb <= 0:
        raise InputError("serve", "workers >= 1, queue >= 0 and max-upload-mb > 0", (workers, queue, max_upload_mb), "")
    app = create_app(cfg, results, workers, queue, max_upload_mb)
    print(f"serving {len(app.state.server.members)} members on http://{host}:{port}/ (results in {results})")
    uvicorn.run(app, host=host, port=port, log_level="warning")


PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>prostate zones</title>
<style>body{font-family:sans-serif;max-width:62em;margin:1.5em auto;color:#222}td,th{padding:2px 10px}
label{display:block;margin:.4em 0}#out img{max-width:100%}.ok{color:#070}.review{color:#b60}.reject{color:#b00}</style>
</head><body><h1>Prostate zones</h1><p>Research software, not for diagnosis. Upload an axial T2W volume
(NIfTI .nii/.nii.gz, or a .zip of one DICOM series; at most {MAX_MB} MB) and, optionally, its ADC map.</p>
<form id="f"><label>T2W: <input type="file" id="t2" name="t2" accept=".nii,.gz,.zip" required></label>
<label>ADC (optional): <input type="file" id="adc" name="adc" accept=".nii,.gz,.zip"></label>
<button id="go" type="submit">Segment</button> <span id="status"></span></form><div id="out"></div>
<script>
const f = document.getElementById('f'), out = document.getElementById('out'), st = document.getElementById('status');
f.addEventListener('submit', async (e) => {
  e.preventDefault(); st.textContent = 'running...'; out.innerHTML = '';
  const r = await fetch('/predict', {method: 'POST', body: new FormData(f)});
  const j = await r.json();
  if (!r.ok) { st.textContent = ''; out.innerHTML = '<p class="reject" id="error"></p>';
               document.getElementById('error').textContent = j.error; return; }
  st.textContent = 'done';
  const v = j.volume_ml, rv = j.review;
  let h = '<h2 id="case"></h2><table id="volumes"><tr><th>zone</th><th>mL</th></tr>';
  for (const z of ['WG', 'TZ', 'PZ']) h += '<tr><td>' + z + '</td><td class="ml">' + v[z].toFixed(1) + '</td></tr>';
  h += '</table><p>Review: <b id="verdict" class="' + rv.verdict + '">' + rv.verdict + '</b></p><ul id="reasons"></ul>';
  h += '<img id="overlay" alt="zones overlay" src="' + j.files['{OVERLAY}'] + '"><p>Downloads: ';
  for (const [n, u] of Object.entries(j.files)) h += '<a href="' + u + '" download>' + n + '</a> ';
  out.innerHTML = h + '</p>';
  document.getElementById('case').textContent = j.case_id;
  const ul = document.getElementById('reasons');
  for (const x of rv.reasons) { const li = document.createElement('li'); li.textContent = x; ul.appendChild(li); }
});
</script></body></html>"""
