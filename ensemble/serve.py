"""`ensemble serve`: the ensemble loaded once behind a small web server (FastAPI + uvicorn).

Endpoints:
- `GET /`: a page to choose a T2W file (NIfTI, or a zip of one DICOM series) and optionally an ADC file,
  upload them, and see the volumes, the review verdict, the overlay and download links.
- `POST /predict` (multipart: `t2` required, `adc` optional) -> JSON `{id, case_id, volume_ml,
  uncertainty, review, files}`, the fields named as in zones.json (mricore.results.ZonesRecord.headline;
  review holds verdict, reasons and score); the outputs of `ensemble predict` land in `RESULTS/<id>/`
  (written atomically: staged, then renamed). The case id is the result id, never a name from the upload.
- `GET /results/{id}/{file}`: zones.nii.gz, uncertainty.nii.gz, zones.json, report.html, overlay.png,
  seg.dcm (DICOM input only). The id is 32 hex digits and the file one of these names, so no request
  reaches outside the results folder.
- `GET /health`: status, members, workers, requests running and waiting (never needs the token).
- `GET /login`: a form that turns the token into a cookie, for people in a browser (ensemble.guard).
- `/import/`: with `import_root`, the data provider's page of `segment import --serve` (segment.import_page).

Limits, each answered at once with JSON `{"error": "<one line>"}` (and the connection closed when the
body was not read to its end):
- 401 without `Authorization: Bearer TOKEN` or the /login cookie when started with a token (every
  endpoint but /health and /login);
- 413 when the body exceeds `max_upload_mb`: Content-Length is checked first, and every byte is counted
  as it streams (chunked too), before it is parsed, so nothing past the limit is written and the rest
  of the body is not read (ensemble.upload);
- 408 when the body has not arrived within `upload_timeout_s`: a slow client holds no worker slot;
- 503 when `workers` predictions run and `queue` more wait; a slot is taken only once the upload is
  complete and checked (a bounded pool: nothing waits unboundedly);
- 415 when a file is neither NIfTI (.nii / .nii.gz) nor a zip; 400 for every other bad input, with the
  one-line message the CLI prints (missing field, truncated gzip, not a T2W study, a zip holding `..`
  or absolute names, more than `MAX_ZIP_FILES` entries or a compression ratio above `MAX_ZIP_RATIO`).
Error messages name no server path (mricore.errors.without_paths). Results expire: a result folder older than
`keep_hours` (default 24) answers 404 and is removed, checked on every download and swept every minute.
Uploads are written into a hidden folder inside RESULTS that is removed when the request ends, whatever
happens; nothing of a rejected request stays on disk. The server binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request  # the serve extra; only `ensemble serve` imports this module
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from mricore.errors import InputError, UserError, without_paths
from mricore.results import (MEDIA_TYPES, OVERLAY_PNG, REPORT_HTML, SEG_DCM, UNCERTAINTY_NII, ZONES_JSON,
                             ZONES_NII)

from . import upload
from .guard import Guard, add_login
from .upload import MAX_ZIP_FILES, MAX_ZIP_RATIO  # noqa: F401  (named in the docstring)

# The case files a client may download (not ensemble.yaml: it names the server's member paths).
RESULT_FILES = (ZONES_NII, UNCERTAINTY_NII, ZONES_JSON, REPORT_HTML, OVERLAY_PNG, SEG_DCM)
ID = re.compile(r"[0-9a-f]{32}")
# What the server writes into RESULTS: <id>/, .upload-<id>/, and staged_dir's hidden .<id>.* folders.
OWNED = re.compile(r"\.?(upload-)?[0-9a-f]{32}(\..*)?")
SWEEP_S = 60
log = logging.getLogger("ensemble.serve")


class Server:
    """The loaded ensemble, the bounded pool, the results folder and the limits (module docstring)."""

    def __init__(self, cfg, results: Path, workers: int = 1, queue: int = 4, max_upload_mb: float = 512,
                 upload_timeout_s: float = 300, keep_hours: float = 24, token: str | None = None):
        from .members import read_members
        from .predict import resolve_config

        self.cfg, self.results = resolve_config(cfg), Path(results)  # the locator, if any, loaded and checked
        self.members = read_members(cfg.members)  # once, before the first request
        self.results.mkdir(parents=True, exist_ok=True)
        self.workers, self.queue = workers, queue
        self.max_mb, self.max_bytes = max_upload_mb, int(max_upload_mb * 1024 * 1024)
        self.upload_timeout_s, self.keep_s, self.token = upload_timeout_s, keep_hours * 3600, token
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

    def expired(self, path: Path) -> bool:
        """Older than keep_hours (by its last change), or gone."""
        try:
            return time.time() - path.stat().st_mtime > self.keep_s
        except OSError:
            return True

    def sweep(self) -> list[str]:
        """Remove every result (and upload or staging folder a crash left) older than keep_hours; the
        names removed."""
        gone = [p for p in self.results.iterdir() if OWNED.fullmatch(p.name) and self.expired(p)]
        for p in gone:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        return [p.name for p in gone]


def _error(status: int, message: str, close: bool = False, headers: dict | None = None):
    """The one-line JSON error; `close` ends the connection (a body left unread is never read)."""
    headers = {**(headers or {}), **({"connection": "close"} if close else {})}
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _deny(scope, receive, send):
    """The guard's answer to a request without the token (ensemble.guard)."""
    return _error(401, "authorization: a bearer token is required; got none or a wrong one; fix: send the header "
                  "'Authorization: Bearer TOKEN', or sign in at /login in a browser", close=True,
                  headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)


def create_app(cfg, results: str | Path, workers: int = 1, queue: int = 4, max_upload_mb: float = 512,
               upload_timeout_s: float = 300, keep_hours: float = 24, token: str | None = None, import_page=None):
    """The FastAPI application (module docstring); `cfg` is a loaded EnsembleConfig; `import_page` (the
    app of segment.import_page.create_import_app) is mounted at /import/, behind the same guard."""
    server = Server(cfg, Path(results), workers, queue, max_upload_mb, upload_timeout_s, keep_hours, token)

    @asynccontextmanager
    async def lifespan(app):
        async def sweeper():  # expired results go even when nobody asks for them
            while True:
                await asyncio.to_thread(server.sweep)
                await asyncio.sleep(SWEEP_S)
        task = asyncio.create_task(sweeper())
        yield
        task.cancel()

    app = FastAPI(title="prostate-zones ensemble", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.server = server
    app.add_middleware(Guard, token=token, deny=_deny)
    add_login(app, token)
    if import_page is not None:
        app.mount("/import", import_page)

    @app.get("/", response_class=HTMLResponse)
    def page():
        return PAGE.replace("{MAX_MB}", f"{max_upload_mb:g}").replace("{OVERLAY}", OVERLAY_PNG)

    @app.get("/health")
    def health():
        return {"status": "ok", "members": len(server.members), "workers": server.workers,
                "queue": server.queue, "running": server.running, "waiting": server.waiting}

    @app.get("/results/{result_id}/{name}")
    def result_file(result_id: str, name: str):
        folder = server.results / result_id
        if not ID.fullmatch(result_id) or name not in RESULT_FILES or not (folder / name).is_file():
            return _error(404, f"{result_id}/{name}: no such result file")
        if server.expired(folder):
            shutil.rmtree(folder, ignore_errors=True)
            return _error(404, f"{result_id}/{name}: no such result file (results are kept {server.keep_s / 3600:g} h)")
        return FileResponse(folder / name, media_type=MEDIA_TYPES[name], filename=name)

    @app.post("/predict")
    async def predict(request: Request):
        return await _predict(server, request)

    return app


async def _predict(server: Server, request: Request):
    """POST /predict: size check, the upload streamed and checked, then a free slot, the prediction in
    the pool, the answer; the upload folder is removed and the slot freed whatever happens."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > server.max_bytes:
        return _error(413, f"upload: at most {server.max_mb:g} MB; got {int(length)} bytes; fix: upload a "
                      "smaller file", close=True)
    result_id = uuid.uuid4().hex
    staging = server.results / f".upload-{result_id}"
    slot = False
    try:
        staging.mkdir()
        files = await upload.receive(request, staging, server.max_bytes, server.upload_timeout_s, server.max_mb)
        inputs = await asyncio.to_thread(upload.prepare, files, staging, result_id, server.max_bytes)
        slot = server.slots.acquire(blocking=False)
        if not slot:
            return _error(503, f"server busy: {server.workers} running and {server.queue} waiting; retry later")
        with server.lock:
            server.waiting += 1
        record = await asyncio.get_running_loop().run_in_executor(server.pool, server.predict, inputs, result_id)
        return _answer(server.results / result_id, result_id, record)
    except UserError as e:
        status = {upload.TooLarge: 413, upload.TooSlow: 408, upload.Unsupported: 415}.get(type(e), 400)
        return _error(status, without_paths(str(e)), close=True)
    except Exception as e:  # a bug: logged here with its traceback, never sent to the client
        log.exception("POST /predict %s failed", result_id)
        return _error(500, f"internal error ({type(e).__name__}); the server log has the details", close=True)
    finally:
        if slot:
            server.slots.release()
        await asyncio.to_thread(shutil.rmtree, staging, True)


def _answer(folder: Path, result_id: str, record) -> dict:
    """The JSON answer of a prediction: the record's headline fields, under their zones.json names."""
    files = [n for n in RESULT_FILES if (folder / n).is_file()]
    return {"id": result_id, "case_id": record.case_id, **record.headline(),
            "files": {n: f"/results/{result_id}/{n}" for n in files}}


def serve(config=None, host: str = "127.0.0.1", port: int = 8000, results: str | Path = "serve_results",
          workers: int = 1, queue: int = 4, max_upload_mb: float = 512, upload_timeout_s: float = 300,
          keep_hours: float = 24, token: str | None = None, import_page: tuple | None = None) -> None:
    """Load the ensemble and serve it until interrupted; `import_page` (DICOM_ROOT, DATASET, key file or
    None) also offers segment import's page at /import/."""
    import uvicorn

    from .config import load_ensemble_config

    cfg = load_ensemble_config(config) if not hasattr(config, "members") else config
    limits = (workers, queue, max_upload_mb, upload_timeout_s, keep_hours)
    if workers < 1 or queue < 0 or min(limits[2:]) <= 0:
        raise InputError("serve", "workers >= 1, queue >= 0, and max-upload-mb, upload-timeout and keep-hours > 0",
                         limits, "e.g. --workers 1 --queue 4 --max-upload-mb 512 --upload-timeout 300 --keep-hours 24")
    if token is not None and not token.strip():
        raise InputError("--token", "must not be empty", repr(token), "pass a long random string, or leave --token out")
    from mricore.outputs import check_output_dir

    check_output_dir(results, fix="choose another --results folder")
    page = None
    if import_page is not None:
        from segment.import_page import create_import_app
        from segment.importer import ImportOptions

        root, dataset, key_file = import_page
        page = create_import_app(root, dataset, ImportOptions(progress=False, limits=cfg.review), key_file)
    app = create_app(cfg, results, workers, queue, max_upload_mb, upload_timeout_s, keep_hours, token, page)
    print(f"serving {len(app.state.server.members)} members on http://{host}:{port}/ (results in {results}, kept "
          f"{keep_hours:g} h{'; bearer token required' if token else ''})")
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
