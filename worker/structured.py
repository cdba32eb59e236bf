"""The one place a job becomes vLLM parameters: output-type spec → ``StructuredOutputsParams``,
job sampling → ``SamplingParams``."""

from __future__ import annotations

from typing import TYPE_CHECKING

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
    OutputType,
    RegexSpec,
    TextSpec,
)

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

__all__ = ["sampling_params", "structured_outputs"]


def structured_outputs(spec: OutputType) -> StructuredOutputsParams | None:
    from vllm.sampling_params import StructuredOutputsParams as Params

    match spec:
        case TextSpec():
            return None
        case JsonSchemaSpec():
            # JSON whitespace is engine-wide in vLLM (STRUCTQ_JSON_COMPACT), not per request.
            return Params(json=spec.json_schema)
        case RegexSpec():
            return Params(regex=spec.pattern)
        case ChoiceSpec():
            return Params(choice=list(spec.choices))
        case IntSpec():
            return Params(regex=INT_PATTERN)
        case FloatSpec():
            return Params(regex=FLOAT_PATTERN)
        case BoolSpec():
            return Params(regex=BOOL_PATTERN)
        case GrammarSpec():
            return Params(grammar=spec.grammar)
    raise TypeError(f"no vLLM translation for output type {spec!r}")  # pragma: no cover


def sampling_params(job: Job) -> SamplingParams:
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    s = job.sampling
    return SamplingParams(
        n=1,
        max_tokens=s.max_tokens,
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k,
        min_p=s.min_p,
        seed=s.seed,
        stop=list(s.stop) or None,
        presence_penalty=s.presence_penalty,
        frequency_penalty=s.frequency_penalty,
        repetition_penalty=s.repetition_penalty,
        ignore_eos=s.ignore_eos,
        structured_outputs=structured_outputs(job.output_type),
        # Token deltas per step: the engine loop sees every step's batch, and streaming can
        # relay them as they come.
        output_kind=RequestOutputKind.DELTA,
    )
