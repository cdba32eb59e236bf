"""Redis connection pools for the gateway (asyncio) and the worker (threads).

Both block when every connection is busy (redis-py's default pool refuses outright, turning a
burst into errors), and both retry a command a few times, with backoff, on a broken
connection: after a Redis restart every pooled socket is dead, and without this the first
requests to meet one fail although Redis is back. A retried job-store script is safe: each
is guarded by the job's status, or writes the same values again.
"""

from __future__ import annotations

import redis
import redis.asyncio as aioredis
import redis.asyncio.retry
import redis.retry
from redis.backoff import ExponentialWithJitterBackoff

__all__ = ["async_client", "sync_client"]

_RETRIES = 4
_RETRY_ON = [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError]


def _backoff() -> ExponentialWithJitterBackoff:
    return ExponentialWithJitterBackoff(base=0.05, cap=1.0)


def async_client(url: str, max_connections: int, timeout_s: float = 10) -> aioredis.Redis:
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_s,
        retry=redis.asyncio.retry.Retry(_backoff(), _RETRIES),
        retry_on_error=_RETRY_ON,
    )
    return aioredis.Redis(connection_pool=pool)


def sync_client(url: str, max_connections: int, timeout_s: float = 30) -> redis.Redis:
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_s,
        retry=redis.retry.Retry(_backoff(), _RETRIES),
        retry_on_error=_RETRY_ON,
    )
    return redis.Redis(connection_pool=pool)
