"""Security against running gateways: two gateway processes with API keys on the session's
Redis and worker (the session's own gateway runs without keys, for the other tests)."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from api.auth import hash_key
from shared.settings import DEFAULT_MODEL
from tests.e2e.conftest import NO_WORKERS, wait_for

pytestmark = pytest.mark.e2e

ALICE, BOB, ROOT, FLOOD = "sq_e2e-alice", "sq_e2e-bob", "sq_e2e-root", "sq_e2e-flood"
COMPILE_TIMEOUT_S = 3
QUEUE_DEPTH = 4


@pytest.fixture(scope="module")
def gateways(stack):
    keys = [
        {"name": name, "sha256": hash_key(key), "admin": name == "root"}
        for name, key in (("alice", ALICE), ("bob", BOB), ("root", ROOT), ("flood", FLOOD))
    ]
    env = {
        "STRUCTQ_INSECURE_NO_AUTH": "false",
        "STRUCTQ_API_KEYS": json.dumps(keys),
        "STRUCTQ_RATE_LIMIT_PER_S": "2",
        "STRUCTQ_RATE_LIMIT_BURST": "20",
        "STRUCTQ_MAX_QUEUE_DEPTH": str(QUEUE_DEPTH),
        "STRUCTQ_COMPILE_TIMEOUT_S": str(COMPILE_TIMEOUT_S),
    }
    _, first = stack.start_extra_gateway(env, name="gateway-secured-1")
    _, second = stack.start_extra_gateway(env, name="gateway-secured-2")
    return first, second


def _client(url: str, key: str | None = None) -> httpx.Client:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    return httpx.Client(base_url=url, headers=headers, timeout=60)


def test_no_key_or_a_wrong_key_is_401(gateways):
    url = gateways[0]
    for headers in ({}, {"Authorization": "Bearer sq_wrong"}, {"X-API-Key": "sq_wrong"}):
        for path in ("/v1/jobs", "/v1/models"):
            response = httpx.get(url + path, headers=headers)
            assert response.status_code == 401
            assert response.headers["www-authenticate"] == 'Bearer realm="structq"'
    assert httpx.get(url + "/v1/jobs", headers={"X-API-Key": ALICE}).status_code == 200
    assert httpx.get(url + "/healthz").status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="sq_wrong").models.list()
    served = openai.OpenAI(base_url=url + "/v1", api_key=ALICE).models.list().data
    assert DEFAULT_MODEL in [m.id for m in served]


def test_keys_see_only_their_own_jobs_and_the_admin_sees_all(gateways):
    first, second = gateways
    with _client(first, ALICE) as alice, _client(second, BOB) as bob, _client(first, ROOT) as root:
        mine = alice.post("/v1/jobs", json={"model": NO_WORKERS, "prompt": "x"}).json()["id"]
        for method, path in [
            ("GET", f"/v1/jobs/{mine}"),
            ("POST", f"/v1/jobs/{mine}/cancel"),
            ("POST", f"/v1/jobs/{mine}/retry"),
            ("DELETE", f"/v1/jobs/{mine}"),
        ]:
            response = bob.request(method, path)
            assert response.status_code == 404, (method, path)
            # The same answer as for an id that never existed: nothing tells them apart.
            unknown = bob.request(method, path.replace(mine, "0" * len(mine)))
            assert response.text.replace(mine, "0" * len(mine)) == unknown.text
        assert mine not in {job["id"] for job in bob.get("/v1/jobs").json()["data"]}
        assert mine in {job["id"] for job in root.get("/v1/jobs").json()["data"]}
        assert root.get(f"/v1/jobs/{mine}").json()["client"] == "alice"
        assert bob.get("/v1/admin/dead-letters").status_code == 403
        # Her own key, on the other gateway: the job is hers.
        with _client(second, ALICE) as alice_elsewhere:
            assert alice_elsewhere.post(f"/v1/jobs/{mine}/cancel").json()["status"] == "cancelled"
            assert alice_elsewhere.post(f"/v1/jobs/{mine}/retry").status_code == 202
        assert root.post(f"/v1/jobs/{mine}/cancel").json()["status"] == "cancelled"
        assert root.post(f"/v1/admin/purge?model={NO_WORKERS}").status_code == 200


def test_the_rate_limit_holds_across_two_gateway_processes(gateways):
    clients = [_client(url, FLOOD) for url in gateways]
    try:
        answers = [clients[i % 2].get("/v1/jobs?limit=1") for i in range(40)]
    finally:
        for client in clients:
            client.close()
    codes = [a.status_code for a in answers]
    # A burst of 20 (plus what 2/s refills meanwhile) for the key, whichever gateway it hits:
    # two separate limits would have let 40 through.
    assert 20 <= codes.count(200) <= 26, codes
    assert codes.count(429) == 40 - codes.count(200)
    limited = next(a for a in answers if a.status_code == 429)
    assert int(limited.headers["retry-after"]) >= 1


def test_a_queue_past_its_depth_refuses_new_jobs(gateways):
    with _client(gateways[0], ROOT) as root:
        root.post(f"/v1/admin/purge?model={NO_WORKERS}")
        codes = [
            root.post("/v1/jobs", json={"model": NO_WORKERS, "prompt": "x"}).status_code
            for _ in range(QUEUE_DEPTH + 2)
        ]
        refused = root.post("/v1/jobs", json={"model": NO_WORKERS, "prompt": "x"})
        assert root.post(f"/v1/admin/purge?model={NO_WORKERS}").status_code == 200
    assert codes == [202] * QUEUE_DEPTH + [503, 503]
    assert refused.headers["retry-after"] and refused.json()["error"]["code"] == "queue_full"


def test_an_oversized_body_is_413(gateways):
    with _client(gateways[0], ALICE) as alice:
        response = alice.post("/v1/jobs", json={"prompt": "x" * (1 << 20)})
    assert response.status_code == 413


def test_a_prompt_longer_than_the_context_is_422_with_the_numbers(gateways):
    with _client(gateways[0], ALICE) as alice:
        response = alice.post("/v1/jobs", json={"prompt": "word " * 3000})
    assert response.status_code == 422
    message = response.json()["error"]["message"]
    assert "max_tokens is 256" in message and "context of 2048" in message
    assert "the prompt is 300" in message  # 3000 words and a trailing space: 3001 tokens


PATHOLOGICAL = [
    {"type": "regex", "pattern": "(a+)+b"},
    {"type": "regex", "pattern": "^(|.*)$"},
    {"type": "json_schema", "schema": {}},
    {"type": "json_schema", "schema": {"type": "string", "enum": [f"v{i}" for i in range(5000)]}},
    {
        "type": "json_schema",
        "schema": {
            "$defs": {"n": {"type": "object", "properties": {"next": {"$ref": "#/$defs/n"}}}},
            "$ref": "#/$defs/n",
        },
    },
    {"type": "json_schema", "schema": {"type": "array", "items": {"type": "object"}}},
]


def _nested_any_of(depth: int) -> dict:
    schema: dict = {"type": "integer"}
    for _ in range(depth):
        schema = {"anyOf": [schema, {"type": "string"}]}
    return {"type": "json_schema", "schema": schema}


@pytest.mark.parametrize("output_type", [*PATHOLOGICAL, _nested_any_of(30)])
def test_a_pathological_spec_is_422_within_the_bound_then_a_valid_job_runs(gateways, output_type):
    with _client(gateways[1], ALICE) as alice:
        started = time.monotonic()
        refused = alice.post("/v1/jobs", json={"prompt": "x", "output_type": output_type})
        took = time.monotonic() - started
        assert refused.status_code == 422, refused.text
        assert took < COMPILE_TIMEOUT_S + 2
        assert "Traceback" not in refused.text and "/work" not in refused.text
        job_id = alice.post(
            "/v1/jobs",
            json={
                "prompt": "Write a number.",
                "output_type": {"type": "regex", "pattern": "[0-9]{1,3}"},
                "sampling": {"max_tokens": 4},
            },
        ).json()["id"]
        assert wait_for(alice, [job_id])[job_id]["status"] == "succeeded"
