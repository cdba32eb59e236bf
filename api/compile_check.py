"""Compile checks with a time bound: every new regex, JSON Schema and grammar is compiled
against the model's vocabulary before its job is enqueued, in a process the gateway kills when
it takes longer than STRUCTQ_COMPILE_TIMEOUT_S. A spec that does not compile, or not in time,
is a 422 and never reaches a GPU worker.

Verdicts are cached by the spec's hash, in this process and in Redis (shared by every gateway),
and concurrent checks of one spec share one compile: a burst of jobs with one schema costs one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import multiprocessing
import threading
import time
from collections import OrderedDict
from multiprocessing.connection import Connection
from pathlib import Path

import redis.asyncio as aioredis

from api.compile_worker import serve
from api.errors import CompileBusy
from api.metrics import compile_checked
from shared.keys import COMPILE_TIMEOUT_VERDICT_TTL_S, COMPILE_VERDICT_PREFIX, COMPILE_VERDICT_TTL_S
from shared.output_types import GrammarSpec, JsonSchemaSpec, OutputType, RegexSpec
from shared.redis_pools import decoded_one

__all__ = ["CompileChecker"]

log = logging.getLogger(__name__)

_LOCAL_CACHE = 4096
_READY_TIMEOUT_S = 120.0  # loading the vocabularies, in a fresh process
CRASHED = "\0crashed"
CRASHED_VERDICT = "it could not be checked"
_TIMED_OUT_VERDICT = "it did not compile within"
# How long this process trusts a verdict that may change, by how it starts: a timeout (the
# machine may be less busy later) and a crash. Definite verdicts (compiles, does not compile)
# are kept.
_TRUSTED_S = {_TIMED_OUT_VERDICT: 3600.0, CRASHED_VERDICT: 600.0}


def _trusted_s(verdict: str) -> float | None:
    """How long this process keeps ``verdict`` (None: for good)."""
    return next((s for start, s in _TRUSTED_S.items() if verdict.startswith(start)), None)


# Specs known to compile, checked once here rather than per gateway: `{"type": "object"}` is
# what OpenAI's `json_object` mode asks for, and costs outlines-core seconds to compile.
_TRUSTED_SCHEMAS = {json.dumps({"type": "object"}, sort_keys=True)}


def _task(spec: OutputType) -> tuple[str, str] | None:
    match spec:
        case RegexSpec():
            return "regex", spec.pattern
        case JsonSchemaSpec():
            schema = json.dumps(spec.json_schema, sort_keys=True)
            return None if schema in _TRUSTED_SCHEMAS else ("json", schema)
        case GrammarSpec():
            return "grammar", spec.grammar
    return None  # text, choice and the scalar types: nothing to compile


class _Process:
    """One compile process; killed and replaced when a compile overruns."""

    def __init__(self, folders: list[str], memory_mb: int) -> None:
        self._folders = folders
        self._memory_mb = memory_mb
        self._ctx = multiprocessing.get_context("spawn")
        self._proc: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._ready = False
        self._lock = threading.Lock()

    def _spawn(self) -> None:
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(
            target=serve,
            args=(child, self._folders, self._memory_mb),
            name="structq-compile",
            daemon=True,
        )
        self._proc.start()
        child.close()
        self._conn = parent
        self._ready = False

    def _ensure_ready(self) -> Connection:
        if self._proc is None or not self._proc.is_alive():
            self._spawn()
        assert self._conn is not None
        if not self._ready:
            if not self._conn.poll(_READY_TIMEOUT_S):
                self.kill()
                raise RuntimeError("the compile-check process did not start")
            self._conn.recv()
            self._ready = True
        return self._conn

    def warm(self) -> None:
        with self._lock:
            self._ensure_ready()

    def run(
        self, folder: str, kind: str, payload: str, timeout_s: float
    ) -> tuple[bool, str | None]:
        """(finished in time, problem or None). Blocking: call it in a thread."""
        with self._lock:
            conn = self._ensure_ready()
            conn.send((folder, kind, payload))
            if conn.poll(timeout_s):
                try:
                    return True, conn.recv()[1]
                except EOFError:  # it died on this spec (a crash, or out of memory)
                    self.kill()
                    return True, CRASHED
            self.kill()
            return False, None

    def kill(self) -> None:
        proc, conn = self._proc, self._conn
        self._proc, self._conn, self._ready = None, None, False
        # May race a start on another thread (the gateway stopping while it warms up): a
        # process that got away is a daemon, ended with the gateway.
        with contextlib.suppress(Exception):
            if proc is not None:
                proc.kill()
                proc.join(5)
        with contextlib.suppress(Exception):
            if conn is not None:
                conn.close()


class CompileChecker:
    def __init__(
        self,
        folders: dict[str, Path],
        timeout_s: float,
        processes: int,
        redis: aioredis.Redis | None = None,
        memory_mb: int = 4096,
    ) -> None:
        self._folders = {model: str(folder) for model, folder in folders.items()}
        self._timeout_s = timeout_s
        self._redis = redis
        unique = sorted(set(self._folders.values()))
        self._procs = [_Process(unique, memory_mb) for _ in range(processes)] if unique else []
        self._idle: asyncio.Queue[_Process] = asyncio.Queue()
        for proc in self._procs:
            self._idle.put_nowait(proc)
        # digest -> (verdict, monotonic expiry or None)
        self._verdicts: OrderedDict[str, tuple[str, float | None]] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[str]] = {}

    def models(self) -> list[str]:
        return sorted(self._folders)

    async def warm(self) -> None:
        """Start the processes (the first check does it otherwise)."""
        await asyncio.gather(*(asyncio.to_thread(proc.warm) for proc in self._procs))

    def close(self) -> None:
        for proc in self._procs:
            proc.kill()

    async def check(self, model: str, spec: OutputType) -> str | None:
        """None when ``spec`` compiles for ``model`` in time (or there is nothing to check:
        no tokenizer for the model, or a spec kind with nothing to compile), else why not."""
        task = _task(spec)
        folder = self._folders.get(model)
        if task is None or folder is None:
            return None
        kind, payload = task
        key = f"{folder}\0{self._timeout_s}\0{kind}\0{payload}"
        digest = hashlib.sha256(key.encode()).hexdigest()
        verdict, expires = self._verdicts.get(digest, (None, None))
        if verdict is not None and expires is not None and expires < time.monotonic():
            verdict = None
        if verdict is None and self._redis is not None:
            cached = await self._redis.get(COMPILE_VERDICT_PREFIX + digest)
            verdict = decoded_one(cached)
        if verdict is None:
            running = self._inflight.get(digest)
            if running is None:
                running = asyncio.get_running_loop().create_future()
                self._inflight[digest] = running
                try:
                    running.set_result(await self._compile(digest, folder, kind, payload))
                except BaseException as exc:
                    running.set_exception(exc)
                    raise
                finally:
                    del self._inflight[digest]
            verdict = await asyncio.shield(running)
        if digest not in self._verdicts or self._verdicts[digest][0] != verdict:
            ttl = _trusted_s(verdict)
            self._verdicts[digest] = (verdict, None if ttl is None else time.monotonic() + ttl)
        self._verdicts.move_to_end(digest)
        while len(self._verdicts) > _LOCAL_CACHE:
            self._verdicts.popitem(last=False)
        return verdict or None

    async def _compile(self, digest: str, folder: str, kind: str, payload: str) -> str:
        try:
            # Every process busy for this long: the checker is swamped; the client retries.
            proc = await asyncio.wait_for(self._idle.get(), timeout=4 * self._timeout_s + 10)
        except TimeoutError:
            raise CompileBusy("the gateway's compile checks are all busy; retry shortly") from None
        started = time.perf_counter()
        try:
            in_time, problem = await asyncio.to_thread(
                proc.run, folder, kind, payload, self._timeout_s
            )
        finally:
            self._idle.put_nowait(proc)
        seconds = time.perf_counter() - started
        if not in_time:
            compile_checked("timeout", seconds)
            verdict = f"{_TIMED_OUT_VERDICT} {self._timeout_s:g} s (STRUCTQ_COMPILE_TIMEOUT_S)"
            redis_ttl: int | None = COMPILE_TIMEOUT_VERDICT_TTL_S
        elif problem == CRASHED:
            compile_checked("crashed", seconds)
            # Perhaps this spec, perhaps the machine (memory): not shared, not kept long.
            return f"{CRASHED_VERDICT}: the compiler stopped on it"
        else:
            compile_checked("compiles" if problem is None else "does_not_compile", seconds)
            verdict = "" if problem is None else f"it does not compile: {problem}"
            redis_ttl = COMPILE_VERDICT_TTL_S
        if self._redis is not None and redis_ttl is not None:
            with contextlib.suppress(Exception):  # the cache is an optimisation
                await self._redis.set(COMPILE_VERDICT_PREFIX + digest, verdict, ex=redis_ttl)
        return verdict
