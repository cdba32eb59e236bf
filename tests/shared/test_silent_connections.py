"""Every Redis client a worker holds notices a dead connection within its stated bound, a
black-holed one (no reply, no reset) included, and works again once the network is back; the
partition proxy the stall tests and the chaos soak use cuts both ways (real Redis)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
from kombu import Connection

from scripts.partition import Partition
from shared.redis_pools import (
    celery_silent_connection_options,
    dead_connection_bound_s,
    sync_client,
)

_TIMEOUT_S = 2.0


@pytest.fixture
def partition(redis_url: str) -> Iterator[Partition]:
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    proxy = Partition(port)
    yield proxy
    proxy.close()


def _fails_within(call, bound_s: float) -> float:
    started = time.monotonic()
    with pytest.raises((redis.ConnectionError, redis.TimeoutError, OSError)):
        call()
    elapsed = time.monotonic() - started
    assert elapsed < bound_s + 0.5, f"noticed after {elapsed:.1f} s (bound {bound_s:.1f} s)"
    return elapsed


@pytest.mark.parametrize("cut", ["reset", "black_hole"])
def test_a_workers_client_notices_a_cut_within_its_bound_and_recovers(
    partition: Partition, cut: str
) -> None:
    client = sync_client(partition.url(), socket_timeout_s=_TIMEOUT_S)
    assert client.ping()
    getattr(partition, cut)()
    _fails_within(client.ping, dead_connection_bound_s(_TIMEOUT_S))
    partition.restore()
    assert client.ping()


def test_the_cancel_listener_notices_a_black_hole_and_hears_cancels_again(
    partition: Partition, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    from shared.keys import CANCEL_CHANNEL
    from worker.cancels import CancelListener

    heard: list[str] = []
    bound_s = dead_connection_bound_s(_TIMEOUT_S)
    client = sync_client(partition.url(), socket_timeout_s=_TIMEOUT_S)
    listener = CancelListener(client, heard.append, bound_s)
    listener.start()
    try:
        _until(lambda: redis_client.publish(CANCEL_CHANNEL, "j1") and heard == ["j1"])
        partition.black_hole()
        started = time.monotonic()
        _until(lambda: "cancel listener lost Redis" in caplog.text, 3 * bound_s)
        noticed_s = time.monotonic() - started
        # Idle for up to half the bound, a ping, then the bound without a reply.
        assert noticed_s < 1.5 * bound_s + _TIMEOUT_S, noticed_s
        partition.restore()
        _until(lambda: redis_client.publish(CANCEL_CHANNEL, "j2") and "j2" in heard, 30)
    finally:
        listener.stop()


def _until(check, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "not in time"
        time.sleep(0.1)


def test_celerys_connection_gives_up_on_a_black_hole_within_the_socket_timeout(
    partition: Partition,
) -> None:
    options = celery_silent_connection_options(_TIMEOUT_S)
    with Connection(partition.url(), transport_options=options) as conn:
        channel_client = conn.default_channel.client
        assert channel_client.ping()
        partition.black_hole()
        _fails_within(channel_client.ping, dead_connection_bound_s(_TIMEOUT_S) + _TIMEOUT_S)
        partition.restore()


def test_the_proxy_holds_a_black_holed_request_and_delivers_it_once_restored(
    partition: Partition,
) -> None:
    client = redis.Redis(port=partition.port, socket_timeout=5)
    assert client.set("k", "1")
    partition.black_hole()
    started = time.monotonic()
    restorer = __import__("threading").Timer(1.0, partition.restore)
    restorer.start()
    assert client.get("k") == b"1"  # answered once the route is back, not before
    assert time.monotonic() - started >= 0.9
