"""A fake structq gateway for the client's unit tests: an httpx handler (``httpx.MockTransport``)
keeping jobs in memory, with the job API's shapes (records, idempotency keys, the batch and
wait routes, errors) and knobs to refuse, fail or hold jobs."""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
from collections.abc import Callable
from typing import Any

import httpx

TERMINAL = {"succeeded", "failed", "cancelled", "expired"}

Outcome = tuple[str, str, Any]  # ("succeeded", text, value) or ("failed", code, message)


def default_outcome(body: dict[str, Any]) -> Outcome:
    """A plausible result per output type."""
    spec = body.get("output_type", {"type": "text"})
    kind = spec["type"]
    prompt = body.get("prompt") or body["messages"][-1]["content"]
    if kind == "text":
        return "succeeded", f"echo: {prompt}", f"echo: {prompt}"
    if kind == "int":
        return "succeeded", "42", 42
    if kind == "float":
        return "succeeded", "3.14", 3.14
    if kind == "bool":
        return "succeeded", "True", True
    if kind == "choice":
        return "succeeded", spec["choices"][-1], spec["choices"][-1]
    if kind == "regex":
        return "succeeded", "123-45-6789", "123-45-6789"
    if kind == "grammar":
        return "succeeded", "1+2", "1+2"
    if kind == "json_schema":
        value = {"name": "Ada", "age": 36, "skills": ["math"]}
        return "succeeded", json.dumps(value), value
    raise AssertionError(kind)


class FakeGateway:
    def __init__(self, outcome: Callable[[dict[str, Any]], Outcome] = default_outcome) -> None:
        self.outcome = outcome
        self.jobs: dict[str, dict[str, Any]] = {}
        self.keys: dict[str, tuple[str, str]] = {}  # key -> (canonical body, job id)
        self.requests: list[httpx.Request] = []
        self.auto_finish = True
        self.batch_route = True
        self.wait_route = True
        # Canned answers for the next requests to a path: (status, body, headers).
        self.canned: dict[str, list[tuple[int, Any, dict[str, str]]]] = {}
        # Batch items to refuse (the next N new ones) with this status and code.
        self.refuse_items = 0
        self.refusal = (429, "too_many_queued")
        self.max_unfinished = 0
        self.stream_events: list[list[str]] = []
        self._ids = itertools.count(1)
        # The Files and Batch APIs (minimal): a batch ends at its Nth read.
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.batch_reads_to_finish = 2
        self._file_ids = itertools.count(1)

    # Knobs.

    def can(self, path: str, status: int, body: Any = None, headers: dict[str, str] | None = None):
        self.canned.setdefault(path, []).append((status, body, headers or {}))

    def finish(self, job_id: str) -> None:
        job = self.jobs[job_id]
        status, a, b = self.outcome(job["_body"])
        job["status"] = status
        job["started_at"] = job["finished_at"] = "2025-01-01T00:00:01Z"
        job["attempts"] = 1
        if status == "succeeded":
            job["result"] = {
                "text": a,
                "value": b,
                "finish_reason": "stop",
                "usage": {"prompt_tokens": 3, "completion_tokens": 2},
            }
        else:
            job["error"] = {"code": a, "message": b, "text": None, "usage": None}

    def unfinished(self) -> int:
        return sum(job["status"] not in TERMINAL for job in self.jobs.values())

    def paths(self) -> list[str]:
        return [f"{r.method} {r.url.path}" for r in self.requests]

    # The handler.

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        canned = self.canned.get(path)
        if canned:
            status, body, headers = canned.pop(0)
            return httpx.Response(status, json=body, headers=headers)
        if path.startswith(("/v1/files", "/v1/batches")):
            return self._batch_api(request, path)
        body = json.loads(request.content) if request.content else None
        if request.method == "POST" and path == "/v1/jobs":
            return self._create(body, request.headers.get("idempotency-key"))
        if request.method == "POST" and path == "/v1/jobs/batch":
            if not self.batch_route:
                return httpx.Response(405, json={"detail": "Method Not Allowed"})
            return self._batch(body["jobs"])
        if request.method == "POST" and path == "/v1/jobs/wait":
            if not self.wait_route:
                return httpx.Response(405, json={"detail": "Method Not Allowed"})
            return self._wait(body["ids"])
        if request.method == "GET" and path == "/v1/jobs":
            data = [self._public(j) for j in reversed(list(self.jobs.values()))]
            return httpx.Response(200, json={"data": data, "next_cursor": None})
        parts = path.split("/")  # '', 'v1', 'jobs', id, [action]
        if len(parts) >= 4 and parts[3] in self.jobs:
            job = self.jobs[parts[3]]
            action = parts[4] if len(parts) > 4 else ""
            if request.method == "GET" and not action:
                return httpx.Response(200, json=self._public(job))
            if request.method == "POST" and action == "cancel":
                if job["status"] in ("queued", "running"):
                    job["status"] = "cancelled"
                    job["error"] = {"code": "cancelled", "message": "cancelled by the client"}
                elif job["status"] != "cancelled":
                    return _error(409, "conflict", "already finished", status=job["status"])
                return httpx.Response(200, json=self._public(job))
            if request.method == "POST" and action == "retry":
                if job["status"] not in ("failed", "cancelled", "expired"):
                    return _error(409, "conflict", "not retryable", status=job["status"])
                job.update(status="queued", error=None, result=None, retries=job["retries"] + 1)
                if self.auto_finish:
                    self.finish(job["id"])
                return httpx.Response(202, json=self._public(job))
            if request.method == "GET" and action == "stream":
                chunks = self.stream_events.pop(0)
                return httpx.Response(
                    200,
                    content="".join(chunks).encode(),
                    headers={"content-type": "text/event-stream"},
                )
        return _error(404, "job_not_found", f"no job at {path}")

    def _public(self, job: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in job.items() if not k.startswith("_")}

    def _new(self, body: dict[str, Any]) -> dict[str, Any]:
        job_id = f"job-{next(self._ids):05d}"
        job = {
            **body,
            "id": job_id,
            "model": "fake",
            "status": "queued",
            "created_at": "2025-01-01T00:00:00Z",
            "attempts": 0,
            "retries": 0,
            "result": None,
            "error": None,
            "_body": body,
        }
        self.jobs[job_id] = job
        if self.auto_finish:
            self.finish(job_id)
        self.max_unfinished = max(self.max_unfinished, self.unfinished())
        return job

    def _store(self, body: dict[str, Any], key: str | None) -> tuple[int, dict[str, Any]]:
        """(status, job or error) of one submission."""
        if not (body.get("prompt") or body.get("messages")):
            return 422, {"code": "invalid_request", "message": "prompt: missing"}
        canonical = json.dumps(body, sort_keys=True)
        if key is not None and key in self.keys:
            known, job_id = self.keys[key]
            if known != canonical:
                return 422, {"code": "invalid_request", "message": "key reused with another body"}
            return 200, self.jobs[job_id]
        job = self._new(body)
        if key is not None:
            self.keys[key] = (canonical, job["id"])
        return 202, job

    def _create(self, body: dict[str, Any], key: str | None) -> httpx.Response:
        status, job = self._store(body, key)
        if status >= 400:
            return httpx.Response(status, json={"error": job})
        return httpx.Response(status, json=self._public(job))

    def _batch(self, jobs: list[dict[str, Any]]) -> httpx.Response:
        data = []
        for index, item in enumerate(jobs):
            key = item.pop("idempotency_key", None)
            if self.refuse_items and key not in self.keys:
                self.refuse_items -= 1
                status, code = self.refusal
                data.append(
                    {"index": index, "status": status, "error": {"code": code, "message": "no"}}
                )
                continue
            status, job = self._store(item, key)
            row: dict[str, Any] = {"index": index, "status": status}
            if status < 400:
                row["id"] = job["id"]
            else:
                row["error"] = job
                row["detail"] = [{"loc": ["body", "prompt"], "msg": "missing", "type": "missing"}]
            data.append(row)
        stored = sum(row["status"] in (200, 202) for row in data)
        return httpx.Response(
            200, json={"data": data, "submitted": stored, "refused": len(data) - stored}
        )

    def _wait(self, ids: list[str]) -> httpx.Response:
        known = [i for i in ids if i in self.jobs]
        done = [self._public(self.jobs[i]) for i in known if self.jobs[i]["status"] in TERMINAL]
        pending = [i for i in known if self.jobs[i]["status"] not in TERMINAL]
        if not done and pending:  # the real route would wait: finish one, as a worker would
            self.finish(pending[0])
            done, pending = [self._public(self.jobs[pending[0]])], pending[1:]
        unknown = [i for i in ids if i not in self.jobs]
        return httpx.Response(200, json={"data": done, "pending": pending, "unknown": unknown})

    # Files and batches.

    def _add_file(self, name: str, purpose: str, content: bytes) -> dict[str, Any]:
        meta = {
            "id": f"file-{next(self._file_ids):04d}",
            "object": "file",
            "bytes": len(content),
            "created_at": 1735689600,
            "filename": name,
            "purpose": purpose,
            "status": "processed",
            "lines": sum(1 for line in content.splitlines() if line.strip()),
        }
        self.files[meta["id"]] = {**meta, "_content": content}
        return meta

    def _batch_api(self, request: httpx.Request, path: str) -> httpx.Response:
        parts = path.split("/")  # '', 'v1', 'files'|'batches', [id], [action]
        kind = parts[2]
        item_id = parts[3] if len(parts) > 3 else None
        action = parts[4] if len(parts) > 4 else ""
        if kind == "files":
            if request.method == "POST" and item_id is None:
                fields = _multipart(request)
                name, content = fields["file"]
                return httpx.Response(
                    200, json=self._add_file(name, fields["purpose"][1].decode(), content)
                )
            if item_id not in self.files:
                return _error(404, "file_not_found", f"no file {item_id}")
            meta = self.files[item_id]
            if request.method == "GET" and action == "content":
                return httpx.Response(200, content=meta["_content"])
            return httpx.Response(200, json=self._public(meta))
        if request.method == "POST" and item_id is None:
            body = json.loads(request.content)
            source = self.files.get(body["input_file_id"])
            if source is None:
                return _error(404, "file_not_found", f"no file {body['input_file_id']}")
            return httpx.Response(200, json=self._public(self._new_batch(body, source)))
        if request.method == "GET" and item_id is None:
            data = [self._public(b) for b in reversed(list(self.batches.values()))]
            return httpx.Response(200, json={"object": "list", "data": data, "has_more": False})
        if item_id not in self.batches:
            return _error(404, "batch_not_found", f"no batch {item_id}")
        found = self.batches[item_id]
        if request.method == "POST" and action == "cancel":
            if found["status"] not in ("completed", "failed", "expired", "cancelled"):
                self._end_batch(found, "cancelled")
            return httpx.Response(200, json=self._public(found))
        found["_reads"] += 1
        if found["_reads"] >= self.batch_reads_to_finish and found["status"] == "in_progress":
            self._end_batch(found, "completed")
        elif found["status"] == "validating":
            found["status"] = "in_progress"
        return httpx.Response(200, json=self._public(found))

    def _new_batch(self, body: dict[str, Any], source: dict[str, Any]) -> dict[str, Any]:
        lines = []
        for number, raw in enumerate(source["_content"].splitlines(), 1):
            if not raw.strip():
                continue
            line = json.loads(raw)
            custom_id = line.get("custom_id", f"line-{number}")
            job_body = line.get("body", {k: v for k, v in line.items() if k != "custom_id"})
            status, job = self._store(job_body, f"batch:{custom_id}")
            lines.append((custom_id, job["id"] if status < 400 else None, job))
        batch_id = f"batch_{len(self.batches) + 1:04d}"
        self.batches[batch_id] = {
            "id": batch_id,
            "object": "batch",
            "endpoint": body["endpoint"],
            "input_file_id": source["id"],
            "completion_window": body.get("completion_window", "24h"),
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": 1735689600,
            "expires_at": 1735776000,
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "metadata": body.get("metadata"),
            "priority": body.get("priority", 0),
            "_body": body,
            "_lines": lines,
            "_reads": 0,
        }
        return self.batches[batch_id]

    def _end_batch(self, found: dict[str, Any], status: str) -> None:
        out, errors = [], []
        for n, (custom_id, job_id, info) in enumerate(found["_lines"]):
            row: dict[str, Any] = {"id": f"batch_req_{n}", "custom_id": custom_id}
            job = self.jobs.get(job_id) if job_id else None
            if job is not None and job["status"] == "succeeded":
                response = {"status_code": 200, "request_id": job_id, "body": self._public(job)}
                out.append({**row, "response": response, "error": None})
            elif job is not None:
                error = job["error"] or {"code": job["status"], "message": job["status"]}
                errors.append({**row, "response": None, "error": error})
            else:
                errors.append({**row, "response": None, "error": info})
        lines_of = (
            [json.dumps(x).encode() + b"\n" for x in out],
            [json.dumps(x).encode() + b"\n" for x in errors],
        )
        if out:
            found["output_file_id"] = self._add_file(
                "out.jsonl", "batch_output", b"".join(lines_of[0])
            )["id"]
        if errors:
            found["error_file_id"] = self._add_file(
                "err.jsonl", "batch_output", b"".join(lines_of[1])
            )["id"]
        found["request_counts"].update(completed=len(out), failed=len(errors))
        found["status"] = status


def _multipart(request: httpx.Request) -> dict[str, tuple[str | None, bytes]]:
    """A multipart body's fields: name -> (filename, bytes)."""
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + request.content)
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        fields[str(name)] = (part.get_filename(), payload)
    return fields


def _error(http_status: int, code: str, message: str, **extra: Any) -> httpx.Response:
    return httpx.Response(http_status, json={"error": {"code": code, "message": message, **extra}})
