"""The one place a job becomes vLLM parameters: output-type spec → ``StructuredOutputsParams``,
job sampling → ``SamplingParams``."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from pydantic import TypeAdapter

from shared.jobs import TRUSTED, Job, Sampling
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
    """The job's request to vLLM. A streaming job gets each step's new text; any other job only
    its final output (vLLM's cheapest mode, as in ``LLM.generate``).

    Jobs of a dataset mostly share their sampling and output type, and building vLLM's
    parameters (their checks, the structured-output spec) costs more than looking them up:
    they are built once per distinct (sampling, output type, streaming) and shared. vLLM copies
    the parameters of each request it takes, so sharing them is safe."""
    key = (job.sampling.model_dump_json(), job.output_type.model_dump_json(), job.stream)
    return _cached_params(*key)


@lru_cache(maxsize=512)
def _cached_params(sampling: str, output_type: str, stream: bool) -> SamplingParams:
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    s = Sampling.model_validate_json(sampling)
    spec: OutputType = _OUTPUT_TYPE.validate_json(output_type, context=TRUSTED)
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
        structured_outputs=structured_outputs(spec),
        output_kind=RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY,
    )


_OUTPUT_TYPE: TypeAdapter[OutputType] = TypeAdapter(OutputType)
