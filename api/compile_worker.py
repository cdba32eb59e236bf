"""The compile-check process: compiles regexes, JSON Schemas and grammars against a model's
vocabulary, one at a time, for ``api.compile_check``, which kills it when one takes too long.

No torch here: outlines-core (the version vLLM pins) for regexes and JSON Schemas, llguidance
for Lark grammars, and the model's ``tokenizer.json`` read with the standard library.
"""

from __future__ import annotations

import json
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

__all__ = ["compile_spec", "serve", "vocabulary_map"]


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet, reversed: the character standing for each byte."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def _is_byte_level(tokenizer: dict[str, Any]) -> bool:
    decoder = tokenizer.get("decoder") or {}
    kinds = [decoder.get("type")] + [d.get("type") for d in decoder.get("decoders") or []]
    return "ByteLevel" in kinds


def vocabulary_map(tokenizer: dict[str, Any]) -> tuple[dict[bytes, list[int]], int]:
    """Each token's bytes -> its ids (special tokens left out), and the EOS id."""
    special = {t["id"] for t in tokenizer.get("added_tokens", []) if t.get("special")}
    eos = next(
        (t["id"] for t in tokenizer.get("added_tokens", []) if t["content"] in _EOS_NAMES),
        min(special, default=0),
    )
    byte_level = _is_byte_level(tokenizer)
    decoder = _byte_decoder() if byte_level else {}
    mapping: dict[bytes, list[int]] = {}
    for token, token_id in tokenizer["model"]["vocab"].items():
        if token_id in special:
            continue
        if byte_level:
            if any(char not in decoder for char in token):
                continue
            raw = bytes(decoder[char] for char in token)
        elif token.startswith("<0x") and token.endswith(">") and len(token) == 6:
            raw = bytes([int(token[3:5], 16)])
        else:
            raw = token.replace("\u2581", " ").encode()
        mapping.setdefault(raw, []).append(token_id)
    return mapping, eos


_EOS_NAMES = {"<|endoftext|>", "<|im_end|>", "</s>", "<|eot_id|>", "<|end_of_text|>"}


class _Model:
    def __init__(self, folder: Path) -> None:
        from llguidance import LLTokenizer
        from outlines_core import Vocabulary

        text = (folder / "tokenizer.json").read_text()
        mapping, eos = vocabulary_map(json.loads(text))
        self.vocabulary = Vocabulary(eos, mapping)
        self.lltokenizer = LLTokenizer(text, eos_token=eos)


def compile_spec(model: _Model, kind: str, payload: str) -> str | None:
    """None when ``payload`` compiles, else why not."""
    from llguidance import LLMatcher, grammar_from
    from outlines_core import Index
    from outlines_core.json_schema import build_regex_from_schema

    try:
        if kind == "regex":
            Index(payload, model.vocabulary)
        elif kind == "json":
            Index(build_regex_from_schema(payload), model.vocabulary)
        elif kind == "grammar":
            matcher = LLMatcher(model.lltokenizer, grammar_from("lark", payload))
            if matcher.is_error():
                return matcher.get_error().strip().splitlines()[0]
        else:
            return f"unknown spec kind {kind!r}"
    except Exception as exc:  # the libraries' own errors: the spec does not compile
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return None


def serve(conn: Connection, folders: list[str], memory_mb: int = 4096) -> None:
    """The process's loop: load the vocabularies, say ready, then compile what comes. Its
    address space is capped at ``memory_mb``: a spec that needs more fails here (a
    MemoryError, or this process dies), not the gateway's container."""
    import resource

    limit = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    models = {folder: _Model(Path(folder)) for folder in folders}
    for model in models.values():  # the first compile pays one-off set-up: not a spec's cost
        compile_spec(model, "regex", "[0-9]+")
        compile_spec(model, "grammar", 'start: "a"')
    conn.send(("ready", None))
    while True:
        try:
            folder, kind, payload = conn.recv()
        except EOFError:
            return
        conn.send(("done", compile_spec(models[folder], kind, payload)))
