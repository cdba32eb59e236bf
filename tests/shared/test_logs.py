"""Logs (``shared.logs``): JSON or text lines with the job's fields, and the gateway's request
ids (``api.request_ids``): echoed, replaced, made, returned on every response, stored on the
job."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import redis
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import ApiSettings
from shared import logs
from shared.jobs import Job
from shared.keys import job_key


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """``logs.setup`` configures the root logger: put it back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line]


def test_json_lines_carry_the_context_fields(capsys, restore_logging):
    logs.setup("json", "INFO", worker="w-1", model="m")
    log = logging.getLogger("structq.test")
    with logs.bind(request_id="req-1", job_id="job-1"):
        log.info("hello %s", "there")
    log.info("about a job", extra={"job_id": "job-2", "model": "other"})
    log.debug("not written at INFO")
    first, second = (json.loads(line) for line in _lines(capsys.readouterr().err))
    assert first["message"] == "hello there"
    assert first["level"] == "INFO" and first["logger"] == "structq.test" and first["time"]
    assert first["request_id"] == "req-1" and first["job_id"] == "job-1"
    assert first["worker"] == "w-1" and first["model"] == "m"
    # extra= wins over the process's fields; nothing bound is left behind.
    assert second["job_id"] == "job-2" and second["model"] == "other"
    assert "request_id" not in second


def test_text_lines_are_plain(capsys, restore_logging):
    logs.setup("text", "DEBUG")
    with logs.bind(request_id="req-1"):
        logging.getLogger("structq.test").debug("hello")
    [line] = _lines(capsys.readouterr().err)
    assert not line.startswith("{")
    assert " DEBUG structq.test: hello [request_id=req-1]" in line


def test_uvicorn_logs_go_through_the_same_handler(capsys, restore_logging):
    logs.setup("json", "INFO")
    logging.getLogger("uvicorn.error").info("Started server process")
    [line] = _lines(capsys.readouterr().err)
    assert json.loads(line)["logger"] == "uvicorn.error"


def test_the_settings_default_to_json_at_info(monkeypatch):
    from shared.settings import CommonSettings

    assert (CommonSettings().log_format, CommonSettings().log_level) == ("json", "INFO")
    monkeypatch.setenv("STRUCTQ_LOG_FORMAT", "text")
    monkeypatch.setenv("STRUCTQ_LOG_LEVEL", "debug")
    assert (CommonSettings().log_format, CommonSettings().log_level) == ("text", "DEBUG")


# -- the gateway's request ids -----------------------------------------------------------


@pytest.fixture
def client(redis_client: redis.Redis, redis_url: str) -> Iterator[TestClient]:
    settings = ApiSettings(insecure_no_auth=True, redis_url=redis_url, max_tokens_limit=512)
    app = create_app(settings)

    async def boom() -> None:
        raise RuntimeError("a bug")

    async def stream() -> StreamingResponse:
        return StreamingResponse(iter([b"a", b"b"]), media_type="text/plain")

    app.add_api_route("/test/boom", boom)
    app.add_api_route("/test/stream", stream)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def test_a_valid_request_id_is_echoed_and_stored_on_the_job(client, redis_client):
    response = client.post(
        "/v1/jobs", json={"prompt": "x"}, headers={"X-Request-ID": "abc:1.2-3_4"}
    )
    assert response.status_code == 202
    assert response.headers["x-request-id"] == "abc:1.2-3_4"
    job = response.json()
    assert job["request_id"] == "abc:1.2-3_4"
    assert client.get(f"/v1/jobs/{job['id']}").json()["request_id"] == "abc:1.2-3_4"
    # In the spec part of the record (written once), read by the worker with the job.
    spec = json.loads(redis_client.hget(job_key(job["id"]), "spec"))
    assert spec["request_id"] == "abc:1.2-3_4"


@pytest.mark.parametrize("bad", ["has space", "x" * 129, "a/b", 'a"b', ""])
def test_an_invalid_request_id_is_replaced(client, bad):
    response = client.get("/v1/jobs/nope", headers={"X-Request-ID": bad})
    assert response.status_code == 404  # an error response carries it too
    made = response.headers["x-request-id"]
    assert made != bad and len(made) == 32 and int(made, 16) >= 0


def test_a_request_id_is_made_when_absent(client):
    first = client.post("/v1/jobs", json={"prompt": "x"})
    second = client.post("/v1/jobs", json={"prompt": "x"})
    ids = [first.headers["x-request-id"], second.headers["x-request-id"]]
    assert ids[0] != ids[1] and all(len(i) == 32 for i in ids)
    assert [first.json()["request_id"], second.json()["request_id"]] == ids


def test_clients_cannot_set_the_request_id_in_the_body(client):
    response = client.post("/v1/jobs", json={"prompt": "x", "request_id": "mine"})
    assert response.status_code == 422
    assert response.headers["x-request-id"] != "mine"


def test_unexpected_errors_and_streams_carry_the_request_id(client, caplog):
    response = client.get("/test/boom", headers={"X-Request-ID": "boom-1"})
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "boom-1"
    [record] = [r for r in caplog.records if r.getMessage().startswith("unhandled error")]
    assert record.request_id == "boom-1"
    streamed = client.get("/test/stream", headers={"X-Request-ID": "s-1"})
    assert streamed.text == "ab" and streamed.headers["x-request-id"] == "s-1"


def test_job_fields_leave_out_what_the_job_lacks():
    job = Job(id="j", model="m", prompt="x")
    assert logs.job_fields(job) == {"job_id": "j", "model": "m"}
    job = job.model_copy(update={"worker": "w", "request_id": "r"})
    assert logs.job_fields(job) == {"job_id": "j", "model": "m", "worker": "w", "request_id": "r"}
