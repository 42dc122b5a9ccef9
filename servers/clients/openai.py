"""A checkpoint served by an OpenAI-compatible server (vLLM, SGLang, `switchgen serve`), via the `openai` SDK.

The SDK sends the request, parses its server-sent events, and retries (429, 5xx, dropped
connections, with backoff and the server's Retry-After) up to the endpoint's `retries`; an
`api_key` and extra `headers` go with every request. A patch is one POST /v1/completions (max_tokens, temperature 0 for greedy, seed, stop); the
switcher's distribution is a one-token request with `logprobs` = top-k. OpenAI says "stop" for
both EOS and a stop string: vLLM's `stop_reason` and SGLang's `matched_stop` tell them apart
(a string: the stop string; an integer or null: EOS). Servers that say neither are read as EOS
when no stop strings were asked for, else as a stop string (both end the response).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import openai
from transformers import PreTrainedTokenizerBase

from switchgen.core.errors import InputTooLong, ServerError, ServerUnreachable
from switchgen.servers.base import ChoiceScores, GenerationParams, Patch
from switchgen.servers.choices import choice_probabilities
from switchgen.servers.clients.remote import (
    Endpoint,
    HTTPFailure,
    RemoteBackend,
    error_detail,
    run_sync,
    server_prompt,
    too_long,
)
from switchgen.servers.stops import StopHoldback, cut_at_stop

_MISSING = object()
T = TypeVar("T")
# Request fields the OpenAI API does not define: sent as the SDK's extra_body.
EXTENSIONS = ("ignore_eos",)


class OpenAIBackend(RemoteBackend):
    """The `Backend` surface over one OpenAI-compatible completions endpoint."""

    def __init__(
        self,
        endpoint: Endpoint,
        model: str,
        *,
        served_model: str | None = None,
        top_n_tokens: int = 20,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ) -> None:
        super().__init__(endpoint, model, top_n_tokens=top_n_tokens, tokenizer=tokenizer)
        self.served_model = served_model or model
        self._client: openai.AsyncOpenAI | None = None
        self._spellings: dict[tuple[str, ...], tuple[dict[str, int], bool]] = {}

    def choice_distribution(self, prompt: str, choices: Sequence[str]) -> ChoiceScores:
        spelled, all_spelled = self._choice_spellings(choices)
        body = {
            "model": self.served_model,
            "prompt": server_prompt(self.tokenizer, prompt),
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": self.top_n_tokens,
        }
        data = run_sync(self._post(body))
        logprobs = (data["choices"][0].get("logprobs") or {}) if data.get("choices") else {}
        candidates: dict[str, float] = {}
        for top in (logprobs.get("top_logprobs") or [])[:1]:
            candidates.update(top or {})
        for token, lp in zip((logprobs.get("tokens") or [])[:1], (logprobs.get("token_logprobs") or [])[:1], strict=False):
            if lp is not None:
                candidates.setdefault(token, lp)
        per_choice = [0.0] * len(choices)
        for token, lp in candidates.items():
            index = spelled.get(token)
            if index is None and token.startswith("token_id:"):  # vLLM's return_tokens_as_token_ids
                index = spelled.get(f"token_id:{token.removeprefix('token_id:')}")
            if index is not None and lp is not None:
                per_choice[index] += math.exp(float(lp))
        probs, mass = choice_probabilities(per_choice, all_spelled)
        return ChoiceScores(probs=probs, mass=mass)

    # -- internals -------------------------------------------------------------------------

    def _choice_spellings(self, choices: Sequence[str]) -> tuple[dict[str, int], bool]:
        """Token text (and "token_id:N") -> choice index, for the single-token spellings of each choice."""
        key = tuple(choices)
        if key not in self._spellings:
            ids = self.choice_ids(choices)
            spelled: dict[str, int] = {}
            for index, token_ids in enumerate(ids):
                for tid in token_ids:
                    spelled.setdefault(self.tokenizer.decode([tid]), index)
                    spelled.setdefault(f"token_id:{tid}", index)
            self._spellings[key] = (spelled, all(ids))
        return self._spellings[key]

    def _request(self, prompt: str, params: GenerationParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.served_model,
            "prompt": server_prompt(self.tokenizer, prompt),
            "max_tokens": params.max_new_tokens,
            "temperature": 0.0 if params.greedy else params.temperature,
            "top_p": 1.0 if params.greedy else params.top_p,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop:
            body["stop"] = list(params.stop)
        if getattr(params, "ignore_eos", False):
            body["ignore_eos"] = True  # vLLM and SGLang extension
        return body

    def _client_for_loop(self) -> openai.AsyncOpenAI:
        if self._client is None:  # created on the I/O loop, which owns its connections
            ep = self.endpoint
            self._client = openai.AsyncOpenAI(
                base_url=ep.url + "/v1",
                api_key=ep.api_key or "EMPTY",  # vLLM's convention for a server without --api-key
                default_headers=dict(ep.headers) or None,
                timeout=ep.http_timeout(),
                max_retries=ep.retries,
            )
        return self._client

    async def _call(self, call: Callable[[openai.AsyncOpenAI], Awaitable[T]]) -> T:
        """One SDK call (retried by the SDK); its failures as ServerError / ServerUnreachable naming the endpoint."""
        where = self.endpoint.where()
        try:
            return await call(self._client_for_loop())
        except openai.APIStatusError as err:
            failure = HTTPFailure(err.status_code, error_detail(err.response))
            if too_long(failure):  # permanent: never retried (remote.py)
                raise InputTooLong(f"{where}: the input is too long for the server ({failure})") from None
            raise ServerError(f"{where}: {failure}") from None
        except openai.APITimeoutError:
            raise ServerError(f"{where}: no answer in time (raise the backend's `timeout` if the server is just slow)") from None
        except openai.APIConnectionError as err:
            cause = err.__cause__ or err
            raise ServerUnreachable(f"{where}: cannot connect ({type(cause).__name__}: {cause or 'refused'})") from None
        except openai.APIError as err:  # an error event in a stream
            raise ServerError(f"{where}: {err.message}") from None

    @staticmethod
    def _sdk_args(body: dict[str, Any]) -> dict[str, Any]:
        args = {k: v for k, v in body.items() if k not in EXTENSIONS}
        extra = {k: body[k] for k in EXTENSIONS if k in body}
        return {**args, "extra_body": extra} if extra else args

    async def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        completion = await self._call(lambda client: client.completions.create(**self._sdk_args(body)))
        return completion.model_dump()  # vLLM's and SGLang's extra fields (stop_reason, matched_stop) included

    def _finish(self, choice: dict[str, Any], stop: Sequence[str], cut: bool) -> str:
        reason = choice.get("finish_reason")
        if reason == "length":
            return "stop" if cut else "length"
        matched = choice.get("stop_reason", choice.get("matched_stop", _MISSING))
        if isinstance(matched, str) or cut:
            return "stop"
        if matched is _MISSING:
            return "stop" if stop else "eos"
        return "eos"  # null (vLLM) or the EOS id (SGLang)

    def _tokens(self, data: dict[str, Any], text: str) -> int:
        usage = data.get("usage") or {}
        if isinstance(usage.get("completion_tokens"), int):
            return usage["completion_tokens"]
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    async def _generate(self, body: dict[str, Any], stop: Sequence[str]) -> Patch:
        data = await self._post(body)
        try:
            choice = data["choices"][0]
            text, cut = cut_at_stop(choice["text"], stop)
        except (KeyError, IndexError, TypeError):
            raise ServerError(f"{self.endpoint.where()}: not a completions response: {str(data)[:200]}") from None
        return Patch(text=text, tokens=self._tokens(data, text), finish_reason=self._finish(choice, stop, cut))  # type: ignore[arg-type]

    async def _stream_once(self, body: dict[str, Any], stop: Sequence[str], holdback: StopHoldback) -> Patch:
        args = {**self._sdk_args(body), "stream": True, "stream_options": {"include_usage": True}}

        async def run(client: openai.AsyncOpenAI) -> tuple[dict[str, Any], dict[str, Any]]:
            final: dict[str, Any] = {}
            usage: dict[str, Any] = {}
            stream = await client.completions.create(**args)
            async for event in stream:
                data = event.model_dump()
                usage = data.get("usage") or usage
                for choice in data.get("choices") or []:
                    holdback.add(choice.get("text") or "")
                    if choice.get("finish_reason"):
                        final = choice
            return final, usage

        final, usage = await self._call(run)
        text, cut = cut_at_stop(holdback.text, stop)
        holdback.finish(text)
        return Patch(text=text, tokens=self._tokens({"usage": usage}, text), finish_reason=self._finish(final, stop, cut))  # type: ignore[arg-type]
