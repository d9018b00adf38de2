"""DICOM nodes the platform sends results to: `AET@HOST:PORT` parsed (`Node`), the rule on where
identified results may go (`check_destination`), and the C-STORE of result files (`send`, pynetdicom).

The destination rule (`ensemble listen --send-to`, `ensemble predict --dicomweb URL --stow`): a host on
loopback or the local network (RFC 1918 / RFC 4193 private, link-local) is accepted; any other is
refused unless --keep-identity is given explicitly. Results sent outside the hospital's network are
meant for a PACS that files them into the patient's own study (a cloud PACS of the hospital), which
needs the source identity; anything else going there is a mistake this check catches before the
first association. A host name counts by every address it resolves to.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from mricore.errors import InputError, UserError

# AE titles: 1-16 characters of the default character repertoire, no backslash or control characters.
_AE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")
# What a result is sent as: the SEG and the SR measurement report (ensemble.sr).
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_3D_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.34"


class SendError(UserError):
    """A destination refused, could not be reached, or did not store a result."""


def require_pacs() -> None:
    """UserError (one line, exit 2) when the pacs extra (pynetdicom, dicomweb-client) is not installed."""
    import importlib.util

    missing = [m for m in ("pynetdicom", "dicomweb_client") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError("ensemble", "DICOM networking needs the pacs extra (pynetdicom, dicomweb-client)",
                        f"missing {', '.join(missing)}", "pip install -e '.[pacs]'")


def check_ae_title(title: str, what: str = "--ae-title") -> str:
    """`title` stripped, or InputError when it is not a valid AE title (1-16 characters, no backslash)."""
    t = str(title).strip()
    if not _AE.match(t):
        raise InputError(what, "an AE title is 1 to 16 printable characters without a backslash", repr(title),
                         "e.g. PROSTATE_AI")
    return t


@dataclass(frozen=True)
class Node:
    """A DICOM node: AE title, host and TCP port. Example: Node.parse("PACS@10.0.0.5:104")."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, what: str = "--send-to") -> "Node":
        """Parse AET@HOST:PORT (IPv6 host in brackets); raises InputError naming `what`."""
        m = re.match(r"^([^@]+)@(\[[0-9a-fA-F:.]+\]|[^:@\[\]]+):(\d{1,5})$", str(text).strip())
        if not m:
            raise InputError(what, "must read AET@HOST:PORT", repr(text), "e.g. ORTHANC@127.0.0.1:4242")
        port = int(m.group(3))
        if not 1 <= port <= 65535:
            raise InputError(what, "the port must be 1..65535", port, "e.g. ORTHANC@127.0.0.1:4242")
        return cls(check_ae_title(m.group(1), what), m.group(2).strip("[]"), port)

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def addresses(host: str, what: str) -> list:
    """Every IP address `host` resolves to; InputError when it resolves to none."""
    try:
        infos = socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError) as e:
        raise InputError(what, "the host name must resolve", f"{host!r} ({e})", "check the name or give an IP address") from None
    return sorted({ipaddress.ip_address(i[4][0].split("%")[0]) for i in infos}, key=str)


def is_local(host: str, what: str = "--send-to") -> bool:
    """True when every address of `host` is loopback, private (RFC 1918, RFC 4193) or link-local."""
    return all(a.is_loopback or a.is_private or a.is_link_local for a in addresses(host, what))


def check_destination(host: str, keep_identity: bool, what: str = "--send-to") -> None:
    """The destination rule (module docstring): InputError for a host outside loopback and the local
    network unless `keep_identity` was given explicitly."""
    if not keep_identity and not is_local(host, what):
        raise InputError(what, "results go to loopback or the local network only, unless --keep-identity is "
                         "given (a PACS outside that files them into the patient's own study)", host,
                         "send to a node on the local network, or pass --keep-identity deliberately")


def send(node: Node, files: list[Path], calling: str, timeout: float = 30.0) -> None:
    """C-STORE `files` (DICOM-SEG and SR) to `node` in one association as `calling`; SendError when the
    node cannot be reached, refuses, or answers a failure status for any file."""
    import pydicom
    from pynetdicom import AE
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for uid in (SEGMENTATION_STORAGE, COMPREHENSIVE_3D_SR_STORAGE):
        ae.add_requested_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(node.host, node.port, ae_title=node.ae_title)
    if not assoc.is_established:
        why = "association rejected" if assoc.is_rejected else "no association (unreachable, or aborted)"
        raise SendError(str(node), "the destination must accept the results", why,
                        "check --send-to and that the PACS lists this node's AE title as a modality")
    try:
        for f in files:
            status = assoc.send_c_store(pydicom.dcmread(f))
            code = getattr(status, "Status", None)
            if code != 0x0000:
                raise SendError(str(node), "the destination did not store a result",
                                "no answer" if code is None else f"status 0x{code:04X}", "see the PACS's log")
    finally:
        if assoc.is_established:
            assoc.release()
