"""What every inference-server backend shares: one I/O event loop, retries, errors, health checks,
and `RemoteBackend`, the base whose subclasses (tgi.py, openai.py) supply only a request's payload
and the parsing of its answer.

The graph's nodes are synchronous and may run in many threads at once (`generate --concurrency`).
Remote calls from all of them run as coroutines on one background event loop, so N threads
waiting on servers cost N futures, not N blocked connections pools, and the servers see truly
concurrent requests to batch.
"""

from __future__ import annotations

import asyncio
import json
import queue
import random
import threading
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
from transformers import PreTrainedTokenizerBase

from switchgen.core.errors import ConfigError, InputTooLong, ServerError, ServerUnreachable
from switchgen.servers.base import ChoiceScores, GenerationParams, Patch, TextCallback
from switchgen.servers.choices import choice_token_ids
from switchgen.servers.engine.loading import load_tokenizer, resolve_model
from switchgen.servers.stops import StopHoldback

T = TypeVar("T")

RETRY_STATUS = frozenset({429, 502, 503, 504})  # overloaded, or a proxy/server not ready yet
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 8.0


# -- the I/O loop --------------------------------------------------------------------------

_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def io_loop() -> asyncio.AbstractEventLoop:
    """The process-wide event loop (a daemon thread) on which remote calls run."""
    global _loop
    with _loop_lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="switchgen-io", daemon=True).start()
            _loop = loop
        return _loop


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on the I/O loop and wait for its result in the calling thread."""
    return asyncio.run_coroutine_threadsafe(coro, io_loop()).result()


_DONE = object()


def run_streaming(start: Callable[[Callable[[str], None]], Coroutine[Any, Any, T]], on_text: TextCallback) -> T:
    """Run a streaming coroutine on the I/O loop; `on_text` is called in *this* thread.

    Callbacks such as LangGraph's stream writer belong to the node's thread and context, so
    text pieces travel through a queue instead of being delivered from the loop's thread.
    """
    pieces: queue.Queue = queue.Queue()

    async def wrapped() -> T:
        try:
            return await start(pieces.put)
        finally:
            pieces.put(_DONE)

    future = asyncio.run_coroutine_threadsafe(wrapped(), io_loop())
    while (piece := pieces.get()) is not _DONE:
        on_text(piece)
    return future.result()


# -- failures and retries ------------------------------------------------------------------


class HTTPFailure(Exception):
    """A server answered with an error status."""

    def __init__(self, status: int, detail: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail
        self.retry_after = retry_after


@dataclass(frozen=True)
class Endpoint:
    """One server as the graph sees it: who uses it (for messages), where, and how patiently."""

    label: str  # "candidate 'P'" or "switcher"
    url: str
    timeout: float = 300.0
    connect_timeout: float = 10.0
    retries: int = 4
    api_key: str | None = field(default=None, repr=False)
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # extra HTTP headers

    def auth_headers(self) -> dict[str, str]:
        """The extra headers, with `Authorization: Bearer <api_key>` when a key is set."""
        headers = dict(self.headers)
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def http_timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.timeout, connect=self.connect_timeout)

    def where(self) -> str:
        return f"{self.label} at {self.url}"


def retry_after_seconds(headers: httpx.Headers | dict | None) -> float | None:
    value = (headers or {}).get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def error_detail(response: httpx.Response) -> str:
    """The message in a TGI ({"error"}), OpenAI/vLLM ({"error": {"message"}}) or plain error body."""
    text = response.text.strip()
    try:  # a streaming route's error is one server-sent event: data:{"error": ...}
        body = json.loads(text.removeprefix("data:"))
    except ValueError:
        return text[:300] or response.reason_phrase
    if isinstance(body, dict):
        err = body.get("error", body.get("detail", body.get("message")))
        if isinstance(err, dict):
            err = err.get("message", err)
        if err is not None:
            return str(err)[:300]
    return str(body)[:300]


def backoff_delay(attempt: int, retry_after: float | None) -> float:
    """Exponential backoff with jitter; a server's Retry-After wins when it asks for longer."""
    delay = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2**attempt) * (0.5 + random.random() / 2)
    return max(delay, min(retry_after or 0.0, 60.0))


def too_long(err: BaseException) -> bool:
    """A server's refusal of an input longer than its limits (TGI 422/413, vLLM 400): permanent, never retried.

    TGI says "`inputs` must have less than N tokens" or "`inputs` tokens + `max_new_tokens` must be
    <= N"; vLLM "This model's maximum context length is N tokens"; a body over the payload limit is 413.
    """
    if not isinstance(err, HTTPFailure):
        return False
    text = str(err).replace("`", "")
    markers = ("inputs must have less than", "inputs tokens +", "maximum context length")
    return err.status == 413 or (err.status in (400, 422) and any(m in text for m in markers))


def _transient(err: BaseException) -> tuple[bool, bool, str]:
    """(retry it?, is the server unreachable?, what happened) for one failed attempt."""
    if isinstance(err, HTTPFailure):
        return err.status in RETRY_STATUS, False, str(err)
    if isinstance(err, (httpx.ConnectError, httpx.ConnectTimeout)):
        return True, True, f"cannot connect ({type(err).__name__}: {err or 'refused'})"
    if isinstance(err, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        return True, False, f"the connection dropped ({type(err).__name__}: {err or 'closed'})"
    if isinstance(err, (httpx.TimeoutException, asyncio.TimeoutError, TimeoutError)):
        return False, False, "no answer in time (raise the backend's `timeout` if the server is just slow)"
    return False, False, f"{type(err).__name__}: {err}"


async def with_retries(endpoint: Endpoint, call: Callable[[], Awaitable[T]], *, retry: Callable[[], bool] = lambda: True) -> T:
    """`call()`, retried with backoff on 429/502/503/504 and dropped connections.

    `retry()` may veto a retry (a stream that already delivered text cannot be replayed).
    Failures become ServerUnreachable (nothing answers) or ServerError, naming the endpoint.
    """
    for attempt in range(endpoint.retries + 1):
        try:
            return await call()
        except (ServerError, ConfigError, InputTooLong):  # already decided (the openai SDK backend raises these)
            raise
        except Exception as err:
            if too_long(err):
                raise InputTooLong(f"{endpoint.where()}: the input is too long for the server ({err})") from None
            again, unreachable, what = _transient(err)
            if again and attempt < endpoint.retries and retry():
                await asyncio.sleep(backoff_delay(attempt, getattr(err, "retry_after", None)))
                continue
            tries = f" after {attempt + 1} attempts" if attempt else ""
            cls = ServerUnreachable if unreachable else ServerError
            raise cls(f"{endpoint.where()}: {what}{tries}") from None
    raise AssertionError("unreachable")


# -- prompts, stop strings, choices --------------------------------------------------------


def server_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> str:
    """The prompt as a server should receive it: without a leading BOS the server adds itself.

    TGI and vLLM tokenize prompts with special tokens, so a chat-rendered prompt that starts
    with BOS would get two. The in-process engine gives exactly one; so do we, by sending the
    rest and letting the server add it.
    """
    bos = tokenizer.bos_token
    if bos and prompt.startswith(bos) and adds_bos(tokenizer):
        return prompt[len(bos) :]
    return prompt


_ADDS_BOS: dict[int, bool] = {}


def adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    key = id(tokenizer)
    if key not in _ADDS_BOS:
        ids = tokenizer("a")["input_ids"]
        _ADDS_BOS[key] = bool(ids) and ids[0] == tokenizer.bos_token_id
    return _ADDS_BOS[key]


# -- the backend ---------------------------------------------------------------------------


class RemoteBackend(ABC):
    """The `Backend` surface over one inference server; the tokenizer (from `model`) renders prompts.

    Subclasses build a request from a prompt (`_request`) and implement one plain call
    (`_generate`, with its own retries) and one streamed attempt (`_stream_once`); streaming,
    its retry rule and the choice-token cache are written here once.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        model: str,
        *,
        top_n_tokens: int = 20,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.top_n_tokens = top_n_tokens
        self._tokenizer = tokenizer or load_tokenizer(resolve_model(model))
        self._choice_ids: dict[tuple[str, ...], list[list[int]]] = {}

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self._tokenizer

    def generate(self, prompt: str, params: GenerationParams, on_text: TextCallback | None = None) -> Patch:
        request = self._request(prompt, params)
        if on_text is None:
            return run_sync(self._generate(request, params.stop))

        async def stream(emit: Callable[[str], None]) -> Patch:
            holdback = StopHoldback(emit, params.stop)
            # A stream that already showed text cannot be replayed: retry only before the first piece.
            return await with_retries(
                self.endpoint, lambda: self._stream_once(request, params.stop, holdback), retry=lambda: not holdback.sent
            )

        return run_streaming(stream, on_text)

    @abstractmethod
    def choice_distribution(self, prompt: str, choices: Sequence[str]) -> ChoiceScores:
        """The switcher's distribution over `choices` from one one-token request."""

    def choice_ids(self, choices: Sequence[str]) -> list[list[int]]:
        """The token ids that spell each choice (cached per choice list)."""
        key = tuple(choices)
        if key not in self._choice_ids:
            self._choice_ids[key] = choice_token_ids(self.tokenizer, choices)
        return self._choice_ids[key]

    # -- what a subclass supplies -----------------------------------------------------------

    @abstractmethod
    def _request(self, prompt: str, params: GenerationParams) -> dict[str, Any]:
        """The server's request body for one patch."""

    @abstractmethod
    async def _generate(self, request: dict[str, Any], stop: Sequence[str]) -> Patch:
        """One plain call, with its own retries."""

    @abstractmethod
    async def _stream_once(self, request: dict[str, Any], stop: Sequence[str], holdback: StopHoldback) -> Patch:
        """One streamed attempt, its text fed through `holdback`."""


# -- health --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """What to ask one server before a run."""

    endpoint: Endpoint
    engine: str  # tgi | openai
    served_model: str | None = None


_SILENT = "no server answers at"  # how _probe starts the problem of a server that did not answer at all


async def _probe(probe: Probe, client: httpx.AsyncClient) -> str | None:
    """None when the server is up (and serves the model); else what is wrong."""
    ep = probe.endpoint
    path = "/health" if probe.engine == "tgi" else "/v1/models"
    timeout = httpx.Timeout(ep.connect_timeout * 3, connect=ep.connect_timeout)
    try:
        response = await client.get(ep.url + path, headers=ep.auth_headers(), timeout=timeout)
    except httpx.HTTPError as err:
        return f"{_SILENT} {ep.url} ({type(err).__name__}: {err or 'refused'})"
    if response.status_code in (401, 403):
        return _refused(ep, path, response)
    if response.status_code != 200:
        return f"{ep.url}{path} answers HTTP {response.status_code}: {error_detail(response)}"
    if probe.engine == "tgi":
        # /health is open even where generating needs a key: a key (or its absence) is checked on /info,
        # which TGI itself serves openly and a server or proxy that wants a key guards with it.
        try:
            info = await client.get(ep.url + "/info", headers=ep.auth_headers(), timeout=timeout)
        except httpx.HTTPError as err:
            return f"{ep.url}/info does not answer ({type(err).__name__}: {err or 'refused'})"
        if info.status_code in (401, 403):
            return _refused(ep, "/info", info)
    if probe.engine == "openai" and probe.served_model:
        try:
            body = response.json()
            listed = [m.get("id") for m in body.get("data", [])] if "data" in body else [body.get("id")]
        except (ValueError, AttributeError):
            return f"{ep.url}/v1/models did not answer a model list: is it an OpenAI-compatible server?"
        if probe.served_model not in listed:
            return f"{ep.url} does not serve model {probe.served_model!r} (it serves {listed}); set served_model"
    return None


def _refused(ep: Endpoint, path: str, response: httpx.Response) -> str:
    given = "the api_key given is refused" if ep.api_key else "set api_key (e.g. api_key: ${MY_API_KEY})"
    return f"{ep.url}{path} answers HTTP {response.status_code} ({error_detail(response)}): {given}"


def check_servers(probes: Sequence[Probe]) -> None:
    """Ask every server before a run; one error names each candidate and URL that is not ready."""
    if not probes:
        return

    async def run() -> list[str | None]:
        async with httpx.AsyncClient() as client:
            return await asyncio.gather(*(_probe(p, client) for p in probes))

    answers = run_sync(run())
    problems = [f"{p.endpoint.label}: {what}" for p, what in zip(probes, answers, strict=True) if what]
    if problems:
        # Starting servers helps only where none answered: a refused key or a missing model needs the config fixed.
        down = any(what and what.startswith(_SILENT) for what in answers)
        hint = " (start the servers: `switchgen serve ...` or `docker compose up`; or fix the url)" if down else ""
        raise ServerUnreachable("; ".join(problems) + hint)
