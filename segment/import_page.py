"""The import page: the staff at the source check and correct what `segment import` decided, then export.

One table holds every study of the import (its pseudonymous case, status, reason) and every series
(its series number, description, orientation, b-value, a thumbnail of its middle slice, the automatic
class with the evidence, the role it got or why it was left out). A person may give a series another
class, exclude it, or keep a series flagged BurnedInAnnotation=YES, then press Export: the studies
whose decisions changed are imported again through the same code (segment.importer.import_dicom with
an overrides table), and manifest.json records each decision ("changed on the page", with the time;
who decided is not known).

`create_import_app(root, dataset, options, key_file)` imports `root` into `dataset` first (finished
studies of an earlier import with the same key are kept as they are) and returns the FastAPI app;
`segment import ... --serve` serves it on 127.0.0.1, and `ensemble serve` can mount it. Every URL is
relative, so it works under a mount prefix:

    GET  /                      the page (inline CSS and JS; it loads nothing from the network)
    GET  /api/manifest          manifest.json, each series with its `key` (import_manifest.series_key)
    GET  /api/thumbnail?case=C&series=K   a PNG (at most THUMB_PX wide) of the series' middle slice
    POST /api/export            {"decisions": {case: {series key: {"kind", "exclude", "include"}}}}
                                -> {"rerun": [cases imported again], "manifest": ...}

The page and its answers carry only what the manifest holds (pseudonyms, keyed UIDs, series
descriptions) plus thumbnails, computed from the source on first request and kept in memory, never
written into the dataset. Errors are JSON {"error": one line} without paths: 400 a bad decision (an
unknown class, study or series), 404 an unknown thumbnail, 409 an export already running, 415 a body
that is not JSON (a cross-site form cannot send JSON without the browser asking first).
"""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from fastapi import FastAPI, Request  # the serve extra; only the --serve path imports this module
from fastapi.responses import HTMLResponse, JSONResponse, Response

from mricore.errors import InputError, UserError

from .import_manifest import Decision, Manifest
from .import_page_html import PAGE
from .import_study import check_overrides, unit_key, units
from .importer import ImportOptions, import_dicom, scan_and_import

THUMB_PX = 128   # a thumbnail's longer side, pixels: enough to tell a T2W from a DWI at a glance
FIELDS = ("kind", "exclude", "include")  # what the page decides; Decision's other fields are recorded
REQUEST = ("decision", "export request")  # the `what` of the errors a bad request gets, one line each


class ExportRunning(Exception):
    """Another export of this page is still running."""


class ImportPage:
    """The state behind the page: the source tree, the dataset, the key, the manifest, the thumbnails."""

    def __init__(self, root, dataset, options: ImportOptions = ImportOptions(), key_file=None):
        from mricore.deid import Pseudonymizer

        self.root, self.dataset, self.key_file = Path(root), Path(dataset), key_file
        # One key for the page's life: without a key file, a one-run key that every export reuses.
        self.p = Pseudonymizer.from_key_file(key_file, create=True) if key_file else Pseudonymizer.ephemeral()
        self.manifest, self.jobs = scan_and_import(root, dataset, key_file, options, pseudonymizer=self.p)
        # Exports re-run only the studies a person changed, quietly.
        self.options = replace(options, force=False, progress=False)
        self.units = {(j.case, unit_key(self.p, u)): u for j in self.jobs for u in units(j.slices)}
        self.thumbs: dict[tuple[str, str], bytes | None] = {}
        self.busy = threading.Lock()

    def manifest_json(self) -> dict:
        data = self.manifest.to_json()
        for study, entry in zip(data["studies"], self.manifest.studies):
            for s, e in zip(study["series"], entry.series):
                s["key"] = e.key
        return data

    def thumbnail(self, case: str, key: str) -> bytes | None:
        """The PNG of a series' middle slice, or None (unknown series, unreadable pixels)."""
        if (case, key) not in self.thumbs:
            unit = self.units.get((case, key))
            self.thumbs[(case, key)] = None if unit is None else slice_png(self.root / unit[len(unit) // 2].rel)
        return self.thumbs[(case, key)]

    def export(self, body) -> list[str]:
        """Apply the page's decisions (module docstring): re-import the studies whose decisions changed;
        returns their cases. Raises InputError for a bad request, ExportRunning while another runs."""
        changed = changed_decisions(body, self.manifest)
        check_overrides(self.jobs, changed)
        if not self.busy.acquire(blocking=False):
            raise ExportRunning("an export is already running; wait for it, then export again")
        try:
            if changed:
                self.manifest = import_dicom(self.root, self.dataset, self.key_file, self.options, changed, self.p)
        finally:
            self.busy.release()
        return sorted(changed)


def changed_decisions(body, manifest: Manifest) -> dict[str, dict[str, Decision]]:
    """The studies of `body` ({"decisions": {case: {series key: {kind, exclude, include}}}}, the full
    set for each case named) whose decisions differ from those `manifest` records, as `import_dicom`'s
    overrides. An unchanged decision keeps its recorded time; a new one gets the current time (UTC)."""
    table = body.get("decisions") if isinstance(body, dict) else None
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise InputError("export request", 'must be {"decisions": {case: {series: {kind, exclude, include}}}}',
                         type(table).__name__, "send the page's own request")
    recorded, now = manifest.decisions(), datetime.now(timezone.utc).isoformat(timespec="seconds")
    changed = {}
    for case, series in table.items():
        before = recorded.get(case, {})
        new = {key: _decision(fields, before.get(key), now) for key, fields in series.items()}
        new = {key: d for key, d in new.items() if d is not None}
        if {k: _choice(d) for k, d in new.items()} != {k: _choice(d) for k, d in before.items()}:
            changed[str(case)] = new
    return changed


def _choice(d: Decision) -> tuple:
    return tuple(getattr(d, f) for f in FIELDS)


def _decision(fields, before: Decision | None, now: str) -> Decision | None:
    """One series' decision from the page's fields; None when all is automatic."""
    if not isinstance(fields, dict) or set(fields) - set(FIELDS):
        got = sorted(set(fields) - set(FIELDS))[:3] if isinstance(fields, dict) else type(fields).__name__
        raise InputError("decision", f"must hold only {', '.join(FIELDS)}", got, "send the page's own request")
    d = Decision(**fields, time=now)
    if not any(_choice(d)):
        return None
    return before if before is not None and _choice(before) == _choice(d) else d


def slice_png(path: Path) -> bytes | None:
    """A grey PNG of one DICOM slice (window: 1st to 99th percentile), at most THUMB_PX on its longer
    side, without any text chunk; None when its pixels cannot be read."""
    import io

    import numpy as np
    from PIL import Image

    from mricore.dicom import sitk_module

    sitk = sitk_module()
    try:
        arr = np.squeeze(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))).astype(np.float32)
    except RuntimeError:
        return None
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = arr[..., :3].mean(-1)  # a colour image
    while arr.ndim > 2:
        arr = arr[len(arr) // 2]     # a multi-frame file: its middle frame
    if arr.ndim != 2:
        return None
    lo, hi = np.percentile(arr, [1, 99])
    img = Image.fromarray((np.clip((arr - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8))
    img.thumbnail((THUMB_PX, THUMB_PX))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_import_app(root, dataset, options: ImportOptions = ImportOptions(), key_file=None) -> FastAPI:
    """Import `root` into `dataset` (segment.importer; finished studies of an earlier import with the
    same key are kept) and return the page's FastAPI app (module docstring); `app.state.import_page`
    is its ImportPage. Raises what import_dicom raises."""
    page = ImportPage(root, dataset, options, key_file)
    app = FastAPI(title="segment import", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.import_page = page

    @app.get("/", response_class=HTMLResponse)
    def index():
        return PAGE

    @app.get("/api/manifest")
    def manifest():
        return page.manifest_json()

    @app.get("/api/thumbnail")
    def thumbnail(case: str = "", series: str = ""):
        png = page.thumbnail(case, series)
        return _error(404, "no thumbnail for this series") if png is None else Response(png, media_type="image/png")

    @app.post("/api/export")
    async def export(request: Request):
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return _error(415, "the export request must be JSON (Content-Type: application/json)")
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the export request must be JSON")
        from starlette.concurrency import run_in_threadpool

        try:
            rerun = await run_in_threadpool(page.export, body)
        except UserError as e:  # a bad request in full; else the rule and the value, never a server path
            if e.what in REQUEST:
                return _error(400, str(e))
            return _error(500, "export failed: " + e.rule + ("" if e.got is None else f"; got {e.got}"))
        except ExportRunning as e:
            return _error(409, str(e))
        return {"rerun": rerun, "manifest": page.manifest_json()}

    return app
