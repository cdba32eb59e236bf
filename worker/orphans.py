"""The engine's processes must not outlive their worker.

vLLM runs its engine in processes of its own (``VLLM::EngineCore`` and, under it, executor
workers). A warm or cold shutdown stops them, but a SIGKILLed worker (OOM killer, ``kill -9``)
runs no code at all, and the EngineCore would then keep its GPU memory, so that a worker
restarted on the same GPU could not load. Hence a watchdog: a tiny process the worker starts
once its engine is up, holding the read end of a pipe whose write end only the worker has.
When the worker dies, however it dies, the pipe reaches end-of-file; the watchdog then stops
the engine's processes (SIGTERM, then SIGKILL after a grace period) and exits. After a clean
shutdown it finds them gone and just exits.

``python -m worker.orphans PID:START ...`` is the watchdog; it imports nothing of structq.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

__all__ = ["guard_engine_processes"]

_GRACE_S = 5.0


def guard_engine_processes() -> subprocess.Popen[bytes] | None:
    """Start the watchdog over this process's current children (the engine's processes)."""
    import psutil

    children = psutil.Process().children(recursive=True)
    if not children:
        return None
    targets = [f"{child.pid}:{child.create_time()!r}" for child in children]
    read_end, write_end = os.pipe()
    watchdog = subprocess.Popen(
        [sys.executable, "-m", "worker.orphans", *targets],
        stdin=read_end,
        close_fds=True,
    )
    os.close(read_end)
    # Kept open (and never inherited: os.pipe's fds are not) until this process ends.
    _held.append(write_end)
    return watchdog


_held: list[int] = []


def _alive(targets: list[tuple[int, float]]) -> Iterator[Any]:  # psutil.Process
    import psutil

    for pid, created in targets:
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - created) < 0.01:  # not a recycled pid
                yield proc
        except psutil.NoSuchProcess:
            continue


def main(argv: list[str]) -> None:
    import psutil

    targets = [(int(pid), float(created)) for pid, created in (a.split(":", 1) for a in argv)]
    sys.stdin.buffer.read()  # returns at end-of-file: the worker is gone
    procs = list(_alive(targets))
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, left = psutil.wait_procs(procs, timeout=_GRACE_S)
    for proc in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    if procs:
        print(
            f"structq watchdog: worker gone; stopped {len(procs)} engine process(es)"
            f"{f', {len(left)} killed' if left else ''}",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
