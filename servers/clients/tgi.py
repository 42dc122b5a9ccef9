"""A checkpoint served by Text Generation Inference (or `switchgen serve`), via huggingface_hub.

A patch is one `text_generation` request (details on, greedy or seeded sampling, stop strings);
TGI's finish_reason tells EOS (eos_token) from the budget (length) and a stop string
(stop_sequence, whose text TGI keeps and we cut, as the in-process engine does). The switcher's
distribution is a one-token request with `top_n_tokens`: the digit tokens among the top tokens,
renormalised; a digit outside them counts as zero, and none at all gives no distribution.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Sequence
from typing import Any

from huggingface_hub import AsyncInferenceClient, constants
from huggingface_hub.errors import HfHubHTTPError, TextGenerationError
from transformers import PreTrainedTokenizerBase

from switchgen.core.errors import ConfigError, ServerError
from switchgen.servers.base import ChoiceScores, GenerationParams, Patch
from switchgen.servers.choices import choice_probabilities
from switchgen.servers.clients.remote import (
    Endpoint,
    HTTPFailure,
    RemoteBackend,
    error_detail,
    retry_after_seconds,
    run_sync,
    server_prompt,
    with_retries,
)
from switchgen.servers.protocol import FINISH_FROM_TGI, tgi_parameters
from switchgen.servers.stops import StopHoldback, cut_at_stop

ROTATE_AFTER = 256  # calls per huggingface_hub client (see TGIBackend._using_client)


class TGIBackend(RemoteBackend):
    """The `Backend` surface over one TGI server; `adapter_id` names a LoRA adapter it serves."""

    def __init__(
        self,
        endpoint: Endpoint,
        model: str,
        *,
        adapter_id: str | None = None,
        top_n_tokens: int = 20,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ) -> None:
        if constants.is_offline_mode():
            raise ConfigError(
                f"{endpoint.label}: HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set, and huggingface_hub then "
                f"refuses every request, even to {endpoint.url}: unset it to use the tgi backend"
            )
        super().__init__(endpoint, model, top_n_tokens=top_n_tokens, tokenizer=tokenizer)
        self.adapter_id = adapter_id
        self._client: AsyncInferenceClient | None = None
        self._uses = 0
        self._active: dict[int, int] = {}
        self._retired: set[AsyncInferenceClient] = set()

    def choice_distribution(self, prompt: str, choices: Sequence[str]) -> ChoiceScores:
        choice_ids = self.choice_ids(choices)
        try:
            out = run_sync(
                self._call(
                    prompt=server_prompt(self.tokenizer, prompt),
                    details=True,
                    max_new_tokens=1,
                    do_sample=False,
                    top_n_tokens=self.top_n_tokens,
                    adapter_id=self.adapter_id,
                )
            )
        except ServerError as err:
            if "top_n_tokens" not in str(err) or "HTTP 422" not in str(err):
                raise
            raise type(err)(
                f"{err} (start TGI with --max-top-n-tokens {self.top_n_tokens}, or lower switcher.top_n_tokens)"
            ) from None
        logprobs: dict[int, float] = {}
        top = out.details.top_tokens[0] if out.details and out.details.top_tokens else []
        chosen = out.details.tokens[:1] if out.details else []
        for token in [*top, *chosen]:  # top tokens are plain dicts, the chosen one a dataclass
            tid, lp = _field(token, "id"), _field(token, "logprob")
            if tid is not None and lp is not None:
                logprobs.setdefault(int(tid), float(lp))
        per_choice = [sum(math.exp(logprobs[i]) for i in ids if i in logprobs) for ids in choice_ids]
        probs, mass = choice_probabilities(per_choice, all(choice_ids))
        return ChoiceScores(probs=probs, mass=mass)

    # -- internals -------------------------------------------------------------------------

    def _request(self, prompt: str, params: GenerationParams) -> dict[str, Any]:
        if params.ignore_eos:
            raise ConfigError(f"{self.endpoint.label}: TGI cannot ignore EOS; use the openai or local backend")
        return {
            "prompt": server_prompt(self.tokenizer, prompt),
            "details": True,  # TGI's code defaults to false
            "adapter_id": self.adapter_id,
            **tgi_parameters(params),
        }

    @contextlib.asynccontextmanager
    async def _using_client(self) -> AsyncIterator[AsyncInferenceClient]:
        """The client for one call, on the I/O loop (which owns its connections).

        huggingface_hub keeps every streamed response on the client's exit stack until the
        client closes, so a client is retired after ROTATE_AFTER calls and closed once idle.
        """
        if self._client is None or self._uses >= ROTATE_AFTER:
            old = self._client
            if old is not None and self._active.get(id(old)):
                self._retired.add(old)  # closed by its last call
            elif old is not None:
                self._active.pop(id(old), None)
                await old.close()
            self._client = AsyncInferenceClient(
                base_url=self.endpoint.url,
                timeout=self.endpoint.http_timeout(),  # type: ignore[arg-type]
                api_key=self.endpoint.api_key,
                headers=_headers(self.endpoint),
            )
            self._uses = 0
        client = self._client
        self._uses += 1
        self._active[id(client)] = self._active.get(id(client), 0) + 1
        try:
            yield client
        finally:
            self._active[id(client)] -= 1
            if client in self._retired and not self._active[id(client)]:
                self._retired.discard(client)
                del self._active[id(client)]
                await client.close()

    async def _call(self, **kwargs: Any) -> Any:
        async def once() -> Any:
            try:
                async with self._using_client() as client:
                    return await client.text_generation(**kwargs)
            except (HfHubHTTPError, TextGenerationError) as err:
                raise _http_failure(err) from None

        return await with_retries(self.endpoint, once)

    async def _generate(self, kwargs: dict[str, Any], stop: Sequence[str]) -> Patch:
        out = await self._call(**kwargs)
        details = out.details
        text, cut = cut_at_stop(out.generated_text, stop)
        finish = FINISH_FROM_TGI.get(details.finish_reason, "length")
        if cut and finish == "length":
            finish = "stop"
        return Patch(text=text, tokens=int(details.generated_tokens), finish_reason=finish)  # type: ignore[arg-type]

    async def _stream_once(self, kwargs: dict[str, Any], stop: Sequence[str], holdback: StopHoldback) -> Patch:
        try:
            async with self._using_client() as client:
                events = await client.text_generation(**kwargs, stream=True)
                async for event in events:
                    if event.token is not None and not event.token.special:
                        holdback.add(event.token.text)
                    if event.details is not None:
                        text, cut = cut_at_stop(event.generated_text or holdback.text, stop)
                        holdback.finish(text)
                        finish = FINISH_FROM_TGI.get(event.details.finish_reason, "length")
                        if cut and finish == "length":
                            finish = "stop"
                        return Patch(text=text, tokens=int(event.details.generated_tokens), finish_reason=finish)
        except (HfHubHTTPError, TextGenerationError) as err:
            raise _http_failure(err) from None
        raise ServerError(f"{self.endpoint.where()}: the stream ended without its final event")


def _field(token: Any, name: str) -> Any:
    return token.get(name) if isinstance(token, dict) else getattr(token, name, None)


def _http_failure(err: Exception) -> HTTPFailure:
    """huggingface_hub's error (TGI's typed errors keep the HTTP one as their cause) as a status."""
    http = err if isinstance(err, HfHubHTTPError) else err.__cause__
    response = getattr(http, "response", None)
    if response is None:
        return HTTPFailure(0, str(err))
    try:
        detail = error_detail(response)
    except Exception:
        detail = str(err).splitlines()[0]
    return HTTPFailure(response.status_code, detail, retry_after_seconds(response.headers))


def _headers(endpoint: Endpoint) -> dict[str, str | None]:
    """The endpoint's headers, and no credential it was not configured with.

    Given no key, huggingface_hub sends the user's own Hugging Face token (HF_TOKEN, or the one
    `hf auth login` saved) to whatever server `base_url` names; it has no switch to send none
    (`token=False` is refused). Its request headers are its own merged with these, and a None
    value is dropped after the merge: so `authorization: None` sends no Authorization header.
    """
    headers: dict[str, str | None] = dict(endpoint.headers)
    if not endpoint.api_key and not any(name.lower() == "authorization" for name in headers):
        headers["authorization"] = None
    return headers
