"""Running the raw-vLLM and structq sides of one measurement side by side in time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["paired"]

_R = TypeVar("_R")
_T = TypeVar("_T")

# vLLM's multiprocess executor keeps polling its shared-memory queue for 1 s after its last
# message (shm_broadcast's busy_loop_s), a whole core on CPU: each side starts once the other
# engine has gone quiet.
_SETTLE_S = 1.5


def _settled(run: Callable[[], _R]) -> _R:
    time.sleep(_SETTLE_S)
    return run()


def paired(i: int, raw: Callable[[], _R], ours: Callable[[], _T]) -> tuple[_R, _T]:
    """Run both sides of one measurement back to back, in turn first, so that neither always
    gets the machine as the other left it."""
    if i % 2 == 0:
        first = _settled(raw)
        return first, _settled(ours)
    second = _settled(ours)
    return _settled(raw), second
