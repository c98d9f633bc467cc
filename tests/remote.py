# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Real servers on localhost for the object-store tests: an S3-API server (moto's server mode, as s3fs's own tests
use) and a plain HTTP server over a folder that can cut a connection mid-file."""

from __future__ import annotations

import contextlib
import functools
import http.server
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """An S3-API server on a free localhost port; yields its endpoint URL."""
    moto_server = pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # its request lines would join a command's output
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def use_s3(monkeypatch: pytest.MonkeyPatch, endpoint: str, bucket: str) -> None:
    """Point this process (and its children) at the server, the standard way (environment), and make `bucket`."""
    import fsspec

    for k, v in {**S3_ENV, "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(k, v)
    fsspec.filesystem("s3", skip_instance_cache=True).mkdir(bucket)


class _Handler(http.server.SimpleHTTPRequestHandler):
    cut: set[str]  # paths whose next GET sends half the body, then closes the connection
    requests: list[str]

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.requests.append(self.path)
        if self.path in self.cut:
            self.cut.discard(self.path)
            data = Path(self.translate_path(self.path)).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        super().do_GET()


@contextlib.contextmanager
def http_server(folder: Path) -> Iterator[tuple[str, set[str], list[str]]]:
    """Serve `folder` read-only on a free localhost port; yields (base URL, paths to cut once, requests seen)."""
    cut: set[str] = set()
    requests: list[str] = []
    handler = type("Handler", (_Handler,), {"cut": cut, "requests": requests})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", cut, requests
    finally:
        server.shutdown()
        server.server_close()


def tree_digest(folder: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every shard and manifest under `folder` (what byte-identity compares)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and (p.suffix == ".tar" or p.name == "manifest.json") and ".parts" not in p.parts}

