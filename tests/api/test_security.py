"""Keys, ownership, rate and size limits, spec limits and the compile check, in-process against
a real Redis (the end-to-end versions, with two gateway processes and a worker, are in
tests/e2e/test_security.py)."""

from __future__ import annotations

import asyncio
import hmac
import re
import time
from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient

from api.auth import KeyRing, hash_key
from api.compile_check import CompileChecker
from api.errors import SpecTooLarge
from api.keys import main as keys_main
from api.main import create_app
from api.settings import ApiKey, ApiSettings
from api.spec_limits import check_spec
from shared.output_types import JsonSchemaSpec, RegexSpec
from shared.settings import DEFAULT_MODEL

ALICE, BOB, ROOT = "sq_alice-key", "sq_bob-key", "sq_root-key"
KEYS = [
    ApiKey(name="alice", sha256=hash_key(ALICE)),
    ApiKey(name="bob", sha256=hash_key(BOB)),
    ApiKey(name="root", sha256=hash_key(ROOT), admin=True),
]


def _h(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def secured(redis_client: redis.Redis, redis_url: str) -> Iterator[TestClient]:
    settings = ApiSettings(
        redis_url=redis_url,
        api_keys=KEYS,
        rate_limit_per_s=1000,
        compile_check=False,
        max_body_bytes=4096,
    )
    with TestClient(create_app(settings)) as client:
        yield client


def test_the_gateway_refuses_to_start_without_keys_unless_explicitly_insecure():
    with pytest.raises(ValueError, match="STRUCTQ_INSECURE_NO_AUTH"):
        ApiSettings()
    assert ApiSettings(insecure_no_auth=True).api_keys == []


def test_no_key_or_a_wrong_key_is_401_with_www_authenticate(secured):
    for headers in ({}, _h("sq_wrong"), {"Authorization": "Basic abc"}, {"X-API-Key": "nope"}):
        response = secured.get("/v1/jobs", headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert "sq_" not in response.text
    assert secured.get("/v1/jobs", headers={"X-API-Key": ALICE}).status_code == 200
    assert secured.get("/healthz").status_code == 200  # probes need no key


def test_keys_are_compared_in_constant_time_against_every_entry(monkeypatch):
    calls = []
    original = hmac.compare_digest

    def counting(a, b):
        calls.append((a, b))
        return original(a, b)

    monkeypatch.setattr("api.auth.hmac.compare_digest", counting)
    ring = KeyRing(KEYS)
    assert ring.find(ALICE).name == "alice"  # the first entry: the others are still compared
    assert len(calls) == len(KEYS)
    assert ring.find("sq_wrong") is None and len(calls) == 2 * len(KEYS)


def test_a_key_cannot_see_touch_or_list_another_keys_jobs(secured):
    alice_job = secured.post("/v1/jobs", json={"prompt": "x"}, headers=_h(ALICE)).json()["id"]
    bob_job = secured.post("/v1/jobs", json={"prompt": "y"}, headers=_h(BOB)).json()["id"]
    for method, path in [
        ("GET", f"/v1/jobs/{alice_job}"),
        ("GET", f"/v1/jobs/{alice_job}?wait=1"),
        ("GET", f"/v1/jobs/{alice_job}/stream"),
        ("POST", f"/v1/jobs/{alice_job}/cancel"),
        ("POST", f"/v1/jobs/{alice_job}/retry"),
        ("DELETE", f"/v1/jobs/{alice_job}"),
    ]:
        response = secured.request(method, path, headers=_h(BOB))
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["error"]["code"] == "job_not_found"
    listed = secured.get("/v1/jobs", headers=_h(BOB)).json()["data"]
    assert [job["id"] for job in listed] == [bob_job]
    assert secured.get(f"/v1/jobs/{alice_job}", headers=_h(ALICE)).json()["client"] == "alice"
    # The admin key sees both, and may use the admin endpoints; the others may not.
    everything = {job["id"] for job in secured.get("/v1/jobs", headers=_h(ROOT)).json()["data"]}
    assert everything == {alice_job, bob_job}
    assert secured.get(f"/v1/jobs/{alice_job}", headers=_h(ROOT)).status_code == 200
    assert secured.get("/v1/admin/dead-letters", headers=_h(ROOT)).status_code == 200
    assert secured.get("/v1/admin/dead-letters", headers=_h(ALICE)).status_code == 403
    # Alice cancels her own job; it is then listed under her status filter only.
    assert secured.post(f"/v1/jobs/{alice_job}/cancel", headers=_h(ALICE)).status_code == 200
    cancelled = secured.get("/v1/jobs?status=cancelled", headers=_h(ALICE)).json()["data"]
    assert [job["id"] for job in cancelled] == [alice_job]
    assert secured.get("/v1/jobs?status=cancelled", headers=_h(BOB)).json()["data"] == []


def test_rate_limit_is_429_with_retry_after(redis_client, redis_url):
    settings = ApiSettings(
        redis_url=redis_url, api_keys=KEYS, rate_limit_per_s=1, rate_limit_burst=3
    )
    with TestClient(create_app(settings)) as client:
        codes = [client.get("/v1/jobs", headers=_h(ALICE)).status_code for _ in range(5)]
        assert codes == [200, 200, 200, 429, 429]
        limited = client.get("/v1/jobs", headers=_h(ALICE))
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.json()["error"]["code"] == "rate_limited"
        assert client.get("/v1/jobs", headers=_h(BOB)).status_code == 200  # per key


def test_queued_jobs_per_key_and_queue_depth_are_capped(redis_client, redis_url):
    settings = ApiSettings(
        redis_url=redis_url, api_keys=KEYS, max_queued_per_key=2, max_queue_depth=3
    )
    with TestClient(create_app(settings)) as client:
        codes = [
            client.post("/v1/jobs", json={"prompt": "x"}, headers=_h(ALICE)).status_code
            for _ in range(3)
        ]
        assert codes == [202, 202, 429]
        assert client.post("/v1/jobs", json={"prompt": "x"}, headers=_h(BOB)).status_code == 202
        full = client.post("/v1/jobs", json={"prompt": "x"}, headers=_h(BOB))
        assert full.status_code == 503 and full.json()["error"]["code"] == "queue_full"
        assert full.headers["retry-after"]
        assert redis_client.zcard("structq:index:all") == 3  # the refused ones wrote nothing
        # The depth counts queued jobs, not messages: a cancelled job frees its place...
        first = client.get("/v1/jobs", headers=_h(ROOT)).json()["data"][-1]["id"]
        assert client.post(f"/v1/jobs/{first}/cancel", headers=_h(ROOT)).status_code == 200
        assert client.post("/v1/jobs", json={"prompt": "x"}, headers=_h(BOB)).status_code == 202
        # ...and a retry is held to the same caps as a new job.
        retried = client.post(f"/v1/jobs/{first}/retry", headers=_h(ROOT))
        assert retried.status_code == 503 and retried.json()["error"]["code"] == "queue_full"


def test_an_oversized_body_is_413_before_anything_reads_it(secured):
    big = {"prompt": "x" * 5000}
    response = secured.post("/v1/jobs", json=big, headers=_h(ALICE))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    chunked = secured.post(
        "/v1/jobs",
        content=iter([b'{"prompt": "', b"x" * 5000, b'"}']),
        headers={**_h(ALICE), "Content-Type": "application/json"},
    )
    assert chunked.status_code == 413


def test_keys_command_prints_a_key_and_its_hash_line(capsys):
    assert keys_main(["create", "carol", "--admin"]) == 0
    out = capsys.readouterr().out
    key = out.split("shown once): ")[1].split()[0]
    entry = ApiKey.model_validate_json(out.strip().splitlines()[-1])
    assert entry.name == "carol" and entry.admin and entry.sha256 == hash_key(key)
    assert key not in out.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        (RegexSpec(pattern="(a+)+b"), "nested unbounded"),
        (RegexSpec(pattern="(x*y?)*"), "nested unbounded"),
        (RegexSpec(pattern="a" * 2000), "longer than"),
        (JsonSchemaSpec(schema={}), "unconstrained"),
        (
            JsonSchemaSpec(schema={"type": "string", "enum": [str(i) for i in range(300)]}),
            "enum of 300",
        ),
        (
            JsonSchemaSpec(
                schema={
                    "$defs": {
                        "node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/node"}}}
                    },
                    "$ref": "#/$defs/node",
                }
            ),
            "recursive",
        ),
    ],
)
def test_pathological_specs_are_refused_by_the_static_limits(spec, words):
    with pytest.raises(SpecTooLarge, match=words):
        check_spec(spec, ApiSettings(insecure_no_auth=True))


def test_deeply_nested_any_of_is_refused():
    schema: dict = {"type": "integer"}
    for _ in range(20):
        schema = {"anyOf": [schema, {"type": "string"}]}
    with pytest.raises(SpecTooLarge, match="nested deeper"):
        check_spec(JsonSchemaSpec(schema=schema), ApiSettings(insecure_no_auth=True))


def test_ordinary_specs_pass_the_static_limits():
    from scripts.seed_jobs import CHARACTER_SCHEMA

    settings = ApiSettings(insecure_no_auth=True)
    check_spec(JsonSchemaSpec(schema=CHARACTER_SCHEMA), settings)
    check_spec(RegexSpec(pattern=r"\d{3}-\d{2}-\d{4}"), settings)
    check_spec(RegexSpec(pattern=r"(ab|cd)+"), settings)


def _tokenizer_folder():
    folder = ApiSettings(insecure_no_auth=True).tokenizer_path(DEFAULT_MODEL)
    if folder is None:
        pytest.skip("the bundled model is not prepared (make setup does it)")
    return folder


def test_the_compile_check_kills_a_compile_past_its_bound_and_goes_on():
    folder = _tokenizer_folder()

    async def go():
        checker = CompileChecker({"m": folder}, timeout_s=0.5, processes=1)
        try:
            await checker.warm()
            started = time.monotonic()
            # A list of any objects: outlines-core takes tens of seconds, far over 0.5 s.
            open_objects = {"type": "array", "items": {"type": "object"}}
            slow = await checker.check("m", JsonSchemaSpec(schema=open_objects))
            took = time.monotonic() - started
            bad = await checker.check("m", RegexSpec(pattern="^(|.*)$"))
            good = await checker.check("m", RegexSpec(pattern="[0-9]{3}"))
            return slow, took, bad, good
        finally:
            checker.close()

    slow, took, bad, good = asyncio.run(go())
    assert "did not compile within 0.5 s" in slow and took < 2
    assert "does not compile" in bad
    assert good is None  # a fresh process took over


def test_a_prompt_longer_than_the_context_is_422_naming_both_numbers(redis_client, redis_url):
    _tokenizer_folder()
    settings = ApiSettings(
        insecure_no_auth=True, redis_url=redis_url, max_model_len=64, compile_check=False
    )
    with TestClient(create_app(settings)) as client:
        response = client.post(
            "/v1/jobs", json={"prompt": "word " * 80, "sampling": {"max_tokens": 10}}
        )
        assert response.status_code == 422
        message = response.json()["error"]["message"]
        assert re.search(r"the prompt is 8\d tokens and max_tokens is 10: 9\d tokens", message)
        assert "context of 64" in message
        fits = client.post(
            "/v1/jobs", json={"prompt": "word " * 20, "sampling": {"max_tokens": 10}}
        )
        assert fits.status_code == 202


def _nested(depth: int) -> dict:
    schema: dict = {"type": "integer"}
    for _ in range(depth):
        schema = {"anyOf": [schema]}
    return schema


_SELF_REF = {
    "type": "object",
    "properties": {
        "a": {"type": "object", "properties": {"b": {"$ref": "#/properties/a"}}},
    },
}


@pytest.mark.parametrize(
    "output_type",
    [
        {"type": "json_schema", "schema": _nested(150)},
        {"type": "json_schema", "schema": {"type": "string", "$defs": [1]}},
        {"type": "regex", "pattern": "(" * 500 + "a" + ")" * 500},
        {"type": "grammar", "grammar": "start: " + " ".join(f'"t{i}"' for i in range(4000))},
        {"type": "json_schema", "schema": _SELF_REF},
    ],
    ids=["deep-anyof", "defs-list", "deep-regex", "huge-grammar", "self-ref-property"],
)
def test_hostile_specs_are_4xx_never_500(secured, output_type):
    response = secured.post(
        "/v1/jobs", json={"prompt": "x", "output_type": output_type}, headers=_h(ALICE)
    )
    assert 400 <= response.status_code < 500, response.text
    assert "Traceback" not in response.text and "File " not in response.text
