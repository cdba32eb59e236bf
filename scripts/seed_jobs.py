"""The seed documents' examples (Outlines' vLLM pages), as structq jobs.

The demo submits them; the end-to-end tests reuse the grammar and schema.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ARITHMETIC_GRAMMAR", "CHARACTER_SCHEMA", "SEED_JOBS"]

ARITHMETIC_GRAMMAR = r"""
?start: sum

?sum: product
| sum "+" product   -> add
| sum "-" product   -> sub

?product: atom
| product "*" atom  -> mul
| product "/" atom  -> div

?atom: NUMBER           -> number
| "-" atom         -> neg
| "(" sum ")"

%import common.NUMBER
%import common.WS_INLINE

%ignore WS_INLINE
"""

# pydantic's model_json_schema() of the seeds' `Character(name: str, age: int, skills: List[str])`.
CHARACTER_SCHEMA: dict[str, Any] = {
    "properties": {
        "name": {"title": "Name", "type": "string"},
        "age": {"title": "Age", "type": "integer"},
        "skills": {"items": {"type": "string"}, "title": "Skills", "type": "array"},
    },
    "required": ["name", "age", "skills"],
    "title": "Character",
    "type": "object",
}


def _chat(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


# (label, job body). Sampling follows each seed example where it sets any (frequency_penalty
# for the character, temperature 0 for the choice, top_p 0.1 for the regex). The 135M model
# often keeps appending digits to an int or a sum until max_tokens, which structq reports as
# `output_truncated`; the sampling seeds below are ones with which it stops by itself. The
# choice is sent as a plain prompt, as in the seeds' offline example (with the chat template
# this small model answers "London").
SEED_JOBS: list[tuple[str, dict[str, Any]]] = [
    (
        "text",
        {
            "messages": _chat("What's the capital of Latvia?"),
            "sampling": {"max_tokens": 20, "temperature": 0},
        },
    ),
    (
        "json_schema",
        {
            "messages": _chat("Create a character."),
            "output_type": {"type": "json_schema", "schema": CHARACTER_SCHEMA},
            "sampling": {"max_tokens": 200, "frequency_penalty": 1.5, "seed": 7},
        },
    ),
    (
        "choice",
        {
            "prompt": "What is the capital of France?",
            "output_type": {"type": "choice", "choices": ["Paris", "London", "Rome", "Berlin"]},
            "sampling": {"temperature": 0},
        },
    ),
    (
        "regex",
        {
            "messages": _chat("Generate a fake social security number."),
            "output_type": {"type": "regex", "pattern": r"\d{3}-\d{2}-\d{4}"},
            "sampling": {"top_p": 0.1, "max_tokens": 20},
        },
    ),
    (
        "int",
        {
            "messages": _chat("How many countries are there in the world?"),
            "output_type": {"type": "int"},
            "sampling": {"max_tokens": 12, "seed": 0},
        },
    ),
    (
        "grammar",
        {
            "messages": _chat("Write an addition."),
            "output_type": {"type": "grammar", "grammar": ARITHMETIC_GRAMMAR},
            "sampling": {"max_tokens": 24, "seed": 1},
        },
    ),
]
