"""Redis clients for every structq process, from STRUCTQ_REDIS_URL: one Redis, or a Sentinel
group that names the primary.

``STRUCTQ_REDIS_URL`` takes either form:

- ``redis://[:password@]host:port/db`` (or ``rediss://``): one server;
- ``redis+sentinel://[:password@]host1:port1,host2:port2,.../service[/db]``: the Sentinels
  watching ``service``; every client asks them for the current primary, and after a failover
  reconnects to the new one. The password is the primary's (and the Sentinels', unless
  ``?sentinel_password=`` gives theirs).

The pools block when every connection is busy (redis-py's default pool refuses outright,
turning a burst into errors; Sentinel pools are not capped), and every client retries a
command a few times, with backoff, on a broken connection: after a Redis restart every pooled
socket is dead, and without this the first requests to meet one would fail although Redis is
back. A retried job-store script is safe: each is guarded by the job's state, and a change
already applied is recognised as such.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote, unquote, urlsplit

import redis
import redis.asyncio as aioredis
import redis.asyncio.retry
import redis.asyncio.sentinel
import redis.retry
import redis.sentinel
from redis.backoff import ExponentialWithJitterBackoff

from shared.errors import RedisGone

__all__ = [
    "OUTAGE_ERRORS",
    "SentinelTarget",
    "async_client",
    "celery_broker",
    "celery_silent_connection_options",
    "dead_connection_bound_s",
    "decoded",
    "decoded_one",
    "parse_sentinel",
    "retrying",
    "sync_client",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

_RETRIES = 4
_RETRY_ON = [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError]
_SENTINEL_SCHEME = "redis+sentinel"


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    sentinels: list[tuple[str, int]]
    service: str
    db: int = 0
    password: str | None = None
    sentinel_password: str | None = None


def parse_sentinel(url: str) -> SentinelTarget | None:
    """The Sentinel group a ``redis+sentinel://`` URL names (None: a plain Redis URL)."""
    parts = urlsplit(url)
    if parts.scheme != _SENTINEL_SCHEME:
        return None
    hosts = parts.netloc.rpartition("@")[2]
    sentinels = []
    for host in hosts.split(","):
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit():
            raise ValueError(f"a Sentinel address must be host:port, got {host!r} in {url!r}")
        sentinels.append((name.strip("[]"), int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError(f"a redis+sentinel URL names its service: {url!r}")
    query = parse_qs(parts.query)
    password = unquote(parts.password) if parts.password else None
    given = query.get("sentinel_password")
    return SentinelTarget(
        sentinels=sentinels,
        service=path[0],
        db=int(path[1]) if len(path) > 1 else 0,
        password=password,
        sentinel_password=given[0] if given else password,
    )


def _backoff() -> ExponentialWithJitterBackoff:
    return ExponentialWithJitterBackoff(base=0.05, cap=1.0)


def async_client(url: str, max_connections: int, timeout_s: float = 10) -> aioredis.Redis:
    target = parse_sentinel(url)
    retry = redis.asyncio.retry.Retry(_backoff(), _RETRIES)
    if target is not None:
        sentinel = redis.asyncio.sentinel.Sentinel(
            target.sentinels,
            sentinel_kwargs={"password": target.sentinel_password, "socket_timeout": 2},
            socket_timeout=timeout_s,
        )
        primary: aioredis.Redis = sentinel.master_for(
            target.service,
            db=target.db,
            password=target.password,
            retry=retry,
            retry_on_error=_RETRY_ON,
        )
        return primary
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_s,
        retry=retry,
        retry_on_error=_RETRY_ON,
    )
    return aioredis.Redis(connection_pool=pool)


def sync_client(
    url: str,
    max_connections: int = 8,
    timeout_s: float = 30,
    socket_timeout_s: float | None = None,
    retries: int | None = None,
) -> redis.Redis:
    """A client of STRUCTQ_REDIS_URL. ``timeout_s``: how long a caller waits for a free pooled
    connection. ``socket_timeout_s`` (a worker's): how long any command, or a connect, waits
    on a silent connection (a black-holed network: no reply, no reset) before it counts as
    broken; the connection is then dropped and the command tried once more, so a call returns
    or fails within about twice that (see ``dead_connection_bound_s``). Without it a command
    waits for as long as the kernel keeps the connection. ``retries``: tries after the first on
    a broken connection (default: 4, or 1 with ``socket_timeout_s``)."""
    target = parse_sentinel(url)
    silent = _silent_connection_options(socket_timeout_s)
    if retries is None:
        retries = _RETRIES if socket_timeout_s is None else 1
    retry = redis.retry.Retry(_backoff(), retries)
    if target is not None:
        sentinel = redis.sentinel.Sentinel(
            target.sentinels,
            sentinel_kwargs={"password": target.sentinel_password, "socket_timeout": 2},
            **{"socket_timeout": timeout_s, **silent},
        )
        client: redis.Redis = sentinel.master_for(
            target.service,
            db=target.db,
            password=target.password,
            retry=retry,
            retry_on_error=_RETRY_ON,
        )
        return client
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_s,
        retry=retry,
        retry_on_error=_RETRY_ON,
        **silent,
    )
    return redis.Redis(connection_pool=pool)


def _silent_connection_options(socket_timeout_s: float | None) -> dict[str, Any]:
    """redis-py's options that bound a wait on a silent connection (none: no bound)."""
    if socket_timeout_s is None:
        return {}
    return {
        "socket_timeout": socket_timeout_s,
        "socket_connect_timeout": socket_timeout_s,
        "socket_keepalive": True,
        # An idle connection (a pub/sub subscription) is pinged before use past this.
        "health_check_interval": socket_timeout_s,
    }


def dead_connection_bound_s(socket_timeout_s: float) -> float:
    """The longest a call of a ``sync_client(..., socket_timeout_s=...)`` client waits on a
    dead connection before it returns or raises: the try, one retry on a new connection, and
    the backoff between them."""
    return 2 * socket_timeout_s + 0.1


def celery_silent_connection_options(socket_timeout_s: float) -> dict[str, Any]:
    """kombu's transport options for the same bound on Celery's own connections: commands and
    connects time out after ``socket_timeout_s``, and a BRPOP that a live server would have
    answered (kombu's brpop_timeout, 1 s) is dropped after ``socket_timeout_s`` more."""
    return {
        "socket_timeout": socket_timeout_s,
        "socket_connect_timeout": socket_timeout_s,
        "socket_keepalive": True,
        "health_check_interval": max(1, round(socket_timeout_s)),
    }


def celery_broker(url: str) -> tuple[str, dict[str, Any]]:
    """Celery's broker URL and transport options for STRUCTQ_REDIS_URL (kombu's Sentinel
    transport for a ``redis+sentinel://`` URL)."""
    target = parse_sentinel(url)
    if target is None:
        return url, {}
    auth = f":{quote(target.password, safe='')}@" if target.password else ""
    broker = ";".join(
        f"sentinel://{auth}{host}:{port}/{target.db}" for host, port in target.sentinels
    )
    options: dict[str, Any] = {"master_name": target.service}
    if target.sentinel_password:
        options["sentinel_kwargs"] = {"password": target.sentinel_password}
    return broker, options


def decoded(reply: Any) -> list[str]:
    """A list reply's members as text. structq's clients never decode replies themselves
    (bytes in, bytes out), while redis-py annotates every reply as maybe-str: this is the one
    place that says what they are."""
    return [member.decode() for member in reply]


def decoded_one(reply: Any) -> str | None:
    """A single reply (a string, or none) as text; see ``decoded``."""
    return None if reply is None else bytes(reply).decode()


# Errors that mean Redis is unreachable for now (restarting, failing over, loading its data).
OUTAGE_ERRORS: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.TryAgainError,
)


def retrying(
    call: Callable[[], _T], outage_s: float, while_waiting: Callable[[], None] | None = None
) -> _T:
    """``call()``, retried with backoff while Redis is unreachable, for up to ``outage_s``;
    ``while_waiting`` runs between tries. Past the bound, :class:`RedisGone`."""
    started: float | None = None
    delay = 0.05
    while True:
        try:
            return call()
        except OUTAGE_ERRORS as exc:
            now = time.monotonic()
            if started is None:
                started = now
                log.warning("Redis unreachable (%s); retrying for up to %.0f s", exc, outage_s)
            if now - started >= outage_s:
                raise RedisGone(
                    f"Redis unreachable for {now - started:.0f} s (STRUCTQ_REDIS_OUTAGE_S): {exc}"
                ) from exc
            if while_waiting is not None:
                while_waiting()
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
