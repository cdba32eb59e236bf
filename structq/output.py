"""Python output types, as Outlines takes them, turned into structq's output-type specs, and
each finished job's ``result.value`` back into a value of that type.

=====================================  ======================================  ===============
output type                            spec                                    value
=====================================  ======================================  ===============
``None``, ``str``                      ``{"type": "text"}``                    ``str``
``int``, ``float``, ``bool``           ``{"type": "int" | "float" | "bool"}``  that type
``Literal["a", "b"]``                  ``{"type": "choice", ...}``             the literal
an ``Enum``                            a choice of the members' values         the member
a pydantic model                       ``{"type": "json_schema", ...}``        an instance
a dataclass, a ``TypedDict``, any      JSON Schema (pydantic ``TypeAdapter``)  validated
type pydantic can describe
``outlines.types.Regex`` (and DSL      ``{"type": "regex", "pattern"}``        ``str``
terms), ``CFG``, ``JsonSchema``,       ``grammar``, ``json_schema``,           ``str``, ``str``,
``Choice``                             ``choice``                              parsed JSON
a spec ``dict`` (``{"type": ...}``)    itself                                  the raw value
=====================================  ======================================  ===============

Outlines itself is never imported here unless one of its DSL terms is given (then it is
installed); its ``Regex``, ``CFG``, ``JsonSchema`` and ``Choice`` are recognised by their
attributes.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

import pydantic

__all__ = ["OutputSpec", "output_spec"]

_SPEC_TYPES = frozenset(
    {"text", "json_schema", "regex", "choice", "int", "float", "bool", "grammar"}
)


@dataclass(frozen=True)
class OutputSpec:
    """An output type as sent (``spec``) and how a job's ``result.value`` becomes the
    Python value (``convert``)."""

    spec: dict[str, Any]
    convert: Callable[[Any], Any]


def _same(value: Any) -> Any:
    return value


def _as_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"not an int: {value!r}")
    return int(value)


def _as_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(f"not a number: {value!r}")
    return float(value)


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("True", "False"):
        return bool(value == "True")
    raise TypeError(f"not a bool: {value!r}")


def _as_str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"not a string: {value!r}")
    return value


def _choice(options: list[tuple[str, Any]]) -> OutputSpec:
    """A choice among strings, each standing for a Python value."""
    if not options:
        raise TypeError("a choice needs at least one option")
    by_text = dict(options)
    if len(by_text) != len(options):
        raise TypeError("the options of a choice must be distinct as strings")

    def convert(value: Any) -> Any:
        try:
            return by_text[value]
        except (KeyError, TypeError):
            raise ValueError(f"{value!r} is not one of {list(by_text)}") from None

    return OutputSpec({"type": "choice", "choices": [text for text, _ in options]}, convert)


def _json_schema(schema: dict[str, Any], convert: Callable[[Any], Any]) -> OutputSpec:
    return OutputSpec({"type": "json_schema", "schema": schema}, convert)


def _is_typed_dict(output_type: Any) -> bool:
    # typing's and typing_extensions' TypedDicts alike (their metaclasses differ).
    return (
        isinstance(output_type, type)
        and issubclass(output_type, dict)
        and hasattr(output_type, "__total__")
        and hasattr(output_type, "__required_keys__")
    )


def _outlines_term(output_type: Any) -> OutputSpec | None:
    """Outlines' own types (``outlines.types``), recognised without importing Outlines."""
    cls = type(output_type)
    if not cls.__module__.startswith("outlines"):
        return None
    name = cls.__name__
    if name == "Regex" and isinstance(getattr(output_type, "pattern", None), str):
        return OutputSpec({"type": "regex", "pattern": output_type.pattern}, _as_str)
    if name == "CFG" and isinstance(getattr(output_type, "definition", None), str):
        return OutputSpec({"type": "grammar", "grammar": output_type.definition}, _as_str)
    if name == "JsonSchema" and isinstance(getattr(output_type, "schema", None), str):
        return _json_schema(json.loads(output_type.schema), _same)
    if name == "Choice" and isinstance(getattr(output_type, "items", None), list):
        return _choice([(str(item), item) for item in output_type.items])
    if cls.__module__.startswith("outlines.types"):  # another DSL term: its regex
        from outlines.types.dsl import to_regex

        return OutputSpec({"type": "regex", "pattern": to_regex(output_type)}, _as_str)
    return None


def output_spec(output_type: Any) -> OutputSpec:
    """The spec of ``output_type`` and its conversion; TypeError if it has none."""
    if isinstance(output_type, OutputSpec):
        return output_type
    if output_type is None or output_type is str:
        return OutputSpec({"type": "text"}, _as_str)
    if output_type is bool:
        return OutputSpec({"type": "bool"}, _as_bool)
    if output_type is int:
        return OutputSpec({"type": "int"}, _as_int)
    if output_type is float:
        return OutputSpec({"type": "float"}, _as_float)
    if isinstance(output_type, dict):
        if output_type.get("type") not in _SPEC_TYPES:
            raise TypeError(f"not an output-type spec: {output_type!r}")
        return OutputSpec(dict(output_type), _same)
    if get_origin(output_type) is Literal:
        return _choice([(_text(arg), arg) for arg in get_args(output_type)])
    if isinstance(output_type, type) and issubclass(output_type, enum.Enum):
        return _choice([(_text(member.value), member) for member in output_type])
    if isinstance(output_type, type) and issubclass(output_type, pydantic.BaseModel):
        model = output_type
        return _json_schema(model.model_json_schema(), model.model_validate)
    term = _outlines_term(output_type)
    if term is not None:
        return term
    if (
        (isinstance(output_type, type) and dataclasses.is_dataclass(output_type))
        or _is_typed_dict(output_type)
        or get_origin(output_type) is not None
    ):
        try:
            adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(output_type)
            schema = adapter.json_schema()
        except pydantic.PydanticUserError as exc:  # e.g. typing.TypedDict on Python < 3.12
            raise TypeError(f"no JSON Schema for {output_type!r}: {exc}") from None
        return _json_schema(schema, adapter.validate_python)
    raise TypeError(
        f"unsupported output type {output_type!r}: use str, int, float, bool, a Literal, an "
        "Enum, a pydantic model, a dataclass, a TypedDict, an Outlines type, or a spec dict"
    )


def _text(option: Any) -> str:
    """A choice option as generated: strings as they are, other literals as ``str()``."""
    return option if isinstance(option, str) else str(option)
