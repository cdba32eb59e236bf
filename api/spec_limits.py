"""Static limits on output-type specs: sizes and shapes no engine should be asked to compile.

Cheap checks that run before the compile check (``api.compile_check``): a spec over a limit
is refused with a 422 naming the limit and the setting that sets it.
"""

from __future__ import annotations

import json
import re._parser as sre_parse  # the stdlib's own regex parser (re's internals, stable in 3.11+)
from typing import Any

from api.errors import SpecTooLarge
from api.settings import ApiSettings
from shared.output_types import ChoiceSpec, GrammarSpec, JsonSchemaSpec, OutputType, RegexSpec

__all__ = ["check_spec"]

_MAXREPEAT = sre_parse.MAXREPEAT
_REPEATS = (sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT, sre_parse.POSSESSIVE_REPEAT)


def check_spec(spec: OutputType, settings: ApiSettings) -> None:
    match spec:
        case JsonSchemaSpec():
            _check_schema(spec.json_schema, settings)
        case RegexSpec():
            _check_regex(spec.pattern, settings)
        case ChoiceSpec():
            if len(spec.choices) > settings.max_enum_values:
                raise SpecTooLarge(
                    f"{len(spec.choices)} choices, more than {settings.max_enum_values} "
                    "(STRUCTQ_MAX_ENUM_VALUES)"
                )
            longest = max(len(choice) for choice in spec.choices)
            if longest > settings.max_choice_length:
                raise SpecTooLarge(
                    f"a choice of {longest} characters, longer than {settings.max_choice_length}"
                    " (STRUCTQ_MAX_CHOICE_LENGTH)"
                )
        case GrammarSpec():
            size = len(spec.grammar.encode())
            if size > settings.max_grammar_bytes:
                raise SpecTooLarge(
                    f"a grammar of {size} bytes, more than {settings.max_grammar_bytes} "
                    "(STRUCTQ_MAX_GRAMMAR_BYTES)"
                )


def _check_regex(pattern: str, settings: ApiSettings) -> None:
    if len(pattern) > settings.max_regex_length:
        raise SpecTooLarge(
            f"a regex of {len(pattern)} characters, longer than {settings.max_regex_length} "
            "(STRUCTQ_MAX_REGEX_LENGTH)"
        )
    try:
        nested = _nested_unbounded_repeat(sre_parse.parse(pattern))
    except RecursionError:
        raise SpecTooLarge("a regex nested too deeply") from None
    if nested:
        raise SpecTooLarge(
            "nested unbounded quantifiers (like `(a+)+`): they make the pattern's automaton "
            "blow up in some engines; write the repetition once"
        )


def _nested_unbounded_repeat(parsed: Any, inside_unbounded: bool = False) -> bool:
    """Whether an unbounded repeat (``*``, ``+``, ``{n,}``) contains another one."""
    for op, arg in parsed:
        if op in _REPEATS:
            low, high, sub = arg
            unbounded = high == _MAXREPEAT
            if unbounded and inside_unbounded:
                return True
            if _nested_unbounded_repeat(sub, inside_unbounded or unbounded):
                return True
        elif op in (sre_parse.SUBPATTERN, sre_parse.ATOMIC_GROUP):
            sub = arg[-1] if op == sre_parse.SUBPATTERN else arg
            if _nested_unbounded_repeat(sub, inside_unbounded):
                return True
        elif op == sre_parse.GROUPREF_EXISTS:
            branches = [b for b in arg[1:] if b is not None]
            if any(_nested_unbounded_repeat(b, inside_unbounded) for b in branches):
                return True
        elif op == sre_parse.BRANCH:
            if any(_nested_unbounded_repeat(branch, inside_unbounded) for branch in arg[1]):
                return True
        elif op in (sre_parse.ASSERT, sre_parse.ASSERT_NOT) and _nested_unbounded_repeat(
            arg[1], inside_unbounded
        ):
            return True
    return False


_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SUBSCHEMA_ONE = ("items", "additionalProperties", "not", "if", "then", "else", "contains")


def _check_schema(schema: dict[str, Any], settings: ApiSettings) -> None:
    size = len(json.dumps(schema))
    if size > settings.max_schema_bytes:
        raise SpecTooLarge(
            f"a JSON Schema of {size} bytes, more than {settings.max_schema_bytes} "
            "(STRUCTQ_MAX_SCHEMA_BYTES)"
        )
    if not _constrained(schema):
        raise SpecTooLarge(
            "an unconstrained JSON Schema (`{}`: any JSON value, at any depth) is refused: give "
            'the value a type, e.g. {"type": "object"}'
        )
    counts = {"properties": 0}
    _walk(schema, 1, settings, counts)
    _check_refs(schema)


def _constrained(schema: Any) -> bool:
    if not isinstance(schema, dict):
        return schema is False
    keywords = {"type", "enum", "const", "$ref", "anyOf", "oneOf", "allOf", "properties"}
    return bool(keywords & schema.keys())


def _walk(schema: Any, depth: int, settings: ApiSettings, counts: dict[str, int]) -> None:
    if not isinstance(schema, dict):
        return
    if depth > settings.max_schema_depth:
        raise SpecTooLarge(
            f"a JSON Schema nested deeper than {settings.max_schema_depth} levels "
            "(STRUCTQ_MAX_SCHEMA_DEPTH)"
        )
    enum = schema.get("enum")
    if isinstance(enum, list) and len(enum) > settings.max_enum_values:
        raise SpecTooLarge(
            f"an enum of {len(enum)} members, more than {settings.max_enum_values} "
            "(STRUCTQ_MAX_ENUM_VALUES)"
        )
    properties = schema.get("properties")
    if isinstance(properties, dict):
        counts["properties"] += len(properties)
        if counts["properties"] > settings.max_schema_properties:
            raise SpecTooLarge(
                f"a JSON Schema with more than {settings.max_schema_properties} properties "
                "(STRUCTQ_MAX_SCHEMA_PROPERTIES)"
            )
    for key in _SUBSCHEMA_LISTS:
        subs = schema.get(key)
        for sub in subs if isinstance(subs, list) else []:
            _walk(sub, depth + 1, settings, counts)
    for key in _SUBSCHEMA_MAPS:
        subs = schema.get(key)
        if isinstance(subs, dict):
            for sub in subs.values():
                _walk(sub, depth + 1, settings, counts)
    for key in _SUBSCHEMA_ONE:
        _walk(schema.get(key), depth + 1, settings, counts)


def _check_refs(schema: dict[str, Any]) -> None:
    """Refuse a schema whose ``$ref``s form a cycle: a recursive structure has no finite
    regular form, and engines either unroll it or give up. Any local reference counts
    (``#/$defs/x``, ``#/properties/a``, ``#``); remote ones are left to the compile check."""

    def resolve(pointer: str) -> Any:
        node: Any = schema
        for part in pointer.removeprefix("#").split("/")[1:]:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict):
                node = node.get(part)
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return None
        return node

    def refs(node: Any) -> set[str]:
        found: set[str] = set()
        stack = [node]
        while stack:
            value = stack.pop()
            if isinstance(value, dict):
                ref = value.get("$ref")
                if isinstance(ref, str) and ref.startswith("#"):
                    found.add(ref)
                stack.extend(value.values())
            elif isinstance(value, list):
                stack.extend(value)
        return found

    visiting: set[str] = set()
    done: set[str] = set()

    def visit(pointer: str) -> None:
        if pointer in done:
            return
        if pointer in visiting:
            raise SpecTooLarge(f"a recursive JSON Schema (`$ref` {pointer} refers back to itself)")
        visiting.add(pointer)
        node = resolve(pointer)
        # The root's own definitions are only reached through references to them.
        if pointer == "#" and isinstance(node, dict):
            node = {k: v for k, v in node.items() if k not in ("$defs", "definitions")}
        for target in sorted(refs(node)):
            visit(target)
        visiting.discard(pointer)
        done.add(pointer)

    visit("#")
