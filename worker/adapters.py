"""LoRA adapters a worker serves beside its model (STRUCTQ_LORA_MODULES): their folders checked
and their ranks read at start, and the engine arguments they need (vLLM's ``enable_lora``,
``max_loras``, ``max_lora_rank``) where STRUCTQ_ENGINE_ARGS does not set them.

A job asks for an adapter by ``model`` = its name (as with vLLM's server); the gateway routes it
to the base model's pool (``api.models``) and the engine runs it with the adapter's
``LoRARequest`` (``worker.engine``), in the same steps as the base model's jobs and other
adapters' (vLLM's multi-LoRA batching, up to ``max_loras`` adapters a step).

On CPU, vLLM 0.32's LoRA kernels (``vllm.lora.ops.torch_ops``) pick each token's adapter
weights by its slot index, and a token without an adapter has index -1, which Python's indexing
turns into the *last* slot: with every slot holding an adapter, base-model requests batched
with adapter requests run with the last adapter's weights (seen here: the bundled model's
answer changed; the fix, vllm-project/vllm pull request 48421, is not in 0.32.0). So on CPU
structq keeps one slot more than the adapters, which stays empty
(vLLM fills the first free slot; zero weights add nothing), and refuses a ``max_loras`` that
would fill it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "MAX_DEFAULT_LORAS",
    "adapter_rank",
    "check_adapter_folders",
    "check_lora_limits",
    "lora_engine_defaults",
]

# The most adapters one engine step may mix unless STRUCTQ_ENGINE_ARGS says otherwise (vLLM's
# ``max_loras``; each slot holds an adapter's weights on the device).
MAX_DEFAULT_LORAS = 8
# What a served name may be (an OpenAI `model` string, a Prometheus label, a Redis field).
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$")
_CONFIG = "adapter_config.json"


def check_adapter_folders(modules: Mapping[str, Path]) -> dict[str, Path]:
    """The adapters with absolute folders; a ValueError naming each bad name or folder."""
    problems, checked = [], {}
    for name, folder in modules.items():
        if not _NAME.match(name):
            problems.append(f"{name!r} is not a usable adapter name (letters, digits, _.:/-)")
            continue
        try:
            adapter_rank(folder)
        except ValueError as exc:
            problems.append(f"adapter {name!r}: {exc}")
            continue
        checked[name] = folder.resolve()
    if problems:
        raise ValueError("; ".join(problems))
    return checked


def adapter_rank(folder: Path) -> int:
    """The LoRA rank ``r`` of the PEFT adapter in ``folder``."""
    try:
        config = json.loads((folder / _CONFIG).read_text())
    except FileNotFoundError:
        raise ValueError(f"{folder} holds no {_CONFIG} (not a PEFT adapter folder)") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{folder / _CONFIG} is unreadable: {exc}") from None
    rank = config.get("r") if isinstance(config, dict) else None
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"{folder / _CONFIG} gives no LoRA rank `r`")
    return rank


def _allowed_ranks() -> list[int]:
    from typing import get_args

    from vllm.config.lora import MaxLoRARanks

    return sorted(get_args(MaxLoRARanks))


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def lora_engine_defaults(modules: Mapping[str, Path]) -> dict[str, Any]:
    """The engine arguments serving ``modules`` takes, before STRUCTQ_ENGINE_ARGS: LoRA on, a
    slot per adapter (up to MAX_DEFAULT_LORAS on a GPU; on CPU every adapter and the empty
    slot the module's docstring explains), the smallest rank vLLM allows that holds the largest
    adapter's."""
    if not modules:
        return {}
    largest = max(adapter_rank(folder) for folder in modules.values())
    allowed = _allowed_ranks()
    rank = next((r for r in allowed if r >= largest), allowed[-1])
    slots = len(modules) + 1 if _on_cpu() else min(len(modules), MAX_DEFAULT_LORAS)
    return {"enable_lora": True, "max_loras": slots, "max_lora_rank": rank}


def check_lora_limits(modules: Mapping[str, Path], engine_args: Mapping[str, Any]) -> None:
    """A ValueError when STRUCTQ_ENGINE_ARGS leaves no room for the adapters: LoRA turned off,
    or a ``max_lora_rank`` below an adapter's rank (each named)."""
    if not modules:
        return
    if engine_args.get("enable_lora") is False:
        raise ValueError(
            "STRUCTQ_LORA_MODULES declares adapters but STRUCTQ_ENGINE_ARGS sets enable_lora "
            "to false"
        )
    slots = engine_args.get("max_loras")
    if isinstance(slots, int) and slots <= len(modules) and _on_cpu():
        raise ValueError(
            f"STRUCTQ_ENGINE_ARGS' max_loras {slots} must be more than the {len(modules)} "
            "adapters on CPU: vLLM's CPU LoRA kernels give requests without an adapter the last "
            "slot's weights, so that slot must stay empty (see worker/adapters.py)"
        )
    limit = engine_args.get("max_lora_rank")
    if limit is None:
        largest = max(adapter_rank(folder) for folder in modules.values())
        if largest > _allowed_ranks()[-1]:
            raise ValueError(f"an adapter's rank {largest} is above vLLM's largest LoRA rank")
        return
    over = {name: r for name, folder in modules.items() if (r := adapter_rank(folder)) > limit}
    if over:
        named = ", ".join(f"{name!r} (r={rank})" for name, rank in sorted(over.items()))
        raise ValueError(
            f"STRUCTQ_ENGINE_ARGS' max_lora_rank {limit} is below the rank of adapter {named}"
        )
