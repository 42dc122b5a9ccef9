"""The bodies of `switchgen serve`'s requests and responses: TGI's (3.3 OpenAPI spec) and OpenAI's completions.

Requests: what the server cannot do is refused, not ignored. Responses are built with only the
fields the protocol sends (None included where TGI sends null) and dumped with exclude_unset, so
optional fields appear exactly when TGI's would.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from switchgen.core.seeds import MAX_SEED
from switchgen.servers.protocol import FINISH_TO_TGI
from switchgen.servers.serve.chat import ChatMessage, TextOnly
from switchgen.servers.serve.limits import MAX_STOP_SEQUENCES
from switchgen.servers.serve.steps import Generation, Step, TokenInfo

PROTOCOL_VERSION = "3.3.6"  # the TGI version whose OpenAPI spec these responses follow
DEFAULT_MAX_NEW_TOKENS = 1024


# -- request bodies ------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class GenerateParameters(_Body):
    """TGI's GenerateParameters; what switchgen serve cannot do is refused, not ignored."""

    adapter_id: str | None = None
    best_of: int | None = Field(None, ge=1, le=1)
    decoder_input_details: bool = False
    details: bool = False  # TGI's code defaults to false (its spec says true)
    do_sample: bool = False
    frequency_penalty: float | None = None
    grammar: Any = None
    max_new_tokens: int | None = Field(None, ge=1)
    repetition_penalty: float | None = None
    return_full_text: bool | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stop: list[str] = Field(default_factory=list, max_length=MAX_STOP_SEQUENCES)
    temperature: float | None = Field(None, gt=0.0)
    top_k: int | None = None
    top_n_tokens: int | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0.0, lt=1.0)
    truncate: int | None = Field(None, ge=1)
    typical_p: float | None = None
    watermark: bool = False

    @field_validator("frequency_penalty", "repetition_penalty", "top_k", "grammar")
    @classmethod
    def _unsupported(cls, value: object, info: Any) -> object:
        neutral = {"frequency_penalty": 0.0, "repetition_penalty": 1.0}.get(info.field_name)
        if value is not None and value != neutral:
            raise ValueError(f"{info.field_name} is not supported by switchgen serve")
        return value

    @field_validator("watermark", "return_full_text")
    @classmethod
    def _off(cls, value: bool | None, info: Any) -> bool | None:
        if value:
            raise ValueError(f"{info.field_name} is not supported by switchgen serve")
        return value


class GenerateRequest(_Body):
    inputs: str = Field(min_length=1)
    parameters: GenerateParameters = Field(default_factory=GenerateParameters)
    stream: bool = False  # POST / only (TGI's CompatGenerateRequest)


class ChatCompletionRequest(TextOnly):
    """OpenAI's chat completions request, for one checkpoint: rendered with its chat template."""

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = Field(1, ge=1, le=1)
    tools: list[Any] | None = None

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, tools: list | None) -> list | None:
        if tools:
            raise ValueError("tools are not supported by switchgen serve")
        return tools

    def completion(self, prompt: str) -> CompletionRequest:
        """The same request as a completion of the rendered prompt."""
        return CompletionRequest(
            model=self.model, prompt=prompt, max_tokens=self.max_completion_tokens or self.max_tokens or DEFAULT_MAX_NEW_TOKENS,
            temperature=self.temperature, top_p=self.top_p, seed=self.seed, stop=self.stop, stream=self.stream,
        )


class CompletionRequest(_Body):
    """OpenAI's legacy completions request, with the vLLM extensions the graph uses."""

    model: str | None = None
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)
    temperature: float | None = Field(None, ge=0.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stop: str | list[str] | None = None
    logprobs: int | None = Field(None, ge=0)
    stream: bool = False
    n: int = Field(1, ge=1, le=1)
    best_of: int | None = Field(None, ge=1, le=1)
    echo: bool = False
    ignore_eos: bool = False
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: str | list[str]) -> str | list[str]:
        if isinstance(prompt, list) and len(prompt) != 1:
            raise ValueError("send exactly one prompt per request")
        if not (prompt[0] if isinstance(prompt, list) else prompt):
            raise ValueError("prompt is empty")
        return prompt

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, echo: bool) -> bool:
        if echo:
            raise ValueError("echo is not supported by switchgen serve")
        return echo



# -- responses -----------------------------------------------------------------------------


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def dump(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)


class TokenOut(_Out):
    id: int
    text: str
    logprob: float
    special: bool


class DetailsOut(_Out):
    finish_reason: str
    generated_tokens: int
    seed: int | None
    prefill: list[TokenOut] | None = None
    tokens: list[TokenOut] | None = None
    top_tokens: list[list[TokenOut]] | None = None
    input_length: int | None = None


class GenerateOut(_Out):
    generated_text: str
    details: DetailsOut | None = None


class StreamEventOut(_Out):
    index: int
    token: TokenOut
    top_tokens: list[TokenOut] | None = None
    generated_text: str | None
    details: DetailsOut | None


class InfoOut(_Out):
    model_id: str
    model_sha: str | None
    model_pipeline_tag: str
    max_concurrent_requests: int
    max_best_of: int
    max_stop_sequences: int
    max_input_tokens: int
    max_total_tokens: int
    validation_workers: int
    max_client_batch_size: int
    router: str
    version: str
    sha: str | None
    docker_label: str | None


class CompletionChoiceOut(_Out):
    index: int
    text: str
    finish_reason: str | None
    stop_reason: str | None
    logprobs: dict[str, Any] | None


class UsageOut(_Out):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionOut(_Out):
    id: str
    object: str = "text_completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoiceOut]
    usage: UsageOut | None = None



def usage_out(prompt_tokens: int, completion_tokens: int) -> UsageOut:
    return UsageOut(
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens
    )


def token_out(t: TokenInfo) -> TokenOut:
    return TokenOut(id=t.id, text=t.text, logprob=t.logprob, special=t.special)


def stream_event(
    step: Step, top_n: int, gen: Generation | None = None, input_length: int = 0, seed: int | None = None
) -> dict[str, Any]:
    """TGI's StreamResponse: one token; the last one carries generated_text and details."""
    event = StreamEventOut(index=step.index + 1, token=token_out(step.token), generated_text=None, details=None)
    if top_n:
        event.top_tokens = [token_out(t) for t in step.top]
    if gen is not None:
        event.generated_text = gen.full_text
        event.details = DetailsOut(
            finish_reason=FINISH_TO_TGI[gen.finish],
            generated_tokens=len(gen.steps),
            input_length=input_length,
            seed=seed,
        )
    return event.dump()


def openai_logprobs(steps: list[Step], top_n: int) -> dict[str, Any]:
    """OpenAI's completion logprobs: token texts, their logprobs, top-k dicts and text offsets."""
    offsets, offset = [], 0
    for s in steps:
        offsets.append(offset)
        offset += len(s.token.text)
    top: list[dict[str, float]] = []
    for s in steps:
        alternatives: dict[str, float] = {}
        for t in [*s.top, s.token]:  # vLLM includes the sampled token too
            alternatives.setdefault(t.text, t.logprob)
        top.append(alternatives if top_n else {})
    return {
        "tokens": [s.token.text for s in steps],
        "token_logprobs": [s.token.logprob for s in steps],
        "top_logprobs": top if top_n else None,
        "text_offset": offsets,
    }
