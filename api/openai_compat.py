"""The OpenAI wire format, as vLLM's OpenAI-compatible server speaks it, mapped onto jobs.

A chat or completion request becomes one structq job per choice (``n``) and prompt; its
structured-output fields, in every form clients send (vLLM's ``structured_outputs``, OpenAI's
``response_format``, the older ``guided_*`` fields), become the same output-type specs as
``/v1/jobs`` with the same checks. The answers are built from the finished jobs.

Fields this server does not implement but that change what a client gets back (``logprobs``,
``tools``, ``echo``, ...) are refused with a 422 naming them; other unknown fields are ignored,
as vLLM's server ignores them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.errors import InvalidRequest, JobFailedError, JobRefused, JobTimedOut
from shared.errors import ErrorCode, StructqError
from shared.jobs import JobCreate, JobPublic, JobStatus, Message, Role, Sampling
from shared.output_types import (
    ChoiceSpec,
    GrammarSpec,
    JsonSchemaSpec,
    OutputType,
    RegexSpec,
    TextSpec,
)

__all__ = [
    "MAX_CHOICES",
    "ChatRequest",
    "CompletionRequest",
    "Outcome",
    "chat_jobs",
    "completion_jobs",
    "outcome",
]

# Most jobs one request may fan out to (prompts x n).
MAX_CHOICES = 64


class _Request(BaseModel):
    # Unknown fields are kept aside (``model_extra``): vLLM's fields that would change the
    # output are refused below, anything else is ignored, as vLLM's server ignores it.
    model_config = ConfigDict(extra="allow")

    model: str | None = Field(None, min_length=1, description="Default: STRUCTQ_MODEL.")
    n: int | None = Field(1, ge=1, le=MAX_CHOICES)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    stop: str | list[str] | None = None
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    # vLLM's extra sampling fields
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=2.0)
    ignore_eos: bool | None = False
    # structured output, in every form clients send
    structured_outputs: dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    guided_whitespace_pattern: str | None = None
    guided_decoding_backend: str | None = None  # accepted; the worker's backend decides
    # not implemented, refused when asked for
    logprobs: bool | int | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, float] | None = None
    tools: list[Any] | None = None
    best_of: int | None = None

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class ChatRequest(_Request):
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tool_choice: str | dict[str, Any] | None = None


class CompletionRequest(_Request):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    suffix: str | None = None


# vLLM request fields this server does not implement, with the value that asks for nothing:
# any other value is refused rather than silently ignored.
_UNSUPPORTED_VLLM_FIELDS: dict[str, object] = {
    "stop_token_ids": [],
    "min_tokens": 0,
    "include_stop_str_in_output": False,
    "skip_special_tokens": True,
    "spaces_between_special_tokens": True,
    "continue_final_message": False,
    "add_generation_prompt": True,
    "chat_template": None,
    "chat_template_kwargs": {},
    "prompt_logprobs": None,
    "use_beam_search": False,
    "length_penalty": 1.0,
    "bad_words": [],
    "allowed_token_ids": None,
    "truncate_prompt_tokens": None,
    "logits_processors": None,
    "vllm_xargs": None,
    "kv_transfer_params": None,
    "structural_tag": None,
}
_UNSUPPORTED_STRUCTURED_FIELDS: dict[str, object] = {
    "disable_any_whitespace": True,  # STRUCTQ_JSON_COMPACT, deployment-wide
    "disable_additional_properties": False,
    "disable_fallback": False,
    "structural_tag": None,
}


def _refuse_unsupported(req: _Request) -> None:
    extra = req.model_extra or {}
    for name, default in _UNSUPPORTED_VLLM_FIELDS.items():
        value = extra.get(name, default)
        if value is not None and value != default and not (default is None and value == {}):
            raise InvalidRequest(f"`{name}` is not supported by this server", param=name)
    logprobs = req.logprobs
    asked = {
        "logprobs": logprobs is not None and logprobs is not False,
        "top_logprobs": bool(req.top_logprobs),
        "logit_bias": bool(req.logit_bias),
        "tools": bool(req.tools),
        "best_of": req.best_of not in (None, 1),
        "guided_whitespace_pattern": req.guided_whitespace_pattern is not None,
    }
    if isinstance(req, ChatRequest):
        asked["tool_choice"] = req.tool_choice not in (None, "none", "auto")
    if isinstance(req, ChatRequest):
        asked["echo"] = bool(extra.get("echo"))
    if isinstance(req, CompletionRequest):
        asked["echo"] = req.echo
        asked["suffix"] = req.suffix is not None
    for name, wanted in asked.items():
        if wanted:
            raise InvalidRequest(f"`{name}` is not supported by this server", param=name)


def _sampling(req: _Request, max_tokens: int | None, default_max_tokens: int) -> Sampling:
    given: dict[str, Any] = {
        name: getattr(req, name)
        for name in (
            "temperature",
            "top_p",
            "seed",
            "frequency_penalty",
            "presence_penalty",
            "top_k",
            "min_p",
            "repetition_penalty",
        )
        if getattr(req, name) is not None
    }
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    try:
        return Sampling(
            **given,
            max_tokens=max_tokens or default_max_tokens,
            stop=stop,
            ignore_eos=bool(req.ignore_eos),
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        raise InvalidRequest(err["msg"], param=".".join(map(str, err["loc"]))) from None


def _spec(param: str, build: Any, /, **fields: Any) -> OutputType:
    """An output-type spec, its checks failing as a 422 that names the request field."""
    try:
        return build(**fields)
    except ValidationError as exc:
        message = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise InvalidRequest(f"{param}: {message}", param=param) from None


def _json_value(param: str, value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"{param}: not valid JSON: {exc}", param=param) from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"{param}: a JSON Schema must be an object", param=param)
    return value


_ANY_OBJECT = {"type": "object"}


def _structured_outputs(so: dict[str, Any]) -> OutputType:
    for name, default in _UNSUPPORTED_STRUCTURED_FIELDS.items():
        if so.get(name) is not None and so.get(name) != default:
            raise InvalidRequest(
                f"structured_outputs.{name} is not supported by this server",
                param=f"structured_outputs.{name}",
            )
    if so.get("whitespace_pattern") is not None:
        raise InvalidRequest(
            "structured_outputs.whitespace_pattern is not supported per request (JSON "
            "whitespace is set for the whole deployment: STRUCTQ_JSON_COMPACT)",
            param="structured_outputs.whitespace_pattern",
        )
    kinds = [k for k in ("json", "regex", "choice", "grammar") if so.get(k) is not None]
    kinds += ["json_object"] if so.get("json_object") else []
    if len(kinds) != 1:
        raise InvalidRequest(
            "structured_outputs needs exactly one of json, regex, choice, grammar, json_object"
            + (f" (got {', '.join(kinds)})" if kinds else ""),
            param="structured_outputs",
        )
    kind = kinds[0]
    param = f"structured_outputs.{kind}"
    match kind:
        case "json":
            return _spec(param, JsonSchemaSpec, json_schema=_json_value(param, so["json"]))
        case "regex":
            return _spec(param, RegexSpec, pattern=so["regex"])
        case "choice":
            return _spec(param, ChoiceSpec, choices=so["choice"])
        case "grammar":
            return _spec(param, GrammarSpec, grammar=so["grammar"])
    return JsonSchemaSpec(json_schema=_ANY_OBJECT)


def _response_format(rf: dict[str, Any]) -> OutputType | None:
    kind = rf.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return JsonSchemaSpec(json_schema=_ANY_OBJECT)
    if kind == "json_schema":
        spec = rf.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if schema is None:
            raise InvalidRequest(
                "response_format.json_schema.schema is required", param="response_format"
            )
        param = "response_format.json_schema.schema"
        return _spec(param, JsonSchemaSpec, json_schema=_json_value(param, schema))
    raise InvalidRequest(
        f"response_format type {kind!r} is not supported (text, json_object, json_schema)",
        param="response_format.type",
    )


def output_type(req: _Request) -> OutputType:
    """The one output type a request asks for, however it asks; two at once is a 422."""
    found: list[tuple[str, OutputType | None]] = []
    if req.structured_outputs is not None:
        found.append(("structured_outputs", _structured_outputs(req.structured_outputs)))
    if req.response_format is not None:
        found.append(("response_format", _response_format(req.response_format)))
    if req.guided_json is not None:
        param = "guided_json"
        schema = _json_value(param, req.guided_json)
        found.append((param, _spec(param, JsonSchemaSpec, json_schema=schema)))
    if req.guided_regex is not None:
        found.append(("guided_regex", _spec("guided_regex", RegexSpec, pattern=req.guided_regex)))
    if req.guided_choice is not None:
        spec = _spec("guided_choice", ChoiceSpec, choices=req.guided_choice)
        found.append(("guided_choice", spec))
    if req.guided_grammar is not None:
        spec = _spec("guided_grammar", GrammarSpec, grammar=req.guided_grammar)
        found.append(("guided_grammar", spec))
    specs = [(name, spec) for name, spec in found if spec is not None]
    if len(specs) > 1:
        names = ", ".join(name for name, _ in specs)
        raise InvalidRequest(f"give one structured-output constraint, not several ({names})")
    return specs[0][1] if specs else TextSpec()


def _text_content(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"{where}: content must be a string or a list of parts", where)
    texts = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind in ("image_url", "input_image", "image"):
            raise InvalidRequest(
                f"{where}.{i}: image parts are not supported: the served models read text only",
                f"{where}.{i}",
            )
        else:
            raise InvalidRequest(
                f"{where}.{i}: unsupported content part type {kind!r} (only text parts)",
                f"{where}.{i}",
            )
    # vLLM's server joins a message's text parts with newlines.
    return "\n".join(texts)


_ROLES: dict[str, Role] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
}


def _messages(raw: list[dict[str, Any]]) -> list[Message]:
    messages = []
    for i, message in enumerate(raw):
        where = f"messages.{i}"
        if not isinstance(message, dict):
            raise InvalidRequest(f"{where}: a message must be an object", where)
        role = message.get("role")
        role = _ROLES.get(role) if isinstance(role, str) else None
        if role is None:
            raise InvalidRequest(
                f"{where}.role: {message.get('role')!r} is not supported (system, developer, "
                "user, assistant)",
                f"{where}.role",
            )
        content = message.get("content")
        if content is None:
            raise InvalidRequest(f"{where}.content is required", f"{where}.content")
        messages.append(Message(role=role, content=_text_content(content, f"{where}.content")))
    return messages


def _fan_out(
    req: _Request, prompts: list[dict[str, Any]], sampling: Sampling, wait_s: float
) -> list[JobCreate]:
    n = req.n or 1
    if len(prompts) * n > MAX_CHOICES:
        raise InvalidRequest(
            f"{len(prompts)} prompts x n={n} is more than {MAX_CHOICES} choices", param="n"
        )
    spec = output_type(req)
    jobs = []
    for prompt in prompts:
        for i in range(n):
            # n samples of one prompt: with a seed, seed, seed+1, ... so they differ.
            seed = None if sampling.seed is None else (sampling.seed + i + 2**63) % 2**64 - 2**63
            jobs.append(
                JobCreate(
                    **prompt,
                    output_type=spec,
                    sampling=sampling.model_copy(update={"seed": seed}),
                    model=req.model,
                    timeout_s=wait_s,
                    stream=bool(req.stream),
                )
            )
    return jobs


def chat_jobs(req: ChatRequest, default_max_tokens: int, wait_s: float) -> list[JobCreate]:
    _refuse_unsupported(req)
    sampling = _sampling(req, req.max_completion_tokens or req.max_tokens, default_max_tokens)
    return _fan_out(req, [{"messages": _messages(req.messages)}], sampling, wait_s)


def completion_jobs(
    req: CompletionRequest, default_max_tokens: int, wait_s: float
) -> list[JobCreate]:
    _refuse_unsupported(req)
    prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise InvalidRequest("prompt must be a string or a list of strings", param="prompt")
    if not all(prompts):
        raise InvalidRequest("prompt must not be empty", param="prompt")
    sampling = _sampling(req, req.max_tokens, default_max_tokens)
    return _fan_out(req, [{"prompt": p} for p in prompts], sampling, wait_s)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One finished choice, or why the request as a whole failed."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: StructqError | None = None


def outcome(job: JobPublic | None, job_id: str) -> Outcome:
    """A choice from a finished job. A constrained output cut by max_tokens is still an answer
    (finish_reason ``length``, as vLLM gives it); any other failure fails the request."""
    if job is None:
        return Outcome(error=JobFailedError(f"job {job_id} vanished (deleted meanwhile?)"))
    if job.result is not None:
        return Outcome(
            text=job.result.text,
            finish_reason=job.result.finish_reason,
            prompt_tokens=job.result.usage.prompt_tokens,
            completion_tokens=job.result.usage.completion_tokens,
        )
    error = job.error
    if not job.status.terminal:
        return Outcome(error=JobTimedOut(f"job {job_id} did not finish in time; cancelled"))
    if error is None:
        return Outcome(error=JobFailedError(f"job {job_id} ended {job.status.value}"))
    if error.code in (ErrorCode.OUTPUT_TRUNCATED, ErrorCode.OUTPUT_INVALID):
        spent = error.usage
        return Outcome(
            text=error.text or "",
            finish_reason="length" if error.code == ErrorCode.OUTPUT_TRUNCATED else "stop",
            prompt_tokens=0 if spent is None else spent.prompt_tokens,
            completion_tokens=0 if spent is None else spent.completion_tokens,
        )
    if error.code == ErrorCode.ENGINE_REJECTED:
        return Outcome(error=JobRefused(error.message))
    if error.code == ErrorCode.DEADLINE_EXCEEDED or job.status is JobStatus.EXPIRED:
        return Outcome(error=JobTimedOut(f"job {job_id} did not finish in time: {error.message}"))
    return Outcome(error=JobFailedError(f"job {job_id} {job.status.value}: {error.message}"))


def usage(outcomes: list[Outcome], n: int) -> dict[str, int]:
    # OpenAI counts a prompt once however many choices it has.
    prompt = sum(o.prompt_tokens for o in outcomes[::n])
    completion = sum(o.completion_tokens for o in outcomes)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def chat_response(rid: str, model: str, outcomes: list[Outcome], n: int) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": o.text},
                "finish_reason": o.finish_reason,
                "logprobs": None,
            }
            for i, o in enumerate(outcomes)
        ],
        "usage": usage(outcomes, n),
    }


def completion_response(rid: str, model: str, outcomes: list[Outcome], n: int) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": i, "text": o.text, "finish_reason": o.finish_reason, "logprobs": None}
            for i, o in enumerate(outcomes)
        ],
        "usage": usage(outcomes, n),
    }


ChunkKind = Literal["chat", "completion"]


def chunk(
    kind: ChunkKind,
    rid: str,
    model: str,
    created: int,
    index: int,
    text: str | None = None,
    finish_reason: str | None = None,
    role: bool = False,
) -> dict[str, Any]:
    """One streamed chunk for one choice."""
    if kind == "chat":
        delta: dict[str, Any] = {}
        if role:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        choice: dict[str, Any] = {"index": index, "delta": delta}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": index, "text": text or ""}
        obj = "text_completion"
    choice.update(logprobs=None, finish_reason=finish_reason)
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice]}
