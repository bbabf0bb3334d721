"""A loopback HTTP endpoint for QStash tests: records every request and answers as told."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Received", "Sink"]


@dataclasses.dataclass(frozen=True)
class Received:
    """One request that reached the test receiver."""

    method: str
    path: str
    url: str
    headers: dict[str, str]
    body: bytes
    started: float
    finished: float
    raw_headers: tuple[tuple[str, str], ...] = ()

    def count(self, name: str) -> int:
        """How many times a header arrived, names compared without case."""
        return sum(key.lower() == name.lower() for key, _ in self.raw_headers)

    def json(self) -> Any:
        return json.loads(self.body)


class Sink:
    """A loopback HTTP endpoint that records requests and answers as told."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._condition = threading.Condition(self._lock)
        self.received: list[Received] = []
        self._answers: dict[str, list[tuple[int, dict[str, str], bytes]]] = {}
        self._slow: dict[str, float] = {}
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_POST(self) -> None:
                sink.handle(self)

            def do_PUT(self) -> None:
                sink.handle(self)

            def do_GET(self) -> None:
                sink.handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = False
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}
        )
        self._thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path

    def respond(self, path: str, *answers: tuple[int, dict[str, str], bytes]) -> None:
        with self._lock:
            self._answers.setdefault(path, []).extend(answers)

    def slow(self, path: str, seconds: float) -> None:
        with self._lock:
            self._slow[path] = seconds

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        started = time.time()
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        path = handler.path.split("?")[0]
        with self._lock:
            queue = self._answers.get(path) or []
            status, headers, answer = queue.pop(0) if queue else (200, {}, b"ok")
            pause = self._slow.get(path, 0.0)
        if pause:
            time.sleep(pause)
        # Recorded before answering, so once the server has the answer the
        # request is already visible to the test.
        with self._condition:
            self.received.append(
                Received(
                    method=handler.command,
                    path=path,
                    url=self.base + handler.path,
                    headers={k.lower(): v for k, v in handler.headers.items()},
                    body=body,
                    started=started,
                    finished=time.time(),
                    raw_headers=tuple(handler.headers.items()),
                )
            )
            self._condition.notify_all()
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(answer)))
        handler.end_headers()
        handler.wfile.write(answer)

    def requests(self, path: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self.received if path is None or r.path == path]

    def wait_for(self, count: int, path: str | None = None, timeout: float = 5.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self._condition:
            while True:
                found = [r for r in self.received if path is None or r.path == path]
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"expected {count} requests to {path}, got {len(found)}")
                self._condition.wait(remaining)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
