"""Models and adapters the end-to-end tests make locally, once per session (no hub): a second
small model from the bundled model's config, and LoRA adapters trained on nothing, their weights
set to random non-zero values with ``peft``, so they change what the bundled model writes."""

from __future__ import annotations

import json
from pathlib import Path

from shared.settings import DEFAULT_MODEL

__all__ = ["SMALL_MODEL", "make_lora_adapter", "make_small_model"]

# The second pool's served name, and how it is derived from the bundled model's config: two of
# its 30 layers, random weights (it writes nonsense, quickly), the bundled tokenizer.
SMALL_MODEL = "SmolLM2-e2e-2layer"
_SMALL_CONFIG = {"num_hidden_layers": 2}


def make_small_model(cache_dir: Path) -> Path:
    from worker.model import derive_model

    return derive_model(cache_dir, SMALL_MODEL, seed=7, **_SMALL_CONFIG)


def make_lora_adapter(cache_dir: Path, folder: Path, seed: int, rank: int = 8) -> Path:
    """A PEFT LoRA adapter of the bundled model in ``folder``: every attention and MLP
    projection, rank ``rank``, A and B drawn from N(0, 0.08) (PEFT's own init sets B to zero,
    which would leave the model unchanged)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from worker.model import prepare_default_model

    base = prepare_default_model(cache_dir)
    marker = folder / "structq-recipe.json"
    recipe = json.dumps({"base": DEFAULT_MODEL, "seed": seed, "rank": rank})
    if marker.exists() and marker.read_text() == recipe:
        return folder
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=[f"{name}_proj" for name in ("q", "k", "v", "o", "gate", "up", "down")],
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    adapted = get_peft_model(model, config)
    with torch.no_grad():
        for name, weight in adapted.named_parameters():
            if "lora_" in name:
                weight.normal_(0.0, 0.08)
    adapted.save_pretrained(folder)
    marker.write_text(recipe)
    return folder
