from __future__ import annotations

import time
import types
from collections.abc import Iterator

import httpx
import pytest

import structq
import structq._core
import structq.aio
import structq.client
from tests.client.fake import FakeGateway


@pytest.fixture
def gw() -> FakeGateway:
    return FakeGateway()


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The client's sleeps, recorded instead of slept: its clock jumps ahead by them."""
    slept: list[float] = []
    offset = [0.0]

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        offset[0] += seconds

    async def asleep(seconds: float) -> None:
        sleep(seconds)

    def monotonic() -> float:
        return time.monotonic() + offset[0]

    fake_time = types.SimpleNamespace(sleep=sleep, monotonic=monotonic)
    monkeypatch.setattr(structq.client, "time", fake_time)
    monkeypatch.setattr(structq._core, "time", fake_time)
    monkeypatch.setattr(structq.aio.asyncio, "sleep", asleep)
    return slept


@pytest.fixture
def client(gw: FakeGateway, sleeps: list[float]) -> Iterator[structq.Client]:
    with structq.Client("http://gw.test", transport=httpx.MockTransport(gw), max_retries=3) as c:
        yield c


@pytest.fixture
def aclient(gw: FakeGateway, sleeps: list[float]) -> structq.AsyncClient:
    return structq.AsyncClient("http://gw.test", transport=httpx.MockTransport(gw), max_retries=3)
