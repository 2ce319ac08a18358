"""A real S3 HTTP endpoint (moto in server mode) that can go down and come back on the same port.

backupd runs as a subprocess and reaches it over HTTP exactly as it would reach AWS/MinIO.
moto keeps its state in this process, so buckets and objects survive stop()/start().
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from moto.server import ThreadedMotoServer

from .ports import free_port

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

REGION = "us-east-1"
ACCESS_KEY = "testing"
SECRET_KEY = "testing"  # moto accepts any credentials


class S3Server:
    def __init__(self) -> None:
        self.port = 0  # helpers.ports' choice on first start, then reused by every restart
        self._moto: ThreadedMotoServer | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._hold: Callable[[str, str], bool] | None = None
        self._held = threading.Event()
        self._release = threading.Event()

    @property
    def endpoint_url(self) -> str:
        if not self.port:
            raise RuntimeError("S3Server not started")
        return f"http://127.0.0.1:{self.port}"

    def is_running(self) -> bool:
        return self._moto is not None

    def start(self) -> None:
        if self._moto is not None:
            return
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port or free_port(),
                                  verbose=False)
        moto.start()
        server = moto._server  # the werkzeug server; moto exposes no public handle
        assert server is not None
        self.port = moto.get_host_and_port()[1]
        # Track accepted connections so stop() can cut them: otherwise keep-alive connections
        # outlive the listener and an upload "interrupted" by stop() would quietly succeed.
        accept = server.get_request

        def tracking_accept() -> tuple[socket.socket, Any]:
            conn, addr = accept()
            with self._lock:
                self._conns.add(conn)
            return conn, addr

        server.get_request = tracking_accept  # type: ignore[method-assign]
        server.app = self._holding(server.app)
        self._moto = moto

    def hold_requests(self, match: Callable[[str, str], bool]) -> threading.Event:
        """From now on, requests for which ``match(method, path_and_query)`` is true hang
        (unanswered, body unread) until stop(): a deterministic "S3 died mid-upload".
        Returns an Event set when the first such request has arrived."""
        self._held.clear()
        self._release.clear()
        self._hold = match
        return self._held

    def _holding(self, app: Any) -> Any:
        def wrapped(environ: dict[str, Any], start_response: Any) -> Any:
            target = environ.get("PATH_INFO", "") + "?" + environ.get("QUERY_STRING", "")
            match = self._hold
            if match is not None and match(environ["REQUEST_METHOD"], target):
                self._held.set()
                self._release.wait(60)
                start_response("503 Service Unavailable", [("Content-Length", "0")])
                return [b""]
            return app(environ, start_response)

        return wrapped

    def stop(self) -> None:
        """Take S3 down: close the listener (new connections are refused) and open ones."""
        moto, self._moto = self._moto, None
        self._hold = None
        if moto is None:
            self._release.set()
            return
        moto.stop()
        if moto._server is not None:
            # moto's stop() leaves the socket bound, which would block a restart on this port.
            moto._server.server_close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            with contextlib.suppress(OSError):  # already closed by its handler
                conn.shutdown(socket.SHUT_RDWR)
        self._release.set()  # held requests end, on connections already cut

    def restart(self) -> None:
        self.stop()
        self.start()

    def reset(self) -> None:
        """Forget all buckets and objects (moto's global in-memory state)."""
        req = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()

    def client(self) -> S3Client:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            # Few, quick retries: a test that stops the server wants the failure, not a wait.
            config=Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=5),
        )

    def env(self) -> dict[str, str]:
        """The variables backupd reads to reach this endpoint."""
        return {
            "S3_ENDPOINT_URL": self.endpoint_url,
            "S3_REGION": REGION,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        }

    def __enter__(self) -> S3Server:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextlib.contextmanager
def strict_s3_server() -> Iterator[str]:
    """A separate moto server that authenticates every request (no IAM users exist, so every
    access key is rejected, as AWS rejects a revoked key). Yields its endpoint URL."""
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    moto_server = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(moto_server), "-H", "127.0.0.1", "-p", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("moto_server with authentication did not start")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
