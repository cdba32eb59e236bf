"""A TCP proxy that cuts one process off from Redis, for partition tests and the chaos soak.

Point one worker's STRUCTQ_REDIS_URL at :attr:`Partition.url` (the gateway and its janitor keep
their direct connection) and cut it two ways:

- :meth:`Partition.reset`: every connection through the proxy is closed with a TCP reset, and
  each new one is reset as soon as it is accepted (a crashed router, a network policy that
  rejects);
- :meth:`Partition.black_hole`: bytes stop flowing both ways, with no reset and no error (a
  dropped route, a frozen NAT entry); new connections are accepted and get nothing. The proxy
  holds what it read meanwhile and delivers it on :meth:`Partition.restore`, as TCP would
  retransmit it once a route is back; a client that timed out has closed its end by then.

:meth:`Partition.restore` lets bytes flow again. Threads only, in the caller's process.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from enum import StrEnum

__all__ = ["Mode", "Partition"]

_CHUNK = 65536


class Mode(StrEnum):
    OPEN = "open"
    RESET = "reset"
    BLACK_HOLE = "black-hole"


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP reset (SO_LINGER 0), not a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class Partition:
    def __init__(self, upstream_port: int, host: str = "127.0.0.1") -> None:
        self._upstream = (host, upstream_port)
        self._listener = socket.create_server((host, 0))
        self.port = self._listener.getsockname()[1]
        self._mode = Mode.OPEN
        self._changed = threading.Condition()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="partition", daemon=True)
        self._thread.start()

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    @property
    def mode(self) -> Mode:
        return self._mode

    def reset(self) -> None:
        with self._changed:
            self._mode = Mode.RESET
            pairs, self._pairs = self._pairs, []
            self._changed.notify_all()
        for client, upstream in pairs:
            _reset(client)
            _reset(upstream)

    def black_hole(self) -> None:
        with self._changed:
            self._mode = Mode.BLACK_HOLE
            self._changed.notify_all()

    def restore(self) -> None:
        with self._changed:
            self._mode = Mode.OPEN
            self._changed.notify_all()

    def close(self) -> None:
        self._closed = True
        self.reset()
        with contextlib.suppress(OSError):
            self._listener.close()

    # -- threads ----------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._mode is Mode.RESET:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self._upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _reset(client)
                continue
            with self._changed:
                self._pairs.append((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _flowing(self) -> bool:
        """Wait while the proxy is a black hole; whether bytes may flow (False: reset)."""
        with self._changed:
            while self._mode is Mode.BLACK_HOLE and not self._closed:
                self._changed.wait()
            return self._mode is Mode.OPEN

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while self._flowing():
                data = src.recv(_CHUNK)
                if not data:
                    break
                if not self._flowing():  # cut while this was read: held, or dropped on reset
                    break
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):  # the other direction's pump sees it and ends too
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with self._changed:
            self._pairs = [pair for pair in self._pairs if src not in pair]
        src.close()
