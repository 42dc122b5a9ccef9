"""Any LangChain LLM as a candidate: HuggingFacePipeline (local transformers), HuggingFaceEndpoint (TGI).

`LangChainLLMBackend(llm)` implements the writing half of the `Backend` protocol: one LLM call
per patch, with the patch's token budget. Pass it to `build_graph(config, backends={"P": ...})`.
The switcher needs next-token probabilities, which LangChain's LLM interface does not give:
it stays on switchgen's own backends, and `choice_distribution` raises a clear error.

The graph needs, per patch, how many tokens were written and whether the model stopped (EOS)
or ran out of budget; LangChain's LLM interface returns text only, so:

* HuggingFacePipeline: called through LangChain (`invoke` / `stream`) with a logits processor
  that counts the decoding steps: exact; fewer steps than the budget means EOS.
* HuggingFaceEndpoint: called through the endpoint's own client (`llm.client`, its URL, token
  and headers) with TGI's `details`, which give the exact token count and finish reason.
* Any other LLM, given `invoke_kwargs`: called through LangChain; the text is re-encoded with
  the tokenizer and a patch shorter than its budget counts as EOS. Decoded text does not always
  re-encode to the tokens sampled, so this is an estimate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from langchain_core.language_models import BaseLLM
from transformers import AutoTokenizer, LogitsProcessorList, PreTrainedTokenizerBase

from switchgen.core.errors import ConfigError
from switchgen.servers.base import ChoiceScores, GenerationParams, Patch, TextCallback
from switchgen.servers.clients.remote import server_prompt
from switchgen.servers.protocol import FINISH_FROM_TGI, tgi_parameters
from switchgen.servers.stops import StopHoldback

InvokeKwargs = Callable[[GenerationParams, str], dict[str, Any]]


class _StepCounter:
    """A transformers logits processor that only counts decoding steps (one per generated token)."""

    def __init__(self) -> None:
        self.steps = 0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        self.steps += 1
        return scores


def _is_pipeline(llm: BaseLLM) -> bool:
    return type(llm).__name__ == "HuggingFacePipeline" and hasattr(llm, "pipeline")


def _is_endpoint(llm: BaseLLM) -> bool:
    return type(llm).__name__ == "HuggingFaceEndpoint" and hasattr(llm, "client")


def pipeline_kwargs(params: GenerationParams, prompt: str, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """HuggingFacePipeline call arguments for one patch (transformers generate() settings)."""
    kwargs: dict[str, Any] = {
        "max_new_tokens": params.max_new_tokens,
        "do_sample": not params.greedy,
        "return_full_text": False,
        # Rendered chat prompts carry their BOS already (as the in-process engine encodes them).
        "add_special_tokens": not (tokenizer.bos_token and prompt.startswith(tokenizer.bos_token)),
    }
    if params.greedy:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    else:
        kwargs.update(temperature=params.temperature, top_p=params.top_p)
    if params.ignore_eos:
        kwargs["min_new_tokens"] = params.max_new_tokens
    return kwargs


class LangChainLLMBackend:
    """A LangChain LLM writing patches for one candidate (no switcher scoring).

    `tokenizer`: the checkpoint's tokenizer (a tokenizer, or an id/folder to load), used to render
    the candidate's prompts and count tokens; for HuggingFacePipeline its own by default.
    `invoke_kwargs(params, prompt)`: the LLM call's keyword arguments for one patch; needed for LLMs
    other than HuggingFacePipeline and HuggingFaceEndpoint (it must cap the output at
    `params.max_new_tokens` tokens).
    """

    def __init__(
        self,
        llm: BaseLLM,
        tokenizer: PreTrainedTokenizerBase | str | None = None,
        *,
        invoke_kwargs: InvokeKwargs | None = None,
    ) -> None:
        self.llm = llm
        if tokenizer is None and _is_pipeline(llm):
            tokenizer = llm.pipeline.tokenizer
        if tokenizer is None:
            raise ConfigError(f"{type(llm).__name__}: pass the checkpoint's tokenizer (or its id) to LangChainLLMBackend")
        self._tokenizer = AutoTokenizer.from_pretrained(tokenizer) if isinstance(tokenizer, str) else tokenizer
        if invoke_kwargs is None and not (_is_pipeline(llm) or _is_endpoint(llm)):
            raise ConfigError(
                f"{type(llm).__name__}: pass invoke_kwargs=lambda params, prompt: {{...}} giving the call's arguments "
                "(at most params.max_new_tokens new tokens)"
            )
        self.invoke_kwargs = invoke_kwargs

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self._tokenizer

    def generate(self, prompt: str, params: GenerationParams, on_text: TextCallback | None = None) -> Patch:
        stream = StopHoldback(on_text, params.stop)
        if self.invoke_kwargs is None and _is_endpoint(self.llm):
            return self._endpoint(prompt, params, stream)
        counter: _StepCounter | None = None
        if self.invoke_kwargs is not None:
            kwargs = self.invoke_kwargs(params, prompt)
        else:
            counter = _StepCounter()
            call = pipeline_kwargs(params, prompt, self._tokenizer)
            call["logits_processor"] = LogitsProcessorList([counter])
            kwargs = {"pipeline_kwargs": call}
        if on_text is None:
            text = stream.finish(self.llm.invoke(prompt, **kwargs))
        else:
            for piece in self.llm.stream(prompt, **kwargs):
                stream.add(piece)
                if stream.stopped:
                    break
            text = stream.finish()
        if counter is not None:
            tokens = counter.steps
        else:
            tokens = min(len(self._tokenizer.encode(text, add_special_tokens=False)), params.max_new_tokens)
        finish = "stop" if stream.stopped else "length"
        if finish == "length" and tokens < params.max_new_tokens and not params.ignore_eos:
            finish = "eos"
        return Patch(text=text, tokens=max(tokens, 1), finish_reason=finish)

    def _endpoint(self, prompt: str, params: GenerationParams, stream: StopHoldback) -> Patch:
        """HuggingFaceEndpoint: TGI's details give the exact token count and finish reason."""
        llm = self.llm
        call = {"model": llm.model, "details": True, **tgi_parameters(params)}
        prompt = server_prompt(self._tokenizer, prompt)  # TGI adds the BOS itself
        if stream.emit is None:
            out = llm.client.text_generation(prompt, **call)
            details, final = out.details, out.generated_text
        else:
            events: Iterable[Any] = llm.client.text_generation(prompt, stream=True, **call)
            details, final = None, None
            for event in events:
                if not event.token.special:
                    stream.add(event.token.text)
                if event.details is not None:
                    details, final = event.details, event.generated_text
        text = stream.finish(final)
        tokens = details.generated_tokens if details is not None else len(self._tokenizer.encode(text))
        finish = "stop" if stream.stopped else FINISH_FROM_TGI.get(getattr(details, "finish_reason", ""), "length")
        return Patch(text=text, tokens=max(int(tokens), 1), finish_reason=finish)  # type: ignore[arg-type]

    def choice_distribution(self, prompt: str, choices: Sequence[str]) -> ChoiceScores:
        raise ConfigError(
            f"{type(self.llm).__name__} (a LangChain LLM) cannot score the switcher's choice: LangChain's LLM "
            "interface gives no next-token probabilities. Keep the switcher on a switchgen backend "
            "(switcher.model in the configuration)."
        )
