"""A loopback uvicorn server in a thread and a stdlib HTTP client: shared by tests/ensemble/test_serve.py
and bench/serve_bench.py."""

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


def post(url: str, files: dict[str, tuple[str, bytes]], raw: bytes | None = None) -> tuple[int, dict]:
    """multipart/form-data POST with stdlib only; returns (status, JSON body)."""
    boundary = uuid.uuid4().hex
    body = b""
    for name, (filename, data) in files.items():
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n"
                 "Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    body = body if raw is None else raw
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=300)
    conn.putrequest("POST", u.path)
    conn.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
    conn.putheader("Content-Length", str(len(body)))
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


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


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
