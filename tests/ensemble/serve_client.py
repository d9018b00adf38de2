"""A loopback uvicorn server in a thread and a stdlib HTTP client: shared by tests/ensemble/test_serve.py,
test_serve_phi.py and bench/serve_bench.py. `stream` sends a body over a raw socket at a chosen pace
(chunked or not) while the answer is read, for the upload-limit tests."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid


def form(files: dict[str, tuple[str, bytes]], boundary: str) -> bytes:
    """A multipart/form-data body of file fields {name: (filename, data)}."""
    body = b""
    for name, (filename, data) in files.items():
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n"
                 "Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


def post(url: str, files: dict[str, tuple[str, bytes]], raw: bytes | None = None,
         token: str | None = None) -> tuple[int, dict]:
    """multipart/form-data POST with stdlib only; returns (status, JSON body)."""
    boundary = uuid.uuid4().hex
    body = form(files, boundary) if raw is None else raw
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=300)
    conn.putrequest("POST", u.path)
    conn.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
    conn.putheader("Content-Length", str(len(body)))
    if token is not None:
        conn.putheader("Authorization", f"Bearer {token}")
    conn.endheaders()
    try:
        conn.send(body)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered (413) and closed before reading it all; its answer is still readable
    r = conn.getresponse()
    try:
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def get(url: str, token: str | None = None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Stream:
    """POST /predict with a body sent from a thread over a raw socket, `chunk` bytes every `pause` s, as
    HTTP/1.1 chunked transfer (or with a Content-Length); the answer is read meanwhile. `sent` counts
    the body bytes the server's socket took before it answered and closed."""

    def __init__(self, url: str, chunks, chunked: bool = True, length: int | None = None):
        u = urllib.parse.urlsplit(url)
        self.boundary, self.sent, self.done = uuid.uuid4().hex, 0, False
        self.sock = socket.create_connection((u.hostname, u.port), timeout=300)
        head = [f"POST {u.path} HTTP/1.1", f"Host: {u.hostname}", "Content-Type: multipart/form-data; "
                f"boundary={self.boundary}", "Transfer-Encoding: chunked" if chunked else f"Content-Length: {length}"]
        self.sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        self.thread = threading.Thread(target=self._send, args=(chunks, chunked), daemon=True)
        self.thread.start()

    def _send(self, chunks, chunked: bool):
        try:
            for data, pause in chunks(self.boundary):
                self.sock.sendall(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
                self.sent += len(data)
                time.sleep(pause)
            if chunked:
                self.sock.sendall(b"0\r\n\r\n")
            self.done = True
        except OSError:  # the server answered and closed the connection: the client cannot finish
            pass

    def answer(self) -> tuple[int, dict]:
        r = http.client.HTTPResponse(self.sock)
        try:
            r.begin()
            return r.status, json.loads(r.read())
        finally:
            self.thread.join(timeout=30)
            self.sock.close()


class Running:
    """An app served by uvicorn on a free loopback port, in a daemon thread."""

    def __init__(self, app):
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        self.app = app

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=30)
