from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from scripts.seed_jobs import ARITHMETIC_GRAMMAR, CHARACTER_SCHEMA
from shared.output_types import (
    BoolSpec,
    ChoiceSpec,
    FloatSpec,
    GrammarSpec,
    IntSpec,
    JsonSchemaSpec,
    OutputMismatch,
    OutputType,
    RegexSpec,
    TextSpec,
)

adapter = TypeAdapter(OutputType)


@pytest.mark.parametrize(
    ("spec", "text", "value"),
    [
        (TextSpec(), "anything at all", "anything at all"),
        (
            JsonSchemaSpec(schema=CHARACTER_SCHEMA),
            '{"name":"A","age":3,"skills":[]}',
            {"name": "A", "age": 3, "skills": []},
        ),
        (RegexSpec(pattern=r"\d{3}-\d{2}-\d{4}"), "123-45-6789", "123-45-6789"),
        (ChoiceSpec(choices=["Paris", "Rome"]), "Rome", "Rome"),
        (IntSpec(), "-42", -42),
        (FloatSpec(), "3.5e+2", 350.0),
        (BoolSpec(), "False", False),
        (GrammarSpec(grammar=ARITHMETIC_GRAMMAR), "23 + 48", "23 + 48"),
    ],
)
def test_parse_conforming_output(spec, text, value):
    parsed = spec.parse(text)
    assert parsed == value
    assert type(parsed) is type(value)


@pytest.mark.parametrize(
    ("spec", "text", "reason"),
    [
        (JsonSchemaSpec(schema=CHARACTER_SCHEMA), '{"name":"A","age":3', "not valid JSON"),
        (
            JsonSchemaSpec(schema=CHARACTER_SCHEMA),
            '{"name":"A","age":"3","skills":[]}',
            "does not match the JSON Schema",
        ),
        (RegexSpec(pattern=r"\d{3}"), "1234", "does not fully match"),
        (ChoiceSpec(choices=["Paris", "Rome"]), "Berlin", "not one of the choices"),
        (IntSpec(), "4.2", "does not fully match"),
        (FloatSpec(), "1.", "does not fully match"),
        (BoolSpec(), "true", "does not fully match"),
        (GrammarSpec(grammar=ARITHMETIC_GRAMMAR), "23 +", "not in the grammar's language"),
    ],
)
def test_parse_refuses_nonconforming_output(spec, text, reason):
    with pytest.raises(OutputMismatch, match=reason):
        spec.parse(text)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"type": "regex", "pattern": "("}, "invalid regular expression"),
        ({"type": "regex", "pattern": ""}, "at least 1 character"),
        ({"type": "json_schema", "schema": {"type": "foo"}}, "invalid JSON Schema"),
        (
            {"type": "json_schema", "schema": {"type": "object", "properties": 5}},
            "invalid JSON Schema at properties",
        ),
        ({"type": "choice", "choices": []}, "at least 1 item"),
        ({"type": "choice", "choices": ["a", ""]}, "at least 1 character"),
        ({"type": "grammar", "grammar": "start: ("}, "grammar does not parse"),
        ({"type": "xml"}, "does not match any of the expected tags"),
        ({"type": "int", "extra": 1}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_specs_are_refused_with_a_reason(raw, message):
    with pytest.raises(ValidationError, match=message):
        adapter.validate_python(raw)


def test_json_schema_spec_reads_and_writes_the_schema_key():
    spec = adapter.validate_python({"type": "json_schema", "schema": CHARACTER_SCHEMA})
    assert spec.json_schema == CHARACTER_SCHEMA
    assert spec.model_dump(by_alias=True)["schema"] == CHARACTER_SCHEMA
    assert adapter.validate_json(spec.model_dump_json(by_alias=True)) == spec
