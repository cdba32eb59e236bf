"""Each output type maps onto vLLM's structured-output parameters (vllm imported, no engine)."""

from __future__ import annotations

import pytest

from scripts.seed_jobs import ARITHMETIC_GRAMMAR, CHARACTER_SCHEMA
from shared.jobs import Job
from shared.output_types import (
    BOOL_PATTERN,
    FLOAT_PATTERN,
    INT_PATTERN,
    BoolSpec,
    ChoiceSpec,
    FloatSpec,
    GrammarSpec,
    IntSpec,
    JsonSchemaSpec,
    RegexSpec,
    TextSpec,
)
from worker.structured import sampling_params, structured_outputs


@pytest.mark.parametrize(
    ("spec", "field", "value"),
    [
        (JsonSchemaSpec(schema=CHARACTER_SCHEMA), "json", CHARACTER_SCHEMA),
        (RegexSpec(pattern=r"\d+"), "regex", r"\d+"),
        (ChoiceSpec(choices=["a", "b"]), "choice", ["a", "b"]),
        (IntSpec(), "regex", INT_PATTERN),
        (FloatSpec(), "regex", FLOAT_PATTERN),
        (BoolSpec(), "regex", BOOL_PATTERN),
        (GrammarSpec(grammar=ARITHMETIC_GRAMMAR), "grammar", ARITHMETIC_GRAMMAR),
    ],
)
def test_each_spec_sets_one_vllm_constraint(spec, field, value):
    params = structured_outputs(spec)
    assert getattr(params, field) == value


def test_text_has_no_constraint_and_sampling_is_carried_over():
    job = Job(
        id="j",
        model="m",
        prompt="x",
        sampling={"max_tokens": 9, "temperature": 0.5, "seed": 4, "stop": ["\n"], "top_k": 5},
    )
    params = sampling_params(job)
    assert structured_outputs(TextSpec()) is None and params.structured_outputs is None
    assert (params.max_tokens, params.temperature, params.seed, params.stop, params.top_k) == (
        9,
        0.5,
        4,
        ["\n"],
        5,
    )
