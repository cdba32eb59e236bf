"""Webhook URLs at submit time: only http(s) URLs whose host resolves to public addresses
(the allow-list empty, as it is by default); every refusal is a 422 with nothing enqueued."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import ApiSettings
from tests.api.test_jobs import _nothing_enqueued

REFUSED = [
    ("loopback", "http://127.0.0.1/hook"),
    ("loopback by name", "http://localhost:8080/hook"),
    ("private 10/8", "http://10.1.2.3/hook"),
    ("private 172.16/12", "http://172.16.0.1/hook"),
    ("private 192.168/16", "https://192.168.1.1/hook"),
    ("cloud metadata", "http://169.254.169.254/latest/meta-data"),
    ("CGNAT", "http://100.64.0.1/hook"),
    ("multicast", "http://224.0.0.1/hook"),
    ("unspecified", "http://0.0.0.0/hook"),
    ("IPv6 loopback", "http://[::1]/hook"),
    ("IPv6 ULA", "http://[fd00::1]/hook"),
    ("IPv6 link-local", "http://[fe80::1]/hook"),
    ("IPv4-mapped loopback", "http://[::ffff:127.0.0.1]/hook"),
    ("IPv4-mapped private", "http://[::ffff:10.0.0.1]/hook"),
    ("hex", "http://0x7f000001/hook"),
    ("decimal", "http://2130706433/hook"),
    ("octal", "http://017700000001/hook"),
    ("short form", "http://127.1/hook"),
    ("not http", "ftp://93.184.216.34/hook"),
    ("credentials", "http://user:secret@93.184.216.34/hook"),
    ("no host", "http:///hook"),
]


@pytest.fixture
def client(redis_client: redis.Redis, redis_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(ApiSettings(insecure_no_auth=True, redis_url=redis_url))) as client:
        yield client


@pytest.mark.parametrize(("case", "url"), REFUSED, ids=[case for case, _ in REFUSED])
def test_unsafe_webhook_url_is_422_and_nothing_is_enqueued(client, redis_client, case, url):
    response = client.post("/v1/jobs", json={"prompt": "x", "webhook": {"url": url}})
    assert response.status_code == 422, (case, response.text)
    assert "webhook" in response.json()["error"]["message"]
    assert _nothing_enqueued(redis_client)


def test_public_address_is_accepted_with_completed_by_default(client):
    response = client.post(
        "/v1/jobs", json={"prompt": "x", "webhook": {"url": "http://93.184.216.34/h"}}
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["webhook"] == {"url": "http://93.184.216.34/h", "events": ["completed"]}
    assert job["webhook_deliveries"] == []


def test_unknown_event_is_422(client):
    body = {"prompt": "x", "webhook": {"url": "http://93.184.216.34/h", "events": ["done"]}}
    assert client.post("/v1/jobs", json=body).status_code == 422


def test_the_allow_list_opens_a_private_network_on_purpose(redis_client, redis_url):
    settings = ApiSettings(
        insecure_no_auth=True, redis_url=redis_url, webhook_allowed_networks=["127.0.0.0/8"]
    )
    with TestClient(create_app(settings)) as client:
        body = {"prompt": "x", "webhook": {"url": "http://127.0.0.1:9/h"}}
        assert client.post("/v1/jobs", json=body).status_code == 202
        body = {"prompt": "x", "webhook": {"url": "http://10.0.0.1/h"}}
        assert client.post("/v1/jobs", json=body).status_code == 422
