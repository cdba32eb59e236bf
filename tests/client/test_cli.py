"""The ``structq`` command line against the fake gateway: output-type flags build the right
specs, human and ``--json`` output, the documented exit codes, ``run``'s ordered results and
resuming, the Batch API commands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result

import structq
import structq.cli
from structq.cli import cli
from tests.client.fake import FakeGateway

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def invoke(gw: FakeGateway, sleeps: list[float], monkeypatch: pytest.MonkeyPatch):
    """Run the CLI in-process, its client talking to the fake gateway."""

    def make_client(base_url, api_key, timeout):
        assert base_url == "http://gw.test" and api_key == "sk-test"
        return structq.Client(
            base_url, api_key, timeout=timeout, transport=httpx.MockTransport(gw), max_retries=1
        )

    monkeypatch.setattr(structq.cli, "make_client", make_client)
    monkeypatch.setattr(structq.cli.time, "sleep", lambda s: None)
    env = {"STRUCTQ_URL": "http://gw.test", "STRUCTQ_API_KEY": "sk-test"}

    def run(*args: str, input: str | None = None) -> Result:
        return CliRunner(env=env).invoke(cli, list(args), input=input, catch_exceptions=False)

    return run


def _last_job_body(gw: FakeGateway) -> dict:
    [request] = [r for r in gw.requests if r.url.path == "/v1/jobs" and r.method == "POST"][-1:]
    return json.loads(request.content)


@pytest.mark.parametrize(
    ("flags", "spec", "printed"),
    [
        ([], {"type": "text"}, "echo: Hi"),
        (
            ["--regex", r"\d{3}-\d{2}-\d{4}"],
            {"type": "regex", "pattern": r"\d{3}-\d{2}-\d{4}"},
            "123-45-6789",
        ),
        (
            ["--choice", "a, b", "--choice", "c"],
            {"type": "choice", "choices": ["a", "b", "c"]},
            "c",
        ),
        (["--type", "int"], {"type": "int"}, "42"),
        (["--type", "float"], {"type": "float"}, "3.14"),
        (["--type", "bool"], {"type": "bool"}, "true"),
    ],
)
def test_submit_wait_with_each_output_type(invoke, gw, flags, spec, printed):
    result = invoke("submit", "Hi", *flags, "--wait", "--max-tokens", "8", "--seed", "3")
    assert result.exit_code == 0, result.output
    assert result.stdout == printed + "\n"
    body = _last_job_body(gw)
    assert body["output_type"] == spec
    assert body["sampling"] == {"max_tokens": 8, "seed": 3}


def test_submit_schema_and_grammar_files(invoke, gw, tmp_path):
    schema = {"type": "object", "properties": {"name": {"type": "string"}}}
    (tmp_path / "s.json").write_text(json.dumps(schema))
    result = invoke("submit", "Hi", "--schema", str(tmp_path / "s.json"), "--wait")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"name": "Ada", "age": 36, "skills": ["math"]}
    assert _last_job_body(gw)["output_type"] == {"type": "json_schema", "schema": schema}

    (tmp_path / "g.lark").write_text('start: "1" "+" "2"\n')
    result = invoke("submit", "Hi", "--grammar", str(tmp_path / "g.lark"))
    assert result.exit_code == 0 and result.stdout.strip().startswith("job-")
    assert _last_job_body(gw)["output_type"] == {
        "type": "grammar",
        "grammar": 'start: "1" "+" "2"\n',
    }


def test_submit_job_options_and_messages(invoke, gw, tmp_path):
    (tmp_path / "chat.json").write_text(json.dumps([{"role": "user", "content": "Yo"}]))
    result = invoke(
        "submit",
        "--messages",
        str(tmp_path / "chat.json"),
        "--model",
        "m1",
        "--priority",
        "2",
        "--metadata",
        "team=search",
        "--metadata",
        "run=7",
        "--webhook",
        "https://example.com/h",
        "--temperature",
        "0.5",
        "--idempotency-key",
        "k-1",
    )
    assert result.exit_code == 0, result.output
    body = _last_job_body(gw)
    assert body["messages"] == [{"role": "user", "content": "Yo"}]
    assert body["model"] == "m1" and body["priority"] == 2
    assert body["metadata"] == {"team": "search", "run": "7"}
    assert body["webhook"] == {"url": "https://example.com/h"}
    assert body["sampling"] == {"temperature": 0.5}
    assert gw.requests[-1].headers["idempotency-key"] == "k-1"
    assert gw.requests[-1].headers["authorization"] == "Bearer sk-test"
    # The same key again: the same job.
    again = invoke("submit", "--messages", str(tmp_path / "chat.json"), "--model", "m1",
                   "--priority", "2", "--metadata", "team=search", "--metadata", "run=7",
                   "--webhook", "https://example.com/h", "--temperature", "0.5",
                   "--idempotency-key", "k-1")  # fmt: skip
    assert again.stdout == result.stdout and len(gw.jobs) == 1


def test_usage_errors_exit_2(invoke, gw):
    assert invoke("submit").exit_code == 2  # neither a prompt nor --messages
    assert invoke("submit", "Hi", "--type", "int", "--regex", "x").exit_code == 2
    assert invoke("submit", "Hi", "--metadata", "novalue").exit_code == 2
    assert invoke("submit", "Hi", "--type", "complex").exit_code == 2
    assert invoke("nope").exit_code == 2
    assert not gw.jobs


def test_json_output(invoke, gw):
    result = invoke("--json", "submit", "Hi", "--type", "int", "--wait")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["status"] == "succeeded" and record["result"]["value"] == 42
    # --json after the command works too.
    got = invoke("get", record["id"], "--json")
    assert json.loads(got.stdout)["id"] == record["id"]
    human = invoke("get", record["id"])
    assert "status    succeeded" in human.stdout and "value     42" in human.stdout
    listed = invoke("--json", "ls")
    assert [json.loads(line)["id"] for line in listed.stdout.splitlines()] == [record["id"]]
    assert record["id"] in invoke("ls").stdout


def test_failed_job_exits_1(invoke, gw):
    gw.outcome = lambda body: ("failed", "output_truncated", "ran out of tokens")
    result = invoke("submit", "Hi", "--wait")
    assert result.exit_code == 1
    assert "output_truncated" in result.stderr and result.stdout == ""
    as_json = invoke("--json", "submit", "Hi", "--wait")
    assert as_json.exit_code == 1
    assert json.loads(as_json.stdout)["error"]["code"] == "output_truncated"
    job_id = json.loads(as_json.stdout)["id"]
    assert invoke("wait", job_id).exit_code == 1
    assert invoke("get", job_id).exit_code == 0  # reading a failed job is no failure


def test_not_found_exits_4(invoke):
    result = invoke("get", "no-such-job")
    assert result.exit_code == 4 and "job_not_found" in result.stderr
    as_json = invoke("--json", "wait", "no-such-job")
    assert as_json.exit_code == 4
    assert json.loads(as_json.stdout)["error"] == {
        "code": "job_not_found",
        "message": "no job at /v1/jobs/no-such-job",
        "status": 404,
    }


def test_refused_exits_3(invoke, gw):
    detail = [{"loc": ["body", "sampling", "max_tokens"], "msg": "too many", "type": "x"}]
    gw.can(
        "/v1/jobs", 422, {"error": {"code": "invalid_request", "message": "bad"}, "detail": detail}
    )
    result = invoke("submit", "Hi", "--max-tokens", "100000")
    assert result.exit_code == 3
    assert (
        "invalid_request" in result.stderr and "body.sampling.max_tokens: too many" in result.stderr
    )
    job_id = invoke("submit", "Hi").stdout.strip()
    assert invoke("cancel", job_id).exit_code == 3  # 409: already finished


def test_unavailable_exits_5(invoke, gw):
    busy = {"error": {"code": "queue_full", "message": "full"}}
    for _ in range(2):  # the first answer and the client's one retry
        gw.can("/v1/jobs", 503, busy, {"retry-after": "1"})
    result = invoke("submit", "Hi")
    assert result.exit_code == 5 and "queue_full" in result.stderr

    gw.auto_finish = False
    job_id = invoke("submit", "Hi").stdout.strip()
    timed_out = invoke("wait", job_id, "--timeout", "0.5")
    assert timed_out.exit_code == 5 and "timeout" in timed_out.stderr


def test_connection_error_exits_5(monkeypatch):
    def refuse(request):
        raise httpx.ConnectError("refused")

    def make_client(base_url, api_key, timeout):
        return structq.Client(base_url, transport=httpx.MockTransport(refuse), max_retries=0)

    monkeypatch.setattr(structq.cli, "make_client", make_client)
    result = CliRunner().invoke(cli, ["--url", "http://gw.test", "get", "job-1"])
    assert result.exit_code == 5 and "connection_error" in result.stderr


def test_interrupt_exits_130(invoke, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(structq.Client, "job", interrupted)
    result = invoke("get", "job-1")
    assert result.exit_code == 130 and "interrupted" in result.stderr


def test_cancel_retry_stream(invoke, gw):
    gw.auto_finish = False
    job_id = invoke("submit", "Hi").stdout.strip()
    assert invoke("cancel", job_id).stdout == f"{job_id} cancelled\n"
    gw.auto_finish = True
    assert invoke("retry", job_id).stdout == f"{job_id} succeeded\n"
    gw.stream_events.append(
        [
            'event: delta\ndata: {"text": "ec"}\n\n',
            'event: delta\ndata: {"text": "ho"}\n\n',
            f"event: done\ndata: {json.dumps(gw._public(gw.jobs[job_id]))}\n\n",
        ]
    )
    streamed = invoke("stream", job_id)
    assert streamed.exit_code == 0 and streamed.stdout == "echo\n"


def _outcome(body):
    prompt = body.get("prompt") or body["messages"][-1]["content"]
    if prompt.startswith("bad"):
        return "failed", "output_truncated", "cut"
    return "succeeded", prompt.upper(), prompt.upper()


def test_run_writes_results_in_input_order_and_resumes(invoke, gw, tmp_path):
    gw.outcome = _outcome
    gw.auto_finish = False  # jobs finish one per wait call, out of submission batches
    lines = [json.dumps(f"p{i}") for i in range(30)]
    lines[3] = json.dumps({"prompt": "bad three", "id": "x3"})
    lines[5] = json.dumps({"messages": [{"role": "user", "content": "chat five"}], "id": 5})
    lines.insert(10, "")  # blank lines are skipped
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    args = ["run", str(tmp_path / "in.jsonl"), "-o", str(out), "--max-tokens", "4"]
    result = invoke(*args, "--concurrency", "7", "--batch-size", "3")
    assert result.exit_code == 1, result.output  # one input failed
    assert "30 inputs: 29 succeeded, 1 failed" in result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["index"] for row in rows] == list(range(30))
    assert rows[0] == {"index": 0, "job_id": rows[0]["job_id"], "value": "P0"}
    assert rows[3]["id"] == "x3" and rows[3]["error"]["code"] == "output_truncated"
    assert rows[5]["id"] == 5 and rows[5]["value"] == "CHAT FIVE"
    assert len({row["job_id"] for row in rows}) == 30 == len(gw.jobs)
    sent = [json.loads(r.content) for r in gw.requests if r.url.path == "/v1/jobs/batch"]
    assert all(job["sampling"] == {"max_tokens": 4} for b in sent for job in b["jobs"])

    # Again: every job found, none made.
    again = invoke("--json", *args)
    assert again.exit_code == 1
    assert json.loads(again.stdout) == {
        "total": 30,
        "succeeded": 29,
        "failed": 1,
        "resumed": 30,
        "output": str(out),
    }
    assert len(gw.jobs) == 30
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows


def test_run_interrupted_midway_resumes_without_new_jobs(invoke, gw, tmp_path, monkeypatch):
    gw.auto_finish = False
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(f"q{i}") + "\n" for i in range(40)))
    out = tmp_path / "out.jsonl"
    args = ["run", str(tmp_path / "in.jsonl"), "-o", str(out), "--concurrency", "10"]
    seen = []
    real = structq.cli._OrderedWriter.__call__

    def interrupt_after_12(self, item):
        real(self, item)
        seen.append(item)
        if len(seen) == 12:
            raise KeyboardInterrupt

    monkeypatch.setattr(structq.cli._OrderedWriter, "__call__", interrupt_after_12)
    result = invoke(*args)
    assert result.exit_code == 130
    partial = out.read_text().splitlines()
    assert 0 < len(partial) <= 12
    first_jobs = dict(gw.jobs)
    assert 12 <= len(first_jobs) < 40
    monkeypatch.setattr(structq.cli._OrderedWriter, "__call__", real)

    result = invoke(*args)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["value"] for row in rows] == [f"echo: q{i}" for i in range(40)]
    assert len(gw.jobs) == 40  # exactly one job per input
    assert rows[: len(partial)] == [json.loads(line) for line in partial]


def test_run_to_stdout_and_bad_input(invoke, gw, tmp_path):
    result = invoke(
        "--json", "run", "-", "--type", "int", "--progress", input='"a"\n{"prompt": "b"}\n'
    )
    assert result.exit_code == 0, result.output
    assert "2/2" in result.stderr  # the progress bar
    assert [json.loads(line)["value"] for line in result.stdout.splitlines()] == [42, 42]
    bad = invoke("run", "-", input='"a"\n{"text": "b"}\n')
    assert bad.exit_code == 2 and "input line 2" in bad.stderr
    assert invoke("run", "-", input="not json\n").exit_code == 2
    assert len(gw.jobs) == 2


def test_batch_create_status_download_cancel(invoke, gw, tmp_path):
    gw.outcome = _outcome
    lines = [{"custom_id": f"c{i}", "prompt": f"line {i}", "max_tokens": 4} for i in range(3)]
    lines.append({"custom_id": "c3", "prompt": "bad line"})
    lines = [
        {"custom_id": x.pop("custom_id"), "method": "POST", "url": "/v1/jobs", "body": x}
        for x in lines
    ]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    created = invoke("batch", "create", str(tmp_path / "in.jsonl"), "--window", "1h",
                     "--metadata", "run=1", "--priority", "2")  # fmt: skip
    assert created.exit_code == 0, created.output
    batch_id = created.stdout.strip()
    assert "uploaded file-0001 (4 lines)" in created.stderr
    upload = next(r for r in gw.requests if r.url.path == "/v1/files")
    assert upload.headers["content-type"].startswith("multipart/form-data")
    assert upload.headers["authorization"] == "Bearer sk-test"
    create = json.loads(next(r for r in gw.requests if r.url.path == "/v1/batches").content)
    assert create == {
        "input_file_id": "file-0001",
        "endpoint": "/v1/jobs",
        "completion_window": "1h",
        "priority": 2,
        "metadata": {"run": "1"},
    }

    early = invoke("batch", "download", batch_id)  # first read: in_progress
    assert early.exit_code == 3 and "not finished" in early.stderr
    status = invoke("--json", "batch", "status", batch_id)
    assert json.loads(status.stdout)["status"] == "completed"
    assert "3/4 completed, 1 failed" in invoke("batch", "status", batch_id).stdout
    assert invoke("batch", "status", batch_id, "--wait").exit_code == 1  # a failed line

    out, errs = tmp_path / "out.jsonl", tmp_path / "errs.jsonl"
    result = invoke("batch", "download", batch_id, "-o", str(out), "--errors", str(errs))
    assert result.exit_code == 0, result.output
    assert "3 output lines, 1 failed" in result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["custom_id"] for r in rows] == ["c0", "c1", "c2"]
    assert rows[0]["response"]["body"]["result"]["value"] == "LINE 0"
    [err] = [json.loads(line) for line in errs.read_text().splitlines()]
    assert err["custom_id"] == "c3" and err["error"]["code"] == "output_truncated"
    to_stdout = invoke("batch", "download", batch_id)
    assert len(to_stdout.stdout.splitlines()) == 3
    listed = invoke("--json", "batch", "ls")
    assert [json.loads(line)["id"] for line in listed.stdout.splitlines()] == [batch_id]

    second = invoke("batch", "create", str(tmp_path / "in.jsonl")).stdout.strip()
    assert invoke("batch", "cancel", second).stdout == f"{second} cancelled\n"
    assert invoke("batch", "status", "batch_nope").exit_code == 4


def test_batch_download_wait_polls(invoke, gw, tmp_path):
    gw.batch_reads_to_finish = 4
    (tmp_path / "in.jsonl").write_text('{"custom_id": "a", "prompt": "x"}\n')
    batch_id = invoke("batch", "create", str(tmp_path / "in.jsonl")).stdout.strip()
    result = invoke("--json", "batch", "download", batch_id, "--wait", "-o", str(tmp_path / "o"))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["output_lines"] == 1
    reads = [r for r in gw.requests if r.url.path == f"/v1/batches/{batch_id}"]
    assert len(reads) == 4


def test_models_and_workers(invoke, gw):
    cards = [
        {"id": "a", "object": "model", "max_model_len": 2048, "workers": 2, "parent": None},
        {"id": "b", "object": "model", "max_model_len": 4096, "workers": 1, "parent": None},
        {"id": "a-lora", "object": "model", "max_model_len": 2048, "workers": 2, "parent": "a"},
    ]
    for _ in range(3):
        gw.can("/v1/models", 200, {"object": "list", "data": cards})
    models = invoke("models")
    lines = models.stdout.splitlines()
    assert models.exit_code == 0 and lines[1].split() == ["a", "-", "2", "2048"]
    assert lines[3].split() == ["a-lora", "a", "2", "2048"]
    workers = invoke("--json", "workers")
    assert json.loads(workers.stdout) == {"total": 3, "models": {"a": 2, "b": 1}}
    assert "3 workers running" in invoke("workers").stderr


def test_keys_create(invoke):
    from api.auth import hash_key

    result = invoke("--json", "keys", "create", "alice", "--admin")
    assert result.exit_code == 0, result.output
    made = json.loads(result.stdout)
    assert made["key"].startswith("sq_")
    assert made["entry"] == {"name": "alice", "sha256": hash_key(made["key"]), "admin": True}
    human = invoke("keys", "create", "bob")
    assert "shown once" in human.stdout and '"name": "bob"' in human.stdout


def test_help_documents_the_exit_codes(invoke):
    result = invoke("--help")
    assert "Exit codes:" in result.stdout and "130" in result.stdout
    assert invoke("--version").stdout.strip() == f"structq, version {structq.__version__}"


def test_module_entry_point_and_light_import():
    """`python -m structq` runs the CLI, and importing it loads none of the service."""
    script = (
        "import sys, structq; assert 'structq.cli' not in sys.modules; import structq.cli; "
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'vllm','torch','fastapi','celery','redis','api','worker','shared','tqdm'}); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60, cwd=ROOT)
    result = subprocess.run(
        [sys.executable, "-m", "structq", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0 and "Exit codes:" in result.stdout
    old = subprocess.run(
        [sys.executable, "-m", "api.keys", "create", "x"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert old.returncode == 0 and "STRUCTQ_API_KEYS entry" in old.stdout
