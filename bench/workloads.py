"""The benchmark's workloads, as job bodies: structq receives them over HTTP, the raw-vLLM
baseline turns the very same bodies into prompts and ``SamplingParams`` with the worker's own
translation (``worker.structured``), so both sides run identical requests."""

from __future__ import annotations

from typing import Any

from scripts.seed_jobs import ARITHMETIC_GRAMMAR, CHARACTER_SCHEMA

__all__ = [
    "WORKLOADS",
    "compile_probe_jobs",
    "distinct_schema_jobs",
    "latency_job",
    "repeated_schema_jobs",
    "text_jobs",
]

Body = dict[str, Any]

_TOPICS = [
    "the sea",
    "a city at night",
    "an old clock",
    "a mountain road",
    "a robot",
    "rain",
    "a library",
    "the first snow",
]


def text_jobs(n: int, tokens: int) -> list[Body]:
    """Plain text of fixed length: `ignore_eos` makes every job generate exactly `tokens`."""
    return [
        {
            "prompt": f"Write a short story about {_TOPICS[i % len(_TOPICS)]}. Story {i}:",
            "sampling": {"max_tokens": tokens, "ignore_eos": True, "seed": i},
        }
        for i in range(n)
    ]


def json_jobs(n: int) -> list[Body]:
    """One JSON Schema (the seeds' Character) shared by every job."""
    return [
        {
            "messages": [{"role": "user", "content": f"Create a character. Number {i}."}],
            "output_type": {"type": "json_schema", "schema": CHARACTER_SCHEMA},
            "sampling": {"max_tokens": 64, "frequency_penalty": 1.5, "seed": i},
        }
        for i in range(n)
    ]


_MIXED_TYPES: list[tuple[str, dict[str, Any]]] = [
    ("Write a haiku about Python.", {"type": "text"}),
    ("Create a character.", {"type": "json_schema", "schema": CHARACTER_SCHEMA}),
    ("Generate a fake social security number.", {"type": "regex", "pattern": r"\d{3}-\d{2}-\d{4}"}),
    (
        "What is the capital of France?",
        {"type": "choice", "choices": ["Paris", "London", "Rome", "Berlin"]},
    ),
    ("How many countries are there in the world?", {"type": "int"}),
    ("What is the value of pi?", {"type": "float"}),
    ("Is the sky blue? Answer True or False.", {"type": "bool"}),
    ("Write an addition.", {"type": "grammar", "grammar": ARITHMETIC_GRAMMAR}),
]


def mixed_jobs(n: int) -> list[Body]:
    """Every output type in turn."""
    return [
        {
            "messages": [{"role": "user", "content": _MIXED_TYPES[i % 8][0]}],
            "output_type": _MIXED_TYPES[i % 8][1],
            "sampling": {"max_tokens": 32, "seed": i},
        }
        for i in range(n)
    ]


# The burst workloads of the issue: (a) 256 x 64 fixed-length text, (b) 128 JSON-Schema jobs
# sharing one schema, (c) 128 jobs mixing all output types.
WORKLOADS: dict[str, list[Body]] = {
    "text_256x64": text_jobs(256, 64),
    "json_schema_128": json_jobs(128),
    "mixed_128": mixed_jobs(128),
}


def _story_schema(field: str) -> dict[str, Any]:
    return {"type": "object", "properties": {field: {"type": "string"}}, "required": [field]}


def repeated_schema_jobs(n: int, tokens: int) -> list[Body]:
    """`n` jobs sharing one schema whose string field runs on to `max_tokens`."""
    return [
        {
            "prompt": f"Tell a story about {_TOPICS[i % len(_TOPICS)]} as JSON:",
            "output_type": {"type": "json_schema", "schema": _story_schema("story")},
            "sampling": {"max_tokens": tokens, "seed": i},
        }
        for i in range(n)
    ]


def distinct_schema_jobs(n: int, tokens: int, salt: str = "") -> list[Body]:
    """As :func:`repeated_schema_jobs`, but every job's schema is new (its field name differs)."""
    return [
        {
            **body,
            "output_type": {"type": "json_schema", "schema": _story_schema(f"story_{salt}{i}")},
        }
        for i, body in enumerate(repeated_schema_jobs(n, tokens))
    ]


def compile_probe_jobs(n: int, salt: str) -> list[Body]:
    """One-token jobs, each with a new schema: their latency minus that of a known schema's is
    the cost of compiling a schema (the token itself is the same either way)."""
    return [
        {**body, "sampling": {"max_tokens": 1, "seed": 0}}
        for body in distinct_schema_jobs(n, 1, salt=salt)
    ]


def latency_job(i: int = 0, tokens: int = 16) -> Body:
    """The single request of the low-load latency runs."""
    return text_jobs(i + 1, tokens)[i]


# -- the near-free engine's workloads (the queue's own ceiling) ----------------------------

_SENTIMENT = ["positive", "negative", "neutral"]
_TICKET_SCHEMA = {
    "type": "object",
    "properties": {"urgent": {"type": "boolean"}, "team": {"enum": ["it", "ops", "hr"]}},
    "required": ["urgent", "team"],
}


def short_text_jobs(n: int) -> list[Body]:
    """(a) 8-token text jobs (`ignore_eos`: every one generates exactly 8 tokens)."""
    return [
        {
            "prompt": f"Ticket {i}: the printer is on fire.",
            "sampling": {"max_tokens": 8, "ignore_eos": True},
        }
        for i in range(n)
    ]


def choice_jobs(n: int) -> list[Body]:
    """(b) Classification: one of three labels."""
    return [
        {
            "prompt": f"Review {i}: the soup was cold. Sentiment:",
            "output_type": {"type": "choice", "choices": _SENTIMENT},
            # Room for the longest label spelled a character a token, and the end: the
            # near-free engine's random weights sometimes take that path (8 failed 1 in 20).
            "sampling": {"max_tokens": 16},
        }
        for i in range(n)
    ]


def small_schema_jobs(n: int) -> list[Body]:
    """(c) Extraction: a small JSON Schema shared by every job."""
    return [
        {
            "prompt": f"Ticket {i}: the printer is on fire. As JSON:",
            "output_type": {"type": "json_schema", "schema": _TICKET_SCHEMA},
            # Room for the longest answer (29 characters) spelled a character a token, and the
            # end: the near-free engine's random weights sometimes take that path (24
            # truncated 1 job in 20 in a smoke run).
            "sampling": {"max_tokens": 32},
        }
        for i in range(n)
    ]


CEILING_WORKLOADS = {
    "text_8": short_text_jobs,
    "choice": choice_jobs,
    "json_small": small_schema_jobs,
}
