"""Counting a job's prompt tokens in the gateway, with the model's own tokenizer, without torch.

The worker renders a chat with the model's chat template and hands the text to vLLM, which
tokenizes it; this does the same with the ``tokenizers`` library (Rust) and jinja2, from the
model folder's ``tokenizer.json`` and chat template, so the count is the engine's.
"""

from __future__ import annotations

import json
import logging
from functools import cached_property
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.sandbox
from tokenizers import Tokenizer

from shared.jobs import Job, JobCreate

__all__ = ["PromptCounter"]

log = logging.getLogger(__name__)

_COUNT_CACHE = 256


class PromptCounter:
    """One model's tokenizer and chat template."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        # The same prompt comes many times (an OpenAI request's n choices, retries).
        self._counts: dict[str, int] = {}
        config_path = folder / "tokenizer_config.json"
        self._config: dict[str, Any] = (
            json.loads(config_path.read_text()) if config_path.is_file() else {}
        )

    @cached_property
    def _template(self) -> jinja2.Template:
        source = self._config.get("chat_template")
        template_file = self.folder / "chat_template.jinja"
        if template_file.is_file():
            source = template_file.read_text()
        if not isinstance(source, str):
            raise ValueError(f"no chat template in {self.folder}")
        # As transformers compiles chat templates: sandboxed, trimmed blocks.
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
        )

        def raise_exception(message: str) -> None:
            raise jinja2.TemplateError(message)

        env.globals["raise_exception"] = raise_exception
        env.filters["tojson"] = lambda value, **kw: json.dumps(value, ensure_ascii=False, **kw)
        return env.from_string(source)

    def _special(self, name: str) -> str:
        value = self._config.get(name)
        if isinstance(value, dict):
            value = value.get("content")
        return value or ""

    def prompt_text(self, job: Job | JobCreate) -> str:
        if job.messages is None:
            return job.prompt or ""
        return self._template.render(
            messages=[m.model_dump() for m in job.messages],
            add_generation_prompt=True,
            bos_token=self._special("bos_token"),
            eos_token=self._special("eos_token"),
        )

    def count(self, job: Job | JobCreate) -> int:
        """The prompt's tokens as the engine will count them (``ValueError``: the chat
        template refuses the chat, e.g. roles out of the order it requires)."""
        try:
            text = self.prompt_text(job)
        except jinja2.TemplateError as exc:
            raise ValueError(f"the model's chat template refuses this chat: {exc}") from None
        cached = self._counts.get(text)
        if cached is None:
            cached = len(self._tokenizer.encode(text, add_special_tokens=True).ids)
            self._counts[text] = cached
            if len(self._counts) > _COUNT_CACHE:
                self._counts.pop(next(iter(self._counts)))
        return cached
