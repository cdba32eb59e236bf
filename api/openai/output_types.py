"""The structured-output fields of an OpenAI-compatible request, in every form clients send
them (vLLM's ``structured_outputs``, OpenAI's ``response_format``, the older ``guided_*``
fields), as the one output-type spec ``/v1/jobs`` takes, with the same checks: a bad one is a
422 naming the request field.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from api.errors import InvalidRequest
from shared.output_types import (
    ChoiceSpec,
    GrammarSpec,
    JsonSchemaSpec,
    OutputType,
    RegexSpec,
    TextSpec,
)

if TYPE_CHECKING:
    from api.openai.requests import OpenAIRequest

__all__ = ["output_type"]

_UNSUPPORTED_STRUCTURED_FIELDS: dict[str, object] = {
    "disable_any_whitespace": True,  # STRUCTQ_JSON_COMPACT, deployment-wide
    "disable_additional_properties": False,
    "disable_fallback": False,
    "structural_tag": None,
}


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


def output_type(req: OpenAIRequest) -> OutputType:
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
