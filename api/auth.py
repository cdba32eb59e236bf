"""Who is calling: API keys, checked on every request to ``/v1``, and their rate limits.

Keys are configured as SHA-256 hashes (``STRUCTQ_API_KEYS``); a presented key is hashed and
compared with every configured hash in constant time (``hmac.compare_digest``, no early exit),
so neither the comparison nor which entry matched shows in the response time. A key's rate
limit is kept in Redis (GCRA: one key per API key holding its theoretical arrival time), so it
holds across every gateway process sharing that Redis.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated

import redis.asyncio as aioredis
from fastapi import Depends, Request
from redis.commands.core import AsyncScript

from api.errors import Forbidden, RateLimited, Unauthorized
from api.settings import ApiKey, ApiSettings
from shared.keys import RATE_PREFIX

__all__ = [
    "Caller",
    "CallerDep",
    "KeyRing",
    "authenticate",
    "hash_key",
    "require_admin",
]

# KEYS: 1 the key's GCRA state. ARGV: 1 emission interval (ms), 2 burst tolerance (ms).
# Returns 0 when the request is allowed, else how long (ms) until it would be.
_GCRA = """#!lua
local now_s = redis.call('TIME')
local now = tonumber(now_s[1]) * 1000 + math.floor(tonumber(now_s[2]) / 1000)
local interval, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local wait = tat - tolerance - now
if wait > 0 then return math.ceil(wait) end
tat = tat + interval
redis.call('SET', KEYS[1], tat, 'PX', math.ceil(tat - now + interval))
return 0
"""


@dataclass(frozen=True, slots=True)
class Caller:
    name: str
    admin: bool
    # Whether the caller's jobs are recorded as theirs (off when authentication is).
    owns_jobs: bool = True

    @property
    def scope(self) -> str | None:
        """Whose jobs this caller may see: its own (its name), or every one (None)."""
        return None if self.admin else self.name

    @property
    def owner(self) -> str | None:
        """The owner recorded on the jobs it submits."""
        return self.name if self.owns_jobs else None


ANONYMOUS = Caller("anonymous", admin=True, owns_jobs=False)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyRing:
    """The configured keys, ready for constant-time lookup."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self._entries = [(bytes.fromhex(key.sha256), key) for key in keys]

    def find(self, presented: str) -> ApiKey | None:
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for expected, key in self._entries:  # every entry, whatever matched: no early exit
            if hmac.compare_digest(expected, digest) and found is None:
                found = key
        return found


def _presented(request: Request) -> str | None:
    authorization = request.headers.get("authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return request.headers.get("x-api-key") or None


async def authenticate(request: Request) -> Caller:
    """The caller of this request: 401 without a valid key, 429 past its rate."""
    state = request.app.state
    settings: ApiSettings = state.settings
    if not settings.api_keys:
        return ANONYMOUS  # STRUCTQ_INSECURE_NO_AUTH: checked at start-up
    presented = _presented(request)
    if presented is None:
        raise Unauthorized("an API key is required: `Authorization: Bearer <key>` or X-API-Key")
    key = state.keys.find(presented)
    if key is None:
        raise Unauthorized("invalid API key")
    if settings.rate_limit_per_s > 0:
        interval_ms = 1000.0 / settings.rate_limit_per_s
        tolerance_ms = interval_ms * (settings.rate_limit_burst - 1)
        wait_ms = await state.rate_script(
            keys=[f"{RATE_PREFIX}{key.name}"], args=[interval_ms, tolerance_ms]
        )
        if wait_ms:
            raise RateLimited(
                f"rate limit of {settings.rate_limit_per_s:g} requests/s for key {key.name!r} "
                "reached",
                retry_after_s=float(wait_ms) / 1000,
            )
    return Caller(key.name, admin=key.admin)


CallerDep = Annotated[Caller, Depends(authenticate)]


async def require_admin(caller: CallerDep) -> Caller:
    if not caller.admin:
        raise Forbidden("this endpoint needs an admin key")
    return caller


def rate_script(client: aioredis.Redis) -> AsyncScript:
    """The rate limit's script, registered with ``client`` (kept in ``app.state.rate_script``)."""
    return client.register_script(_GCRA)
