"""A real HTTP server that receives webhooks, for the tests and ``make deploy-check``: each path
answers from its own script of status codes (the last one repeats; ``"hang"`` sleeps past any
client timeout), and every request is recorded. On localhost by default; ``host`` binds
elsewhere (the deploy check's, on the address containers reach the host at)."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


class Receiver:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self._host = host
        self.requests: list[Received] = []
        self._scripts: dict[str, list[int | str]] = {}
        self._served: defaultdict[str, int] = defaultdict(int)
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                answer = receiver._answer(self.path)
                with receiver._changed:
                    receiver.requests.append(
                        Received(self.path, dict(self.headers.items()), body, time.time())
                    )
                    receiver._changed.notify_all()
                if answer == "hang":
                    time.sleep(5)
                    return
                self.send_response(int(answer))
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer((host, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def url(self, path: str, *script: int | str) -> str:
        """A URL on this receiver whose requests are answered by ``script`` (default 200)."""
        self._scripts[path] = list(script) or [200]
        return f"http://{self._host}:{self._server.server_address[1]}{path}"

    def _answer(self, path: str) -> int | str:
        script = self._scripts.get(path, [404])
        index = min(self._served[path], len(script) - 1)
        self._served[path] += 1
        return script[index]

    def wait(self, path: str, count: int, timeout_s: float = 60) -> list[Received]:
        """The first ``count`` requests to ``path``, waiting for them to arrive."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                got = [r for r in self.requests if r.path == path]
                if len(got) >= count:
                    return got[:count]
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"{len(got)} of {count} requests to {path} arrived"
                self._changed.wait(remaining)

    def wait_until(
        self, path: str, enough: Callable[[list[Received]], bool], timeout_s: float = 60
    ) -> list[Received]:
        """Every request to ``path`` so far, once ``enough`` says they are enough."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                got = [r for r in self.requests if r.path == path]
                if enough(got):
                    return got
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"{len(got)} requests to {path} were not enough"
                self._changed.wait(remaining)

    def to(self, path: str) -> list[Received]:
        with self._changed:
            return [r for r in self.requests if r.path == path]
