"""Receiving an upload for `ensemble serve`: a multipart/form-data body streamed to disk within limits,
then turned into the inputs of `ensemble predict`.

- `receive`: the body is read as it arrives (Content-Length or chunked alike) and every byte is
  counted before it is parsed, so a body over the limit raises `TooLarge` with nothing past the limit
  written, and the rest of it is never read; a body not complete within the upload timeout raises
  `TooSlow`. Only the file fields `t2` and `adc` are kept, each written straight into the request's
  own folder (python-multipart's streaming parser: no spooling to the system's temporary folder).
- `prepare`: each file is named by its content (`sniff`: NIfTI, gzipped NIfTI or zip, else
  `Unsupported`), never by the client's file name; a zip of one DICOM series is extracted safely
  (`safe_extract`) and its series folder renamed to the result id, so the case id is never a name
  taken from the upload (a zip's folder is often the patient's name).
"""

from __future__ import annotations

import asyncio
import zipfile
from pathlib import Path

from mricore.errors import InputError, UserError

FIELDS = ("t2", "adc")    # the file fields a request may carry, t2 required
MAX_ZIP_FILES = 2000
MAX_ZIP_RATIO = 50.0      # uncompressed / compressed, per archive: DICOM compresses about 2-4x


class TooLarge(UserError):
    """A body over the upload limit: 413."""


class TooSlow(UserError):
    """A body not complete within the upload timeout: 408."""


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


class _Parts:
    """python-multipart callbacks writing the file fields t2/adc into `folder/<field>.upload`."""

    def __init__(self, folder: Path):
        self.folder, self.files, self.out = folder, {}, None
        self.name, self.value, self.disposition = b"", b"", b""

    def on_header_field(self, data, start, end):
        self.name += data[start:end]

    def on_header_value(self, data, start, end):
        self.value += data[start:end]

    def on_header_end(self):
        if self.name.lower() == b"content-disposition":
            self.disposition = self.value
        self.name = self.value = b""

    def on_headers_finished(self):
        from python_multipart.multipart import parse_options_header

        _, options = parse_options_header(self.disposition)
        self.disposition = b""
        field, filename = options.get(b"name", b"").decode("latin-1"), options.get(b"filename")
        if field not in FIELDS or not filename:  # other fields, and a file input left empty: skipped
            return
        if field in self.files:
            raise InputError(field, "each file field may be sent once", "it twice", "send one t2 and at most one adc")
        self.files[field] = self.folder / f"{field}.upload"
        self.out = open(self.files[field], "wb")

    def on_part_data(self, data, start, end):
        if self.out is not None:
            self.out.write(data[start:end])

    def on_part_end(self):
        self.close()

    def close(self):
        if self.out is not None:
            self.out.close()
            self.out = None

    def callbacks(self) -> dict:
        return {n: getattr(self, n) for n in ("on_header_field", "on_header_value", "on_header_end",
                                              "on_headers_finished", "on_part_data", "on_part_end")}


async def receive(request, folder: Path, max_bytes: int, timeout_s: float, max_mb: float) -> dict[str, Path]:
    """The file fields of a multipart/form-data request, streamed into `folder` (module docstring).
    Returns {field: path} with t2 present. Raises TooLarge, TooSlow, or InputError (not multipart,
    malformed, no t2 file)."""
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header
    from starlette.requests import ClientDisconnect

    kind, options = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise InputError("upload", "must be a multipart/form-data form", kind.decode("latin-1") or "no content type",
                         "send the fields t2 [and adc] as a form (curl -F t2=@t2.nii.gz)")
    parts = _Parts(folder)
    parser = MultipartParser(options[b"boundary"], parts.callbacks())
    seen = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                seen += len(chunk)
                if seen > max_bytes:  # counted before it is parsed: nothing past the limit is written
                    raise TooLarge("upload", f"at most {max_mb:g} MB", f"more than {max_bytes} bytes",
                                   "upload a smaller file (one T2W series), or ask for a larger --max-upload-mb")
                parser.write(chunk)
        parser.finalize()
    except TimeoutError:
        raise TooSlow("upload", f"the body must arrive within {timeout_s:g} s", f"{seen} bytes by then",
                      "retry on a faster connection, or ask for a longer --upload-timeout") from None
    except (FormParserError, ClientDisconnect) as e:
        raise InputError("upload", "not a readable multipart form", type(e).__name__,
                         "send the fields t2 [and adc] as a form") from None
    finally:
        parts.close()
    if "t2" not in parts.files:
        raise InputError("t2", "a file field named t2 is required", "none", "upload the T2W volume as t2")
    return parts.files


def prepare(files: dict[str, Path], staging: Path, result_id: str, max_bytes: int) -> list[Path]:
    """The uploaded files as inputs of `ensemble predict`, in `staging`: NIfTI files renamed
    `<result_id>/t2.nii.gz` (and adc), zips extracted to `<field>_dicom/<result_id>/`, so the case id
    is the result id. Raises Unsupported or InputError."""
    inputs, budget = [], max_bytes
    for field in FIELDS:
        path = files.get(field)
        if path is None:
            continue
        with open(path, "rb") as f:
            kind = sniff(f.read(348))
        budget -= path.stat().st_size
        if kind == "zip":
            series = safe_extract(path, staging / f"{field}_zip", max(budget, 0) * 4 + (1 << 20))
            target = staging / f"{field}_dicom" / result_id
            target.parent.mkdir()
            series.rename(target)
        else:
            target = staging / result_id / f"{field}.{kind}"
            target.parent.mkdir(exist_ok=True)
            path.rename(target)
        path.unlink(missing_ok=True)
        inputs.append(target)
    return inputs


def safe_extract(archive: Path, dest: Path, max_bytes: int) -> Path:
    """Extract a zip of one DICOM series into `dest`, refusing path traversal, absolute names, links,
    too many entries and zip bombs (declared sizes checked before, written sizes counted while
    extracting). Returns the folder holding the files."""
    fix = "zip one DICOM series folder"
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise InputError("t2", "the zip archive could not be read", "a damaged zip", "zip the DICOM folder again") from None
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        if not infos or len(infos) > MAX_ZIP_FILES:
            raise InputError("t2", f"a zip must hold 1 to {MAX_ZIP_FILES} files", len(infos), fix)
        total = sum(i.file_size for i in infos)
        packed = max(sum(i.compress_size for i in infos), 1)
        if total > max_bytes or total / packed > MAX_ZIP_RATIO:
            raise InputError("t2", "the zip expands too much (a zip bomb?)",
                             f"{total} bytes from {packed} ({total / packed:.0f}x)", fix)
        root = dest.resolve()
        for i in infos:
            name = i.filename
            target = (dest / name).resolve()
            if name.startswith(("/", "\\")) or ".." in Path(name).parts or root not in target.parents:
                raise InputError("t2", "zip entries must stay inside the archive", repr(name), "zip the DICOM folder itself")
            if (i.external_attr >> 16) & 0o170000 == 0o120000:
                raise InputError("t2", "zip entries must be files, not links", repr(name), "zip the files the links point to")
        _extract(zf, infos, dest, max_bytes)
    folders = {p.parent for p in dest.rglob("*") if p.is_file()}
    if len(folders) != 1:
        raise InputError("t2", "a zip must hold one DICOM series folder", f"{len(folders)} folders", fix)
    return folders.pop()


def _extract(zf: zipfile.ZipFile, infos: list, dest: Path, max_bytes: int) -> None:
    """Write the entries, counting the bytes actually written against `max_bytes`."""
    written = 0
    for i in infos:
        target = dest / i.filename
        target.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(i) as src, open(target, "wb") as dst:
            while chunk := src.read(1 << 20):
                written += len(chunk)
                if written > max_bytes:
                    raise InputError("t2", "the zip expands beyond the upload limit", f"> {max_bytes} bytes",
                                     "zip one DICOM series")
                dst.write(chunk)
