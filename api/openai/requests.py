"""OpenAI-compatible requests (``/v1/chat/completions``, ``/v1/completions``) as vLLM's
OpenAI-compatible server takes them, translated into structq jobs: one job per prompt and
choice (``n``), with the request's sampling and its one output type (``api.openai.output_types``).

Fields this server does not implement but that change what a client gets back (``logprobs``,
``tools``, ``echo``, ...) are refused with a 422 naming them; other unknown fields are ignored,
as vLLM's server ignores them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.errors import InvalidRequest
from api.openai.output_types import output_type
from shared.jobs import JobCreate, Message, Role, Sampling

__all__ = [
    "MAX_CHOICES",
    "ChatRequest",
    "CompletionRequest",
    "OpenAIRequest",
    "chat_jobs",
    "completion_jobs",
]

# Most jobs one request may fan out to (prompts x n).
MAX_CHOICES = 64


class OpenAIRequest(BaseModel):
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


class ChatRequest(OpenAIRequest):
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tool_choice: str | dict[str, Any] | None = None


class CompletionRequest(OpenAIRequest):
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


def _refuse_unsupported(req: OpenAIRequest) -> None:
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


def _sampling(req: OpenAIRequest, max_tokens: int | None, default_max_tokens: int) -> Sampling:
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
    req: OpenAIRequest, prompts: list[dict[str, Any]], sampling: Sampling, wait_s: float
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
