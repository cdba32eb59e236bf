"""Whether this worker may still trust its claims, after a stall or a partition.

A worker's claims are its own only while its heartbeat key lives: once the key has been gone
for STRUCTQ_ORPHAN_GRACE_S, the gateway's janitor gives the worker's jobs to new runs (and
refuses to while the key exists: ``Change.unless_alive``). A worker frozen (SIGSTOP, a long
CUDA stall, a paused VM) or cut off from Redis past its heartbeat's life cannot know what
happened meanwhile, so it must not go on as if nothing had: it may hold runs that are no longer
its own, whose engine time is wasted and whose stream deltas would reach readers of the job.

The :class:`Fence` keeps the one fact that decides it: until when the heartbeat key surely
lives (the send time of the last beat Redis took, plus the TTL, extended only by beats that
Redis took before that time). Past it the worker is *cut off*: the dispatcher
(``worker.runner``) writes a heartbeat, reads its ledger, aborts the runs that are no longer its
own (they are *fenced*: nothing more of theirs is written, results, state or stream deltas),
and only then trusts its claims again. The stream publisher holds its writes while the worker
is cut off, and drops a fenced run's deltas. Times are ``time.monotonic()``, which goes on
while a process is stopped.
"""

from __future__ import annotations

import logging
import threading
import time

__all__ = ["Fence"]

log = logging.getLogger(__name__)

# How long a fenced run's token is remembered (its deltas may still be queued somewhere).
_FORGET_S = 600.0


class Fence:
    def __init__(self, heartbeat_ttl_s: float) -> None:
        self._ttl_s = heartbeat_ttl_s
        self._lock = threading.Lock()
        self._trusted_until = time.monotonic() + heartbeat_ttl_s
        self._fenced: dict[str, float] = {}  # run token -> when it was fenced
        self._reported = False  # the current cut-off has been logged

    def beat(self, sent_at: float, acked_at: float) -> None:
        """A heartbeat sent at ``sent_at`` was acknowledged at ``acked_at``. It extends the
        trust only if Redis took it while the previous beat's key surely still lived."""
        with self._lock:
            if acked_at < self._trusted_until:
                self._trusted_until = max(self._trusted_until, sent_at + self._ttl_s)

    def cut_off(self, now: float | None = None) -> bool:
        """Whether the heartbeat key may have lapsed since the claims were last verified."""
        now = time.monotonic() if now is None else now
        with self._lock:
            lapsed = now >= self._trusted_until
            if lapsed and not self._reported:
                self._reported = True
                log.warning(
                    "this worker was cut off (no heartbeat Redis took for %.1f s, longer than "
                    "its life, STRUCTQ_HEARTBEAT_TTL_S=%g: a stall or a partition); its claims "
                    "are checked before anything else is written",
                    now - (self._trusted_until - self._ttl_s),
                    self._ttl_s,
                )
        return lapsed

    def verified(self, beat_sent_at: float) -> None:
        """The claims were read back after a heartbeat sent at ``beat_sent_at`` was taken, and
        the runs no longer this worker's are fenced: trust them again."""
        with self._lock:
            self._trusted_until = beat_sent_at + self._ttl_s
            self._reported = False

    def distrust(self) -> None:
        """Redis says the heartbeat key is gone (a claim refused for it): cut off from now,
        until the claims are verified again."""
        with self._lock:
            self._trusted_until = min(self._trusted_until, time.monotonic())

    def fence(self, run: str) -> None:
        """``run`` (a run token) is no longer this worker's: write nothing more of it."""
        now = time.monotonic()
        with self._lock:
            self._fenced[run] = now
            if len(self._fenced) > 1000:
                horizon = now - _FORGET_S
                self._fenced = {r: at for r, at in self._fenced.items() if at > horizon}

    def fenced(self, run: str) -> bool:
        with self._lock:
            return run in self._fenced
