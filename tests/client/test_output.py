"""Python output types → structq specs, and result values → typed values."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

import pytest
from pydantic import BaseModel
from typing_extensions import TypedDict

from structq.output import output_spec


class Character(BaseModel):
    name: str
    age: int
    skills: list[str]


@dataclass
class Point:
    x: int
    y: int


class Movie(TypedDict):
    title: str
    year: int


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Size(enum.IntEnum):
    S = 1
    M = 2


def test_scalars():
    assert output_spec(str).spec == {"type": "text"}
    assert output_spec(None).spec == {"type": "text"}
    assert output_spec(str).convert("hi") == "hi"
    assert output_spec(int).spec == {"type": "int"}
    assert output_spec(int).convert(42) == 42 and type(output_spec(int).convert(42)) is int
    assert output_spec(float).spec == {"type": "float"}
    assert output_spec(float).convert(3) == 3.0 and isinstance(output_spec(float).convert(3), float)
    assert output_spec(bool).spec == {"type": "bool"}
    assert output_spec(bool).convert(True) is True
    assert output_spec(bool).convert("False") is False
    with pytest.raises(TypeError):
        output_spec(int).convert(True)
    with pytest.raises(TypeError):
        output_spec(str).convert(3)


def test_literal_is_a_choice():
    spec = output_spec(Literal["Paris", "London"])
    assert spec.spec == {"type": "choice", "choices": ["Paris", "London"]}
    assert spec.convert("London") == "London"
    with pytest.raises(ValueError):
        spec.convert("Rome")
    numbers = output_spec(Literal[1, 2, 3])
    assert numbers.spec == {"type": "choice", "choices": ["1", "2", "3"]}
    assert numbers.convert("2") == 2


def test_enum_is_a_choice_of_values():
    spec = output_spec(Color)
    assert spec.spec == {"type": "choice", "choices": ["red", "green"]}
    assert spec.convert("green") is Color.GREEN
    sizes = output_spec(Size)
    assert sizes.spec == {"type": "choice", "choices": ["1", "2"]}
    assert sizes.convert("2") is Size.M


def test_pydantic_model():
    spec = output_spec(Character)
    assert spec.spec == {"type": "json_schema", "schema": Character.model_json_schema()}
    value = spec.convert({"name": "Ada", "age": 36, "skills": []})
    assert value == Character(name="Ada", age=36, skills=[])


def test_dataclass_typeddict_and_generic_types():
    point = output_spec(Point)
    assert point.spec["type"] == "json_schema"
    assert point.spec["schema"]["required"] == ["x", "y"]
    assert point.convert({"x": 1, "y": 2}) == Point(1, 2)
    movie = output_spec(Movie)
    assert movie.spec["schema"]["properties"]["year"] == {"title": "Year", "type": "integer"}
    assert movie.convert({"title": "Alien", "year": 1979}) == {"title": "Alien", "year": 1979}
    numbers = output_spec(list[int])
    assert numbers.spec == {
        "type": "json_schema",
        "schema": {"type": "array", "items": {"type": "integer"}},
    }
    assert numbers.convert([1, 2]) == [1, 2]


def test_outlines_types():
    outlines_types = pytest.importorskip("outlines.types")
    regex = output_spec(outlines_types.Regex(r"\d{3}"))
    assert regex.spec == {"type": "regex", "pattern": r"\d{3}"}
    assert regex.convert("123") == "123"
    grammar = output_spec(outlines_types.CFG('start: "a"+'))
    assert grammar.spec == {"type": "grammar", "grammar": 'start: "a"+'}
    schema = output_spec(outlines_types.JsonSchema(Character))
    assert schema.spec == {"type": "json_schema", "schema": Character.model_json_schema()}
    assert schema.convert({"name": "x"}) == {"name": "x"}
    term = output_spec(outlines_types.integer)  # a DSL term: its regex
    assert term.spec["type"] == "regex" and term.spec["pattern"]


def test_spec_dicts_pass_through():
    spec = output_spec({"type": "regex", "pattern": "a+"})
    assert spec.spec == {"type": "regex", "pattern": "a+"}
    assert spec.convert("aa") == "aa"
    with pytest.raises(TypeError):
        output_spec({"type": "nope"})


def test_unsupported_type():
    with pytest.raises(TypeError, match="unsupported output type"):
        output_spec(object())
