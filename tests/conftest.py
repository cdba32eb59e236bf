"""Fixtures shared by every test folder: a real Redis server for the session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from scripts.stack import start_redis


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    child, url = start_redis(Path(tmp_path_factory.mktemp("redis")))
    yield url
    child.stop(10)
    assert not child.leftovers(wait_s=5)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()
