"""A real local HTTP endpoint standing in for Slack incoming webhooks and heartbeat URLs.

It records every request and answers according to a behaviour tests can switch at any time,
so notification retries, rate limits, hangs and refused connections are exercised end to end.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

from . import leakcheck
from .ports import free_port

Behaviour = Literal["ok", "error", "ratelimit", "hang", "refuse", "close"]


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str  # includes the query string
    headers: dict[str, str]  # keys lower-cased: HTTP header names are case-insensitive
    body: bytes
    json: Any | None  # parsed body when it is valid JSON, else None

    @property
    def payload(self) -> dict[str, Any]:
        """The body as a JSON object (what Slack and webhooks are sent); fails otherwise."""
        assert isinstance(self.json, dict), f"not a JSON object: {self.body!r}"
        return self.json


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a hung handler must never keep the test process alive
    receiver: HttpReceiver


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        recorded = RecordedRequest(
            method=self.command,
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            json=parsed,
        )
        status, headers, text = self.server.receiver._record_and_decide(recorded)
        if status is None:
            if self.server.receiver.behaviour == "close":
                # "close": drop the connection after reading the request, with no answer.
                self.close_connection = True
                return
            # "hang": hold the connection open, never answer, until the receiver closes.
            self.server.receiver._closing.wait()
            self.close_connection = True
            return
        payload = text.encode()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean; requests are in receiver.requests


class HttpReceiver:
    def __init__(
        self, behaviour: Behaviour = "ok", *, retry_after: int = 1, times: int = 1
    ) -> None:
        self.requests: list[RecordedRequest] = []
        self._cond = threading.Condition()
        self._closing = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._reserved: list[socket.socket] = []
        self.port = 0
        self.set_behaviour(behaviour, retry_after=retry_after, times=times)

    # --- behaviour -----------------------------------------------------------------------------

    def set_behaviour(self, behaviour: Behaviour, *, retry_after: int = 1, times: int = 1) -> None:
        """Switch behaviour. ``ratelimit`` answers 429 ``times`` times, then behaves like ``ok``.

        ``refuse`` closes the listening socket (connections are refused); switching away from it
        reopens the same port.
        """
        with self._cond:
            self.behaviour: Behaviour = behaviour
            self.retry_after = retry_after
            self.ratelimit_remaining = times
        if self.port:  # already started
            if behaviour == "refuse":
                self._stop_listening()
            elif self._server is None:
                self._listen()

    def _record_and_decide(self, req: RecordedRequest) -> tuple[int | None, dict[str, str], str]:
        # What backupd sent (query, headers, payload) is evidence for the secret-leak check;
        # the path is where the test told it to send, so it is the secret, not a leak.
        query = req.path.partition("?")[2]
        leakcheck.record_output(f"http {req.method} request", f"{query}\n{req.headers}\n"
                                + req.body.decode("utf-8", "replace"))
        with self._cond:
            self.requests.append(req)
            self._cond.notify_all()
            if self.behaviour in ("hang", "close"):
                return None, {}, ""
            if self.behaviour == "error":
                return 500, {}, "internal_error"
            if self.behaviour == "ratelimit" and self.ratelimit_remaining > 0:
                self.ratelimit_remaining -= 1
                return 429, {"Retry-After": str(self.retry_after)}, "rate_limited"
            return 200, {}, "ok"

    # --- lifecycle -----------------------------------------------------------------------------

    def _listen(self) -> None:
        # A port from helpers.ports: "refuse" and back reopens it, and no client's
        # connection can have taken it in between.
        server = _Server(("127.0.0.1", self.port or free_port()), _Handler)
        server.receiver = self
        self.port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()

    def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def start(self) -> HttpReceiver:
        self._closing.clear()
        self._listen()
        if self.behaviour == "refuse":
            self._stop_listening()
        return self

    def close(self) -> None:
        self._closing.set()  # releases handlers stuck in "hang"
        self._stop_listening()
        for sock in self._reserved:
            sock.close()
        self._reserved.clear()

    def __enter__(self) -> HttpReceiver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- inspection ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("HttpReceiver not started")
        return f"http://127.0.0.1:{self.port}/hook"

    def refused_url(self) -> str:
        """A URL whose port is bound but not listening: connecting fails with ECONNREFUSED.

        Holding the bound socket (until close()) stops anything else from taking the port.
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self._reserved.append(sock)
        return f"http://127.0.0.1:{sock.getsockname()[1]}/hook"

    def wait_for(self, n: int, timeout: float = 10.0) -> list[RecordedRequest]:
        """Block until at least ``n`` requests arrived; returns a snapshot of all of them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.requests) < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"expected {n} requests within {timeout}s, got {len(self.requests)}"
                    )
                self._cond.wait(remaining)
            return list(self.requests)
