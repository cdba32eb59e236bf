"""Output types: what shape a job's output must take, as one tagged family of specs.

A spec is checked when a job is submitted (a bad regex, schema or grammar is refused before
anything is enqueued) and again after generation, when :meth:`parse` turns the finished text
into a typed ``value`` or says why it does not conform. Turning a spec into vLLM's
structured-output parameters is the worker's business (``worker.structured``).

The scalar types follow Outlines' own patterns (``outlines.types``), so a structq job and an
Outlines call with the same type constrain generation the same way.
"""

from __future__ import annotations

import json
import re
from functools import cached_property, lru_cache
from typing import Annotated, Any, Literal

import jsonschema
from lark import Lark
from lark.exceptions import LarkError
from outlines_core.json_schema import build_regex_from_schema
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from shared.errors import OutputMismatch

__all__ = [
    "BOOL_PATTERN",
    "FLOAT_PATTERN",
    "INT_PATTERN",
    "BoolSpec",
    "ChoiceSpec",
    "FloatSpec",
    "GrammarSpec",
    "IntSpec",
    "JsonSchemaSpec",
    "OutputType",
    "RegexSpec",
    "TextSpec",
]

# Outlines' patterns for Python's int, float and bool (outlines/types/__init__.py).
INT_PATTERN = r"[+-]?(0|[1-9][0-9]*)"
FLOAT_PATTERN = rf"{INT_PATTERN}(\.[0-9]+)?([eE][+-][0-9]+)?"
BOOL_PATTERN = r"(True|False)"


# Hard bounds on specs, checked before any costly validation (the gateway's settings may set
# tighter ones): checking a spec near them costs a fraction of a second.
MAX_SCHEMA_JSON = 32768
MAX_SCHEMA_NESTING = 64
MAX_REGEX_CHARS = 4096
MAX_GRAMMAR_CHARS = 16384


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def parse(self, text: str) -> Any:  # pragma: no cover - every subclass overrides it
        raise NotImplementedError


class TextSpec(_Spec):
    """Free text: no constraint."""

    type: Literal["text"] = "text"

    def parse(self, text: str) -> str:
        return text


class JsonSchemaSpec(_Spec):
    """A JSON value valid against a JSON Schema (e.g. pydantic's ``model_json_schema()``)."""

    type: Literal["json_schema"] = "json_schema"
    json_schema: dict[str, Any] = Field(
        validation_alias=AliasChoices("schema", "json_schema"),
        serialization_alias="schema",
        description="The JSON Schema the output must be valid against.",
    )

    @field_validator("json_schema")
    @classmethod
    def _check_schema(cls, schema: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if _trusted(info):
            return schema
        # Hard bounds before any real work (the gateway's own limits are tighter).
        if _depth(schema) > MAX_SCHEMA_NESTING:
            raise ValueError(f"JSON Schema nested deeper than {MAX_SCHEMA_NESTING} levels")
        schema_json = json.dumps(schema, sort_keys=True)
        if len(schema_json) > MAX_SCHEMA_JSON:
            raise ValueError(f"JSON Schema larger than {MAX_SCHEMA_JSON} bytes")
        problem = _schema_problem(schema_json)
        if problem is not None:
            raise ValueError(problem)
        return schema

    def parse(self, text: str) -> Any:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise OutputMismatch(f"output is not valid JSON: {exc}") from None
        error = jsonschema.exceptions.best_match(self._validator.iter_errors(value))
        if error is not None:
            raise OutputMismatch(f"output does not match the JSON Schema: {error.message}")
        return value

    @cached_property
    def _validator(self) -> jsonschema.protocols.Validator:
        return _json_validator(json.dumps(self.json_schema, sort_keys=True))


class RegexSpec(_Spec):
    """Text that fully matches a regular expression."""

    type: Literal["regex"] = "regex"
    pattern: str = Field(
        min_length=1,
        max_length=MAX_REGEX_CHARS,
        description="The regular expression (full match).",
    )

    @field_validator("pattern")
    @classmethod
    def _check_pattern(cls, pattern: str, info: ValidationInfo) -> str:
        if _trusted(info):
            return pattern
        try:
            _regex(pattern)
        except re.error as exc:
            raise ValueError(f"invalid regular expression: {exc}") from None
        except RecursionError:
            raise ValueError("regular expression nested too deeply") from None
        return pattern

    def parse(self, text: str) -> str:
        _full_match(self.pattern, text)
        return text


class ChoiceSpec(_Spec):
    """Exactly one of a list of strings."""

    type: Literal["choice"] = "choice"
    choices: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)

    def parse(self, text: str) -> str:
        if text not in self.choices:
            raise OutputMismatch(f"output {text!r} is not one of the choices")
        return text


class IntSpec(_Spec):
    """An integer, written as Outlines writes Python's ``int``."""

    type: Literal["int"] = "int"

    def parse(self, text: str) -> int:
        _full_match(INT_PATTERN, text)
        return int(text)


class FloatSpec(_Spec):
    """A number, written as Outlines writes Python's ``float``."""

    type: Literal["float"] = "float"

    def parse(self, text: str) -> float:
        _full_match(FLOAT_PATTERN, text)
        return float(text)


class BoolSpec(_Spec):
    """``True`` or ``False``, as Outlines writes Python's ``bool``; the value is a JSON boolean."""

    type: Literal["bool"] = "bool"

    def parse(self, text: str) -> bool:
        _full_match(BOOL_PATTERN, text)
        return text == "True"


class GrammarSpec(_Spec):
    """Text in the language of a context-free grammar in Lark syntax (as Outlines' ``CFG``)."""

    type: Literal["grammar"] = "grammar"
    grammar: str = Field(
        min_length=1,
        max_length=MAX_GRAMMAR_CHARS,
        description="A Lark grammar whose start rule is `start`.",
    )

    @field_validator("grammar")
    @classmethod
    def _check_grammar(cls, grammar: str, info: ValidationInfo) -> str:
        if _trusted(info):
            return grammar
        try:
            _lark(grammar)
        except LarkError as exc:
            first = str(exc).strip().splitlines()[0]
            raise ValueError(f"grammar does not parse: {first}") from None
        except RecursionError:
            raise ValueError("grammar nested too deeply") from None
        return grammar

    def parse(self, text: str) -> str:
        try:
            _lark(self.grammar).parse(text)
        except LarkError as exc:
            first = str(exc).strip().splitlines()[0]
            raise OutputMismatch(f"output is not in the grammar's language: {first}") from None
        return text


OutputType = Annotated[
    TextSpec
    | JsonSchemaSpec
    | RegexSpec
    | ChoiceSpec
    | IntSpec
    | FloatSpec
    | BoolSpec
    | GrammarSpec,
    Field(discriminator="type"),
]


def _trusted(info: ValidationInfo) -> bool:
    """Whether the spec comes from a record structq stored itself (``shared.jobs.TRUSTED``):
    its checks passed when it was submitted, and are not paid again by every reader."""
    return bool(info.context and info.context.get("trusted"))


def _depth(node: Any) -> int:
    """Nesting depth of a JSON value, without recursion."""
    deepest, stack = 0, [(node, 1)]
    while stack:
        value, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_SCHEMA_NESTING:
            return depth
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
    return deepest


def _full_match(pattern: str, text: str) -> None:
    if _regex(pattern).fullmatch(text) is None:
        raise OutputMismatch(f"output {text[:80]!r} does not fully match /{pattern}/")


# Compiled checkers are cached by their source: a burst of jobs usually shares one spec.
@lru_cache(maxsize=256)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


@lru_cache(maxsize=1024)
def _schema_problem(schema_json: str) -> str | None:
    """Why a JSON Schema can't be used (None: it can), cached: checking costs milliseconds."""
    schema = json.loads(schema_json)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(map(str, exc.absolute_path)) or "(root)"
        return f"invalid JSON Schema at {where}: {exc.message}"
    except RecursionError:
        return "JSON Schema nested too deeply"
    try:
        build_regex_from_schema(schema_json)
    except (ValueError, TypeError) as exc:
        return f"JSON Schema not supported for generation: {str(exc).splitlines()[0]}"
    except RecursionError:
        return "JSON Schema nested too deeply"
    return None


@lru_cache(maxsize=256)
def _json_validator(schema_json: str) -> jsonschema.protocols.Validator:
    schema = json.loads(schema_json)
    return jsonschema.validators.validator_for(schema)(schema)


@lru_cache(maxsize=64)
def _lark(grammar: str) -> Lark:
    return Lark(grammar, start="start", parser="earley")
