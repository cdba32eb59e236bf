"""Logs of every structq process: one JSON object per line (python-json-logger), or plain text
for a terminal (STRUCTQ_LOG_FORMAT), on stderr.

Each line carries, when known, ``request_id`` (the gateway request that submitted the job:
``X-Request-ID``, or one made for it), ``job_id``, ``model`` and ``worker``. They come from
``extra=`` on the log call (``job_fields(job)``), else from the context (``bind``, a
contextvar: the gateway's request-id middleware sets it per request), else from the process
(``setup(..., worker=..., model=...)``). So ``grep <request id>`` over the logs of the gateway,
the workers and the webhook workers follows one job end to end.

``config()`` is a ``logging.config.dictConfig`` dict, so uvicorn (``log_config=``, in each of
its worker processes) and vLLM (``VLLM_LOGGING_CONFIG_PATH``, in its engine processes) apply
the same setup.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import logging.config
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

if TYPE_CHECKING:
    from shared.jobs import Job

__all__ = [
    "CONTEXT_FIELDS",
    "ContextFilter",
    "LogFormat",
    "bind",
    "config",
    "current",
    "job_fields",
    "make_formatter",
    "request_id",
    "setup",
    "vllm_config_file",
]

LogFormat = Literal["json", "text"]

# The fields that follow a job through the processes, in the order text lines show them.
CONTEXT_FIELDS = ("request_id", "job_id", "model", "worker")

_EMPTY: Mapping[str, str] = MappingProxyType({})
_context: ContextVar[Mapping[str, str]] = ContextVar("structq_log_context")

# Loggers that bring their own handlers: theirs are removed and their records go to the root's.
_ROUTED = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi", "vllm", "celery")


def current() -> Mapping[str, str]:
    """The context fields bound here (see ``bind``)."""
    return _context.get(_EMPTY)


def request_id() -> str | None:
    """The request id bound here: the gateway request being served, if any."""
    return _context.get(_EMPTY).get("request_id")


@contextlib.contextmanager
def bind(**fields: str | None) -> Iterator[None]:
    """Add ``fields`` (None: left out) to every log line made inside the block (and in tasks
    it starts)."""
    token = _context.set({**_context.get(_EMPTY), **{k: v for k, v in fields.items() if v}})
    try:
        yield
    finally:
        _context.reset(token)


def job_fields(job: Job) -> dict[str, str]:
    """``extra=`` for a log line about ``job``: its id, model, adapter, worker and request id
    (those it has)."""
    fields = {
        "job_id": job.id,
        "model": job.model,
        "adapter": job.adapter,
        "worker": job.worker,
        "request_id": job.request_id,
    }
    return {k: v for k, v in fields.items() if v}


class ContextFilter(logging.Filter):
    """Adds the context fields a record lacks: from ``bind``, else the process's ``static``."""

    def __init__(self, static: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self._static = {k: v for k, v in (static or {}).items() if v}

    def filter(self, record: logging.LogRecord) -> bool:
        bound = _context.get(_EMPTY)
        for name in CONTEXT_FIELDS:
            if name in record.__dict__:
                continue
            value = bound.get(name) or self._static.get(name)
            if value:
                setattr(record, name, value)
        return True


class _TextFormatter(logging.Formatter):
    """``time level logger: message [request_id=... job_id=...]``."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = [f"{k}={record.__dict__[k]}" for k in CONTEXT_FIELDS if k in record.__dict__]
        if not fields:
            return line
        first, newline, rest = line.partition("\n")  # a traceback stays below the fields
        return f"{first} [{' '.join(fields)}]{newline}{rest}"


def make_formatter(kind: LogFormat = "json") -> logging.Formatter:
    """The formatter of ``kind`` (a ``dictConfig`` factory)."""
    if kind == "text":
        return _TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    return JsonFormatter(
        "{levelname}{name}{message}",
        style="{",
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp="time",
        # uvicorn's colored copy of the message, Python 3.12's asyncio task name: noise.
        reserved_attrs=[*RESERVED_ATTRS, "color_message", "taskName"],
    )


def config(
    kind: LogFormat = "json",
    level: str = "INFO",
    *,
    worker: str | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """The ``dictConfig`` of a structq process: one stderr handler on the root logger, with
    the formatter of ``kind`` and the context filter (``worker``, ``model``: the process's own,
    for every line)."""
    static = {k: v for k, v in {"worker": worker, "model": model}.items() if v}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": "shared.logs.ContextFilter", "static": static}},
        "formatters": {"main": {"()": "shared.logs.make_formatter", "kind": kind}},
        "handlers": {
            "main": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "main",
                "filters": ["context"],
            }
        },
        "root": {"level": level.upper(), "handlers": ["main"]},
        "loggers": {
            name: {"handlers": [], "propagate": True, "level": "NOTSET"} for name in _ROUTED
        },
    }


def setup(
    kind: LogFormat = "json",
    level: str = "INFO",
    *,
    worker: str | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """Configure this process's logging (see ``config``); returns the config applied."""
    applied = config(kind, level, worker=worker, model=model)
    logging.config.dictConfig(applied)
    for name in _ROUTED:  # a library's earlier dictConfig may have switched one off
        logging.getLogger(name).disabled = False
    return applied


def vllm_config_file(applied: Mapping[str, Any]) -> None:
    """Have vLLM apply ``applied`` (this process's config) in its own processes too, rather
    than give its ``vllm`` logger a handler of its own: its lines are then formatted like the
    rest, with this worker's fields. Left alone when VLLM_CONFIGURE_LOGGING=0 or
    VLLM_LOGGING_CONFIG_PATH is set."""
    if os.environ.get("VLLM_CONFIGURE_LOGGING", "1") == "0":
        return
    if os.environ.get("VLLM_LOGGING_CONFIG_PATH"):
        return
    with tempfile.NamedTemporaryFile(
        "w", prefix="structq-logging-", suffix=".json", delete=False
    ) as file:
        json.dump(applied, file)
    os.environ["VLLM_LOGGING_CONFIG_PATH"] = file.name
    atexit.register(_remove, file.name)


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
