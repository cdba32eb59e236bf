"""``structq``: the command line over the Python client (docs/client.md, "Command line").

Human output by default, ``--json`` for scripts (one JSON document; JSONL for ``run`` and
``ls``). Exit codes: see ``EXIT_CODES`` (and ``structq --help``).

Click is imported here only: ``import structq`` does not load this module.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

import click
import httpx

from structq._base import VERSION
from structq._core import Call, MapItem, check
from structq.client import Client, Job
from structq.errors import (
    APIConnectionError,
    APIError,
    JobFailed,
    JobTimeout,
    NotFound,
    OutputValidationError,
    ServerError,
    ServiceUnavailable,
    StructqError,
)
from structq.models import JobRecord

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "cli",
    "exit_code",
    "main",
    "make_client",
]

EXIT_OK = 0
EXIT_FAILED = 1  # a job failed (or, for `run`, any input did)
EXIT_USAGE = 2  # bad arguments or input (click's own)
EXIT_REFUSED = 3  # the API refused the request (a 4xx other than 404)
EXIT_NOT_FOUND = 4  # no such job, batch, file (404)
EXIT_UNAVAILABLE = 5  # 503/5xx, the gateway unreachable, or a wait that ran out
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT)

EXIT_CODES = """\b
Exit codes:
  0    ok
  1    the job failed (for `run`: any input failed; `batch status --wait`: the
       batch did not complete cleanly)
  2    usage or input error
  3    the API refused the request (4xx other than 404: 401, 403, 409, 422, 429)
  4    not found (404)
  5    unavailable: 503 or another 5xx, the gateway unreachable, a wait timed out
  130  interrupted (Ctrl-C)
"""

BATCH_ENDPOINTS = ("/v1/jobs", "/v1/chat/completions", "/v1/completions")
BATCH_TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})

F = TypeVar("F", bound=Callable[..., Any])


def make_client(base_url: str | None, api_key: str | None, timeout: float) -> Client:
    """The client every command uses (tests replace this factory)."""
    return Client(base_url, api_key, timeout=timeout)


def exit_code(exc: BaseException) -> int:
    """The exit code for an error of the client."""
    if isinstance(exc, JobFailed | OutputValidationError):
        return EXIT_FAILED
    if isinstance(exc, NotFound):
        return EXIT_NOT_FOUND
    if isinstance(exc, ServiceUnavailable | ServerError | APIConnectionError | JobTimeout):
        return EXIT_UNAVAILABLE
    if isinstance(exc, APIError):
        return EXIT_REFUSED
    return EXIT_FAILED


class CliError(click.ClickException):
    """A problem with the input the CLI itself finds (exit 2)."""

    exit_code = EXIT_USAGE


class NotFinished(CliError):
    """A batch's results asked for before it ended (exit 3, as the API's 409s)."""

    exit_code = EXIT_REFUSED


class State:
    """The global options, and the client made from them on first use."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        as_json: bool = False,
    ) -> None:
        self.url = url
        self.api_key = api_key
        self.timeout = timeout
        self.json = as_json
        self._client: Client | None = None

    def client(self) -> Client:
        if self._client is None:
            self._client = make_client(self.url, self.api_key, self.timeout)
            click.get_current_context().call_on_close(self._client.close)
        return self._client


def _state() -> State:
    return click.get_current_context().ensure_object(State)


# Output.


def _dump(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, default=str)


def _emit_json(data: Any) -> None:
    click.echo(_dump(data))


def _record_json(record: JobRecord) -> dict[str, Any]:
    return record.model_dump(mode="json")


def _value_text(value: Any) -> str:
    return value if isinstance(value, str) else _dump(value)


def _error_json(exc: StructqError) -> dict[str, Any]:
    error: dict[str, Any] = {"code": exc.code, "message": exc.message}
    if isinstance(exc, APIError):
        error["status"] = exc.status
        if exc.detail is not None:
            error["detail"] = exc.detail
    return {"error": error}


def _report(exc: StructqError, as_json: bool) -> None:
    """An error of the client: as a JSON document on stdout (``--json``), else on stderr."""
    if as_json:
        job = getattr(exc, "job", None)
        if isinstance(exc, JobFailed) and job is not None:
            _emit_json(_record_json(job))  # the failed job itself, its `error` included
        else:
            _emit_json(_error_json(exc))
        return
    click.echo(f"structq: error: {exc}", err=True)
    if isinstance(exc, APIError) and isinstance(exc.detail, list):
        for problem in exc.detail:
            if isinstance(problem, dict):
                where = ".".join(str(part) for part in problem.get("loc", []))
                click.echo(f"  {where}: {problem.get('msg', problem)}", err=True)
    if isinstance(exc, JobFailed) and exc.text:
        click.echo(f"  partial output: {exc.text}", err=True)
    if isinstance(exc, JobTimeout) and exc.job is not None:
        click.echo(f"  job {exc.job.id} is {exc.job.status.value}; it goes on", err=True)


def _show_record(record: JobRecord) -> None:
    rows: list[tuple[str, Any]] = [
        ("id", record.id),
        ("status", record.status.value),
        ("model", record.model),
        ("output", _dump(record.output_type) if record.output_type else None),
        ("created", record.created_at),
        ("started", record.started_at),
        ("finished", record.finished_at),
        ("attempts", record.attempts),
        ("metadata", _dump(record.metadata) if record.metadata else None),
    ]
    if record.result is not None:
        rows.append(("value", _value_text(record.result.value)))
        if record.result.usage is not None:
            usage = record.result.usage
            rows.append(("tokens", f"{usage.prompt_tokens} in, {usage.completion_tokens} out"))
    if record.error is not None:
        rows.append(("error", f"[{record.error.code}] {record.error.message}"))
    for name, value in rows:
        if value is not None:
            click.echo(f"{name:<10}{value}")


def _table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    for row in [headers, *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


# Shared options.


def _apply(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def wrap(func: F) -> F:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return wrap


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(State).json = True


json_option = click.option(
    "--json",
    "as_json",
    is_flag=True,
    expose_value=False,
    callback=_set_json,
    help="Machine output (as the global --json).",
)

output_type_options = _apply(
    click.option(
        "--schema",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="Output: JSON valid against this JSON Schema file.",
    ),
    click.option("--regex", help="Output: text matching this regular expression."),
    click.option(
        "--choice",
        "choices",
        multiple=True,
        help="Output: one of these strings (comma-separated; repeatable).",
    ),
    click.option(
        "--type",
        "type_",
        type=click.Choice(["text", "int", "float", "bool"]),
        help="Output: an int, a float, a bool (or text, the default).",
    ),
    click.option(
        "--grammar",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="Output: text in the language of this Lark grammar file.",
    ),
)

sampling_options = _apply(
    click.option("--max-tokens", type=click.IntRange(min=1), help="Most tokens to generate."),
    click.option("--temperature", type=float),
    click.option("--top-p", type=float),
    click.option("--seed", type=int),
    click.option("--stop", multiple=True, help="A stop string (repeatable)."),
)

job_options = _apply(
    click.option("--model", help="The model (default: the gateway's)."),
    click.option("--priority", type=int, help="0 (lowest) to 3; default 1."),
    click.option("--metadata", multiple=True, metavar="KEY=VALUE", help="Repeatable."),
    click.option("--webhook", metavar="URL", help="POSTed the job's events."),
    click.option("--job-timeout", type=float, help="Seconds the job may take (its timeout_s)."),
    click.option("--deadline", help="When the job expires (ISO 8601 with a timezone)."),
)


def output_type(options: dict[str, Any]) -> dict[str, Any] | None:
    """The output-type spec of the flags (None: text)."""
    schema: Path | None = options.pop("schema", None)
    regex: str | None = options.pop("regex", None)
    choices: tuple[str, ...] = options.pop("choices", ())
    type_: str | None = options.pop("type_", None)
    grammar: Path | None = options.pop("grammar", None)
    given = [
        name
        for name, value in (
            ("--schema", schema),
            ("--regex", regex),
            ("--choice", choices),
            ("--type", type_),
            ("--grammar", grammar),
        )
        if value
    ]
    if len(given) > 1:
        raise click.UsageError(f"give one output type, not {' and '.join(given)}")
    if schema is not None:
        try:
            loaded = json.loads(schema.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--schema") from None
        if not isinstance(loaded, dict):
            raise click.BadParameter("a JSON Schema is a JSON object", param_hint="--schema")
        return {"type": "json_schema", "schema": loaded}
    if regex is not None:
        return {"type": "regex", "pattern": regex}
    if choices:
        members = [part.strip() for choice in choices for part in choice.split(",")]
        if not all(members):
            raise click.BadParameter("an empty choice", param_hint="--choice")
        return {"type": "choice", "choices": members}
    if type_ is not None:
        return {"type": type_}
    if grammar is not None:
        return {"type": "grammar", "grammar": grammar.read_text(encoding="utf-8")}
    return None


def sampling(options: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name in ("max_tokens", "temperature", "top_p", "seed"):
        value = options.pop(name, None)
        if value is not None:
            found[name] = value
    stop = options.pop("stop", ())
    if stop:
        found["stop"] = list(stop)
    return found


def job_fields(options: dict[str, Any]) -> dict[str, Any]:
    """The client's keyword arguments of the job options."""
    metadata: dict[str, str] = {}
    for item in options.pop("metadata", ()):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--metadata")
        metadata[key] = value
    return {
        "model": options.pop("model", None),
        "priority": options.pop("priority", None),
        "metadata": metadata or None,
        "webhook": options.pop("webhook", None),
        "timeout_s": options.pop("job_timeout", None),
        "deadline": options.pop("deadline", None),
    }


def _read_text(source: str) -> str:
    if source == "-":
        return sys.stdin.read()
    try:
        return Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise click.BadParameter(str(exc), param_hint="--messages") from None


def _messages(source: str) -> list[dict[str, Any]]:
    try:
        messages = json.loads(_read_text(source))
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--messages") from None
    if not (
        isinstance(messages, list)
        and messages
        and all(isinstance(m, dict) and "role" in m and "content" in m for m in messages)
    ):
        raise click.BadParameter(
            'a JSON list of {"role", "content"} objects', param_hint="--messages"
        )
    return messages


# The commands.


class _Group(click.Group):
    """Maps the client's errors and Ctrl-C to the documented exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except StructqError as exc:
            _report(exc, ctx.ensure_object(State).json)
            ctx.exit(exit_code(exc))
        except KeyboardInterrupt:
            click.echo("\nstructq: interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)


@click.group(
    cls=_Group, epilog=EXIT_CODES, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.option(
    "--url",
    envvar="STRUCTQ_URL",
    show_envvar=True,
    help="The gateway (default http://127.0.0.1:8000).",
)
@click.option("--api-key", envvar="STRUCTQ_API_KEY", show_envvar=True, help="Sent as Bearer.")
@click.option("--http-timeout", type=float, default=30.0, show_default=True, help="Per request.")
@click.option("--json", "as_json", is_flag=True, help="Machine output: JSON (JSONL for lists).")
@click.version_option(VERSION, prog_name="structq")
@click.pass_context
def cli(
    ctx: click.Context, url: str | None, api_key: str | None, http_timeout: float, as_json: bool
) -> None:
    """structq: structured generation jobs on a structq gateway."""
    ctx.obj = State(url, api_key, http_timeout, as_json)


@cli.command()
@click.argument("prompt", required=False)
@click.option("--messages", metavar="FILE", help="A chat: a JSON list of messages ('-': stdin).")
@output_type_options
@sampling_options
@job_options
@click.option("--idempotency-key", help="Submitting it again returns the same job.")
@click.option("--wait", is_flag=True, help="Wait for the job and print its value.")
@click.option("--stream", is_flag=True, help="Stream the job's text as it is generated.")
@click.option("--timeout", type=float, help="With --wait: most seconds to wait (then exit 5).")
@json_option
def submit(
    prompt: str | None,
    messages: str | None,
    idempotency_key: str | None,
    wait: bool,
    stream: bool,
    timeout: float | None,
    **options: Any,
) -> None:
    """Submit a job: PROMPT (a string, '-' for stdin) or --messages FILE.

    Prints the job's id, or with --wait its value (--json: the job record).
    """
    if (prompt is None) == (messages is None):
        raise click.UsageError("give a PROMPT or --messages FILE (one of them)")
    source: Any = _messages(messages) if messages is not None else prompt
    if source == "-":
        source = sys.stdin.read()
    spec = output_type(options)
    fields = job_fields(options)
    state = _state()
    job = state.client().submit(
        source,
        spec,
        stream=stream,
        idempotency_key=idempotency_key,
        **fields,
        **sampling(options),
    )
    if stream:
        _stream(job, state.json)
    elif wait:
        _finish(job.wait(timeout), state.json)
    elif state.json:
        _emit_json(_record_json(job.record))
    else:
        click.echo(job.id)


def _finish(job: Job, as_json: bool) -> None:
    """A finished job: its value (or record); JobFailed if it did not succeed."""
    if as_json:
        if job.record.result is None or job.status != "succeeded":
            raise JobFailed(job.record)
        _emit_json(_record_json(job.record))
        return
    click.echo(_value_text(job.result()))


def _stream(job: Job, as_json: bool) -> None:
    for text in job.stream():
        if as_json:
            _emit_json({"text": text})
        else:
            click.echo(text, nl=False)
            sys.stdout.flush()
    if not as_json:
        click.echo()
    if job.status != "succeeded":
        raise JobFailed(job.record)
    if as_json:
        _emit_json(_record_json(job.record))


@cli.command()
@click.argument("job_id")
@json_option
def get(job_id: str) -> None:
    """Show a job."""
    state = _state()
    record = state.client().job(job_id).record
    if state.json:
        _emit_json(_record_json(record))
    else:
        _show_record(record)


@cli.command()
@click.argument("job_id")
@click.option("--timeout", type=float, help="Most seconds to wait (then exit 5).")
@json_option
def wait(job_id: str, timeout: float | None) -> None:
    """Wait for a job; print its value (--json: its record). Exit 1 if it failed."""
    state = _state()
    _finish(state.client().job(job_id).wait(timeout), state.json)


@cli.command()
@click.argument("job_id")
@json_option
def cancel(job_id: str) -> None:
    """Cancel a queued or running job."""
    _acted(_state(), lambda client: client.job(job_id).cancel())


@cli.command()
@click.argument("job_id")
@json_option
def retry(job_id: str) -> None:
    """Queue a failed, cancelled or expired job again (same id)."""
    _acted(_state(), lambda client: client.job(job_id).retry())


def _acted(state: State, act: Callable[[Client], Job]) -> None:
    """Print the job an action on it left (--json: its record), or its id and status."""
    job = act(state.client())
    if state.json:
        _emit_json(_record_json(job.record))
    else:
        click.echo(f"{job.id} {job.status.value}")


@cli.command()
@click.argument("job_id")
@json_option
def stream(job_id: str) -> None:
    """Print a job's text as it is generated (a job submitted with --stream; others all
    at once when they finish). Exit 1 if the job did not succeed."""
    state = _state()
    _stream(state.client().job(job_id), state.json)


@cli.command(name="ls")
@click.option(
    "--status",
    type=click.Choice(["queued", "running", "succeeded", "failed", "cancelled", "expired"]),
)
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@click.option("--cursor", help="Where the previous listing ended.")
@json_option
def list_jobs(status: str | None, limit: int, cursor: str | None) -> None:
    """List jobs, newest first (--json: one record per line)."""
    state = _state()
    client = state.client()
    records: list[JobRecord] = []
    while len(records) < limit:
        page = client.list_jobs(status, limit=min(200, limit - len(records)), cursor=cursor)
        records.extend(page.jobs)
        cursor = page.next_cursor
        if cursor is None:
            break
    if state.json:
        for record in records:
            _emit_json(_record_json(record))
    elif records:
        rows = []
        for r in records:
            what = r.prompt if r.prompt is not None else _dump(r.messages)
            what = what.replace("\n", " ")
            rows.append(
                [
                    r.id,
                    r.status.value,
                    r.created_at.strftime("%Y-%m-%d %H:%M:%S") if r.created_at else "",
                    r.model or "",
                    what[:40] + ("..." if len(what) > 40 else ""),
                ]
            )
        _table(["ID", "STATUS", "CREATED", "MODEL", "PROMPT"], rows)
    if cursor is not None:
        click.echo(f"more: --cursor {cursor}", err=True)


# run: a dataset through map.


def read_inputs(stream: IO[str]) -> tuple[list[Any], list[Any]]:
    """The prompts (or chats) of a JSONL input, and each line's ``id`` (None if none). A
    line is a JSON string, or an object with ``prompt`` or ``messages`` (and ``id``)."""
    inputs: list[Any] = []
    ids: list[Any] = []
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise CliError(f"input line {number}: not JSON ({exc})") from None
        if isinstance(item, str):
            inputs.append(item)
            ids.append(None)
            continue
        if isinstance(item, dict):
            if isinstance(item.get("prompt"), str) and "messages" not in item:
                inputs.append(item["prompt"])
                ids.append(item.get("id"))
                continue
            messages = item.get("messages")
            if "prompt" not in item and isinstance(messages, list) and messages:
                inputs.append(messages)
                ids.append(item.get("id"))
                continue
        raise CliError(
            f"input line {number}: a JSON string, or an object with a string `prompt` or a "
            "list of `messages` (and an optional `id`)"
        )
    return inputs, ids


class _OrderedWriter:
    """Writes each input's result line as soon as every earlier input's is written."""

    def __init__(self, out: IO[str], ids: list[Any]) -> None:
        self.out = out
        self.ids = ids
        self.next = 0
        self.pending: dict[int, MapItem] = {}
        self.failed = 0
        self.resumed = 0

    def __call__(self, item: MapItem) -> None:
        self.pending[item.index] = item
        while self.next in self.pending:
            self._write(self.pending.pop(self.next))
            self.next += 1
        self.out.flush()

    def _write(self, item: MapItem) -> None:
        line: dict[str, Any] = {"index": item.index}
        if self.ids[item.index] is not None:
            line["id"] = self.ids[item.index]
        line["job_id"] = item.job_id
        if item.error is None:
            line["value"] = item.value
        else:
            self.failed += 1
            line["error"] = {"code": item.error.code, "message": item.error.message}
        self.resumed += item.resumed
        self.out.write(_dump(line) + "\n")


@cli.command()
@click.argument("input_file", metavar="INPUT", type=click.File("r", encoding="utf-8"))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=str),
    default="-",
    help="Results, JSONL in input order (default: stdout).",
)
@output_type_options
@sampling_options
@job_options
@click.option("--concurrency", type=click.IntRange(1, 1000), default=256, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 1000), default=500, show_default=True)
@click.option("--key-prefix", default="", help="Change it to run the same inputs as new jobs.")
@click.option("--retry-failed", is_flag=True, help="Queue again jobs found failed from before.")
@click.option(
    "--progress/--no-progress",
    default=None,
    help="A progress bar on stderr (default: when stderr is a terminal).",
)
@json_option
def run(
    input_file: IO[str],
    output: str,
    concurrency: int,
    batch_size: int,
    key_prefix: str,
    retry_failed: bool,
    progress: bool | None,
    **options: Any,
) -> None:
    """Run every line of INPUT (JSONL; '-': stdin) as a job; write the results in input order.

    A line is a JSON string (the prompt) or {"prompt" | "messages", "id"?}. A result line is
    {"index", "id"?, "job_id", "value"} or {..., "error": {"code", "message"}}. Interrupted
    (Ctrl-C), run the same command again: each input's idempotency key comes from its job, so
    jobs already submitted are found again, not made twice. Exit 1 if any input failed.
    """
    spec = output_type(options)
    fields = job_fields(options)
    params = sampling(options)
    inputs, ids = read_inputs(input_file)
    state = _state()
    client = state.client()
    show = progress if progress is not None else sys.stderr.isatty()
    bar: Any = False
    if show:
        from tqdm import tqdm

        bar = tqdm(total=len(inputs), desc="structq", unit="job", file=sys.stderr)
    to_stdout = output == "-"
    out: IO[str] = sys.stdout if to_stdout else open(output, "w", encoding="utf-8")  # noqa: SIM115
    writer = _OrderedWriter(out, ids)
    try:
        client.map(
            inputs,
            spec,
            concurrency=concurrency,
            batch_size=batch_size,
            progress=bar,
            on_result=writer,
            key_prefix=key_prefix,
            retry_failed=retry_failed,
            return_items=True,
            **fields,
            **params,
        )
    finally:
        if bar is not False:
            bar.close()
        if not to_stdout:
            out.close()
    summary = {
        "total": len(inputs),
        "succeeded": len(inputs) - writer.failed,
        "failed": writer.failed,
        "resumed": writer.resumed,
        "output": None if to_stdout else output,
    }
    if state.json and not to_stdout:
        _emit_json(summary)
    else:
        where = "" if to_stdout else f" -> {output}"
        click.echo(
            f"{summary['total']} inputs: {summary['succeeded']} succeeded, {writer.failed} "
            f"failed ({writer.resumed} found from an earlier run){where}",
            err=True,
        )
    if writer.failed:
        click.get_current_context().exit(EXIT_FAILED)


# The gateway's other routes.


def _api(client: Client, method: str, path: str, body: Any = None, **params: Any) -> Any:
    return check(client._send(Call(method, path, json=body, params=params or None)))


def upload(client: Client, path: Path, purpose: str = "batch") -> dict[str, Any]:
    """``POST /v1/files``: a file uploaded (multipart), its file object."""
    args = client._request_args(Call("POST", "/v1/files", wait_s=60.0))
    args.pop("json", None)
    args.pop("params", None)
    try:
        with path.open("rb") as handle:
            response = client._http.post(
                "/v1/files",
                files={"file": (path.name, handle, "application/jsonl")},
                data={"purpose": purpose},
                **args,
            )
    except httpx.TransportError as exc:
        raise APIConnectionError(f"POST /v1/files: {exc or type(exc).__name__}") from exc
    found: dict[str, Any] = check(response)
    return found


def download(client: Client, file_id: str, out: IO[bytes]) -> int:
    """``GET /v1/files/{id}/content`` streamed into ``out``; the lines written."""
    lines = 0
    try:
        with client._http.stream(
            "GET",
            f"/v1/files/{file_id}/content",
            **client._request_args(Call("GET", "", wait_s=60.0)),
        ) as response:
            if not response.is_success:
                response.read()
                check(response)
            for chunk in response.iter_bytes():
                out.write(chunk)
                lines += chunk.count(b"\n")
    except httpx.TransportError as exc:
        raise APIConnectionError(f"GET /v1/files/{file_id}/content: {exc}") from exc
    return lines


@cli.group()
def batch() -> None:
    """The Batch API: a JSONL file of requests run as one unit (docs/batches.md)."""


def _show_batch(data: dict[str, Any]) -> None:
    counts = data.get("request_counts") or {}
    rows = [
        ("id", data.get("id")),
        ("status", data.get("status")),
        ("endpoint", data.get("endpoint")),
        (
            "requests",
            f"{counts.get('completed', 0)}/{counts.get('total', 0)} completed, "
            f"{counts.get('failed', 0)} failed",
        ),
        ("input", data.get("input_file_id")),
        ("output", data.get("output_file_id")),
        ("errors", data.get("error_file_id")),
    ]
    for name, value in rows:
        if value is not None:
            click.echo(f"{name:<10}{value}")


def _poll_batch(client: Client, batch_id: str, interval: float) -> dict[str, Any]:
    while True:
        data: dict[str, Any] = _api(client, "GET", f"/v1/batches/{batch_id}")
        if data.get("status") in BATCH_TERMINAL:
            return data
        time.sleep(interval)


@batch.command(name="create")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--endpoint",
    type=click.Choice(BATCH_ENDPOINTS),
    default="/v1/jobs",
    show_default=True,
    help="What every line's request is.",
)
@click.option("--window", default="24h", show_default=True, help="Completion window (10s-168h).")
@click.option("--webhook", metavar="URL", help="POSTed the batch's end.")
@click.option("--priority", type=int, help="Its lines' priority (0, the default, to 3).")
@click.option("--metadata", multiple=True, metavar="KEY=VALUE", help="Repeatable.")
@json_option
def batch_create(
    file: Path,
    endpoint: str,
    window: str,
    webhook: str | None,
    priority: int | None,
    metadata: tuple[str, ...],
) -> None:
    """Upload FILE (JSONL, one request per line) and start a batch over it; print its id."""
    state = _state()
    client = state.client()
    fields = job_fields({"metadata": metadata})
    uploaded = upload(client, file)
    body: dict[str, Any] = {
        "input_file_id": uploaded["id"],
        "endpoint": endpoint,
        "completion_window": window,
    }
    if webhook is not None:
        body["webhook"] = {"url": webhook}
    if priority is not None:
        body["priority"] = priority
    if fields["metadata"]:
        body["metadata"] = fields["metadata"]
    created = _api(client, "POST", "/v1/batches", body)
    if state.json:
        _emit_json(created)
    else:
        click.echo(f"uploaded {uploaded['id']} ({uploaded.get('lines', '?')} lines)", err=True)
        click.echo(created["id"])


@batch.command(name="status")
@click.argument("batch_id")
@click.option("--wait", is_flag=True, help="Poll until it ends (exit 1 unless it completed).")
@click.option("--interval", type=float, default=5.0, show_default=True, help="Seconds between.")
@json_option
def batch_status(batch_id: str, wait: bool, interval: float) -> None:
    """Show a batch: its status and counts, its output and error files."""
    state = _state()
    client = state.client()
    if wait:
        data = _poll_batch(client, batch_id, interval)
    else:
        data = _api(client, "GET", f"/v1/batches/{batch_id}")
    if state.json:
        _emit_json(data)
    else:
        _show_batch(data)
    failed = (data.get("request_counts") or {}).get("failed", 0)
    if wait and (data.get("status") != "completed" or failed):
        click.get_current_context().exit(EXIT_FAILED)


@batch.command(name="download")
@click.argument("batch_id")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=str),
    default="-",
    help="The output file's lines (default: stdout).",
)
@click.option(
    "--errors",
    type=click.Path(dir_okay=False, path_type=str),
    help="The error file's lines go here.",
)
@click.option("--wait", is_flag=True, help="Poll until the batch ends first.")
@click.option("--interval", type=float, default=5.0, show_default=True)
@json_option
def batch_download(
    batch_id: str, output: str, errors: str | None, wait: bool, interval: float
) -> None:
    """Write a finished batch's output lines (and with --errors its error lines)."""
    state = _state()
    client = state.client()
    if wait:
        data = _poll_batch(client, batch_id, interval)
    else:
        data = _api(client, "GET", f"/v1/batches/{batch_id}")
    if data.get("status") not in BATCH_TERMINAL:
        raise NotFinished(f"batch {batch_id} is {data.get('status')}: not finished (use --wait)")
    written = {"output_lines": 0, "error_lines": 0}
    to_stdout = output == "-"
    out: IO[bytes] = sys.stdout.buffer
    if not to_stdout:
        out = open(output, "wb")  # noqa: SIM115
    try:
        if data.get("output_file_id"):
            written["output_lines"] = download(client, data["output_file_id"], out)
    finally:
        out.flush()
        if not to_stdout:
            out.close()
    if errors is not None:
        with open(errors, "wb") as err_out:
            if data.get("error_file_id"):
                written["error_lines"] = download(client, data["error_file_id"], err_out)
    failed = (data.get("request_counts") or {}).get("failed", 0)
    if state.json and not to_stdout:
        _emit_json({"id": batch_id, "status": data.get("status"), "failed": failed, **written})
    else:
        click.echo(
            f"batch {batch_id} {data.get('status')}: {written['output_lines']} output lines, "
            f"{failed} failed" + ("" if errors is not None or not failed else " (see --errors)"),
            err=True,
        )


@batch.command(name="cancel")
@click.argument("batch_id")
@json_option
def batch_cancel(batch_id: str) -> None:
    """Cancel a batch: queued lines cancelled, running ones aborted, finished ones kept."""
    state = _state()
    data = _api(state.client(), "POST", f"/v1/batches/{batch_id}/cancel")
    if state.json:
        _emit_json(data)
    else:
        click.echo(f"{data['id']} {data['status']}")


@batch.command(name="ls")
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)
@json_option
def batch_list(limit: int) -> None:
    """List your batches, newest first."""
    state = _state()
    data = _api(state.client(), "GET", "/v1/batches", limit=limit)["data"]
    if state.json:
        for item in data:
            _emit_json(item)
    elif data:
        rows = []
        for item in data:
            counts = item.get("request_counts") or {}
            done = f"{counts.get('completed', 0)}/{counts.get('total', 0)}"
            rows.append([item["id"], item["status"], item["endpoint"], done])
        _table(["ID", "STATUS", "ENDPOINT", "DONE"], rows)


@cli.command()
@json_option
def models() -> None:
    """The models running workers serve now (LoRA adapters with their base model as PARENT),
    with their worker counts."""
    state = _state()
    data = _api(state.client(), "GET", "/v1/models")
    if state.json:
        _emit_json(data)
        return
    cards = data.get("data", [])
    if not cards:
        click.echo("no model is served by a running worker now", err=True)
        return
    _table(
        ["MODEL", "PARENT", "WORKERS", "MAX_MODEL_LEN"],
        [
            [
                c["id"],
                c.get("parent") or "-",
                str(c.get("workers", "")),
                str(c.get("max_model_len", "")),
            ]
            for c in cards
        ],
    )


@cli.command()
@json_option
def workers() -> None:
    """Running workers per model (as workers announce them; the API lists no single
    worker, so this is /v1/models' counts)."""
    state = _state()
    cards = _api(state.client(), "GET", "/v1/models").get("data", [])
    # Base models only: an adapter's card counts the workers of its parent's pool again.
    counts = {c["id"]: int(c.get("workers", 0)) for c in cards if not c.get("parent")}
    if state.json:
        _emit_json({"total": sum(counts.values()), "models": counts})
        return
    if counts:
        _table(["MODEL", "WORKERS"], [[name, str(n)] for name, n in counts.items()])
    click.echo(f"{sum(counts.values())} workers running", err=True)


@cli.group()
def keys() -> None:
    """API keys (made locally: no gateway involved)."""


@keys.command(name="create")
@click.argument("name")
@click.option("--admin", is_flag=True, help="Sees every job; admin endpoints.")
@json_option
def keys_create(name: str, admin: bool) -> None:
    """Make a key: print it (once) and its STRUCTQ_API_KEYS entry (only its SHA-256).

    The same as `python -m api.keys create NAME`; needs the gateway's packages.
    """
    try:
        from api.auth import hash_key
        from api.keys import new_key
        from api.settings import ApiKey
    except ImportError as exc:
        raise CliError(
            f"`keys create` needs the gateway's packages (pip install 'structq[api]'): {exc}"
        ) from None
    key = new_key()
    entry = ApiKey(name=name, sha256=hash_key(key), admin=admin).model_dump()
    if _state().json:
        _emit_json({"key": key, "entry": entry})
        return
    click.echo(f"key (give it to the client; shown once): {key}")
    click.echo("STRUCTQ_API_KEYS entry:")
    click.echo(json.dumps(entry))


def main(argv: list[str] | None = None) -> None:
    """The ``structq`` console script."""
    cli.main(args=argv, prog_name="structq")
