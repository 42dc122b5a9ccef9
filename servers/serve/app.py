"""`switchgen serve`: the in-process engine behind TGI's HTTP protocol, one server per checkpoint.

Each server answers what the graph's `tgi` and `openai` backends ask, the way TGI 3.3 and vLLM
answer it (responses follow TGI's published OpenAPI spec):

    POST /generate, POST / (compat), POST /generate_stream (SSE), GET /info, GET /health,
    POST /v1/completions (OpenAI/vLLM style: logprobs as top-k dicts, stop_reason), GET /v1/models,
    POST /v1/chat/completions (the checkpoint's chat template; what huggingface_hub's
    chat_completion and langchain-huggingface's ChatHuggingFace ask).

With an API key (`switchgen serve --api-key`), every route but /health needs
`Authorization: Bearer <key>` (vLLM's --api-key); otherwise 401. `typical_p`, which
langchain-huggingface's HuggingFaceEndpoint sends by default (0.95), is accepted and not applied.

Model work runs in a thread pool so the event loop keeps serving; concurrent requests to one
checkpoint are decoded in one batch by the engine's decode worker (this server is for
development, tests and CPU boxes; deploy TGI or vLLM on GPUs, see docs/serving.md). Bad requests get TGI's 422
{"error", "error_type": "validation"}; limits (payload size, input and total tokens) are TGI's
(servers/serve/limits.py). Every server of one `switchgen serve` process shares one event loop,
so nothing heavy runs on it: reading a body is bounded by the payload limit, and parsing and
tokenising run on a small validation pool (TGI's validation workers), generation on another.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from switchgen.core.errors import describe
from switchgen.core.jsonl import invalid_text
from switchgen.servers.base import GenerationParams
from switchgen.servers.protocol import FINISH_TO_TGI
from switchgen.servers.serve.limits import MAX_STOP_SEQUENCES, Limits, RequestError, error_response, read_body
from switchgen.servers.serve.steps import Cancelled, Generation, Step, TokenInfo, TokenServer
from switchgen.servers.stops import StopHoldback

PROTOCOL_VERSION = "3.3.6"  # the TGI version whose OpenAPI spec these responses follow
DEFAULT_MAX_NEW_TOKENS = 1024
MAX_SEED = 2**64 - 1  # TGI's seed is a u64 (and torch's generator takes no more)


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


class ChatCompletionRequest(_Body):
    """OpenAI's chat completions request, for one checkpoint: rendered with its chat template."""

    model: str | None = None
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0)
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


def _parse(model: type[BaseModel], raw: bytes) -> Any:
    try:
        data = json.loads(raw)
    except RecursionError:
        raise RequestError("the body is not valid JSON: nested too deeply") from None
    except ValueError as err:
        raise RequestError(f"the body is not valid JSON: {err}") from None
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise RequestError(describe(err, root="body")) from None


# -- the application -----------------------------------------------------------------------


@dataclass
class ServedModel:
    """A checkpoint to serve: its id in responses and the engine behind it."""

    model_id: str
    server: TokenServer
    max_top_n_tokens: int = 1024
    max_concurrent_requests: int = 128
    limits: Limits | None = None  # default: TGI's for the model's context
    api_key: str | None = None  # required as a bearer token on every route but /health


class _Job:
    """Generation in a worker thread; its steps and its end reach the event loop through a queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()

    def _put(self, item: tuple[str, Any]) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def on_step(self, step: Step) -> None:
        self._put(("step", step))

    def run(self, fn: Callable[[Callable[[Step], None], threading.Event], Generation]) -> None:
        try:
            self._put(("done", fn(self.on_step, self.cancelled)))
        except Cancelled:
            pass
        except Exception as err:
            self._put(("error", err))


# -- responses -----------------------------------------------------------------------------
# Built with only the fields the protocol sends (None included where TGI sends null) and dumped
# with exclude_unset, so optional fields appear exactly when TGI's would.


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


# -- the application -----------------------------------------------------------------------


class _Overloaded(Exception):
    pass


@dataclass
class _Prepared:
    """A generate request checked against the server's limits: what the engine runs."""

    ids: list[int]
    params: GenerationParams
    top_n: int
    adapter: str | None


class ServeApp:
    """One checkpoint behind TGI's routes (plus OpenAI's completions): a method per route."""

    def __init__(self, served: ServedModel, *, workers: int = 8, validation_workers: int = 2) -> None:
        self.served = served
        self.engine = served.server
        self.limits = served.limits or Limits.for_context(served.server.max_total_tokens)
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"serve-{served.model_id}")
        # Parsing and tokenising a request (up to the payload limit) off the loop all servers share.
        self.validation = ThreadPoolExecutor(max_workers=validation_workers, thread_name_prefix="serve-validate")
        self.in_flight = 0

    def starlette(self) -> Starlette:
        routes = [
            Route("/", self.generate, methods=["POST"]),
            Route("/generate", self.generate, methods=["POST"]),
            Route("/generate_stream", self.generate_stream, methods=["POST"]),
            Route("/info", self.info, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
        ]
        if self.served.api_key:
            routes = [r if r.path == "/health" else Route(r.path, self._guard(r.endpoint), methods=r.methods)
                      for r in routes]
        app = Starlette(routes=routes, exception_handlers={404: self.not_found, 405: self.method_not_allowed})
        app.state.executor = self.executor
        return app

    def _guard(self, route: Callable[[Request], Any]) -> Callable[[Request], Any]:
        """`route`, answered only with the server's API key as a bearer token."""
        import hmac

        expected = f"Bearer {self.served.api_key}".encode()

        async def guarded(request: Request) -> Response:
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return _error(401, "a valid API key is required: send Authorization: Bearer <key>", "authentication")
            return await route(request)

        return guarded

    # -- routes ----------------------------------------------------------------------------

    async def generate(self, request: Request) -> Response:
        """POST /generate and POST / (TGI's compat route: a list, or a stream when asked)."""
        try:
            req = await self._validated(request, GenerateRequest)
            if request.url.path == "/" and req.stream:
                return await self._tgi_stream(req)
            job = await self._off_loop(self._prepare, req)
        except RequestError as err:
            return _error(err.status, str(err), err.kind)
        try:
            keep = req.parameters.truncate is None
            gen = await self._run(lambda: self._generate(req.inputs, job, keep))
        except _Overloaded:
            return _error(429, "Model is overloaded", "overloaded")
        except Exception as err:
            return _error(424, f"Request failed during generation: {err}", "generation")
        out = GenerateOut(generated_text=gen.full_text)
        if req.parameters.details:
            out.details = DetailsOut(
                finish_reason=FINISH_TO_TGI[gen.finish],
                generated_tokens=len(gen.steps),
                seed=req.parameters.seed if not job.params.greedy else None,
                prefill=[],  # TGI too, unless started with REQUEST_LOGPROBS=1
                tokens=[_token(s.token) for s in gen.steps],
            )
            if job.top_n:
                out.details.top_tokens = [[_token(t) for t in s.top] for s in gen.steps]
        body = out.dump()
        return JSONResponse([body] if request.url.path == "/" else body)

    async def generate_stream(self, request: Request) -> Response:
        """POST /generate_stream: TGI's server-sent events, one token each."""
        try:
            req = await self._validated(request, GenerateRequest)
        except RequestError as err:
            return _error(err.status, str(err), err.kind, stream=True)
        return await self._tgi_stream(req)

    async def info(self, request: Request) -> Response:
        """GET /info: TGI's Info."""
        served = self.served
        return JSONResponse(
            InfoOut(
                model_id=served.model_id,
                model_sha=None,
                model_pipeline_tag="text-generation",
                max_concurrent_requests=served.max_concurrent_requests,
                max_best_of=1,
                max_stop_sequences=self.limits.max_stop_sequences,
                max_input_tokens=self.limits.max_input_tokens,
                max_total_tokens=self.limits.max_total_tokens,
                validation_workers=1,
                max_client_batch_size=1,
                router="switchgen-serve",
                version=PROTOCOL_VERSION,
                sha=None,
                docker_label=None,
            ).dump()
        )

    async def health(self, request: Request) -> Response:
        """GET /health: 200, or TGI's 503 once the device's decode thread has died (every request would fail)."""
        if not self.engine.healthy:
            return _error(503, "unhealthy", "healthcheck")
        return Response(status_code=200)

    async def models(self, request: Request) -> Response:
        """GET /v1/models: the checkpoint and each LoRA adapter it serves."""
        created = int(time.time())
        ids = [self.served.model_id, *sorted(self.engine.adapters)]
        return JSONResponse(
            {"object": "list", "data": [{"id": i, "object": "model", "created": created, "owned_by": "switchgen"} for i in ids]}
        )

    async def completions(self, request: Request) -> Response:
        """POST /v1/completions: OpenAI's legacy completions, vLLM style (top-k logprob dicts, stop_reason)."""
        try:
            req = await self._validated(request, CompletionRequest)
            prompt = (req.prompt[0] if isinstance(req.prompt, list) else req.prompt) + (req.suffix or "")
            job = await self._off_loop(self._prepare_completion, req, prompt)
        except RequestError as err:
            return _error(err.status, str(err), err.kind)
        model_name = req.model or self.served.model_id
        if req.stream:
            return self._completion_stream(prompt, job, req, model_name)
        try:
            gen = await self._run(lambda: self._generate(prompt, job, True, ignore_eos=req.ignore_eos))
        except _Overloaded:
            return _error(429, "Model is overloaded", "overloaded")
        except Exception as err:
            return _error(424, f"Request failed during generation: {err}", "generation")
        choice = CompletionChoiceOut(
            index=0,
            text=gen.text,
            finish_reason="length" if gen.finish == "length" else "stop",
            stop_reason=gen.stop,  # vLLM: the stop string; None for EOS and length
            logprobs=_openai_logprobs(gen.steps, job.top_n) if req.logprobs is not None else None,
        )
        out = CompletionOut(
            id=f"cmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=model_name,
            system_fingerprint=f"switchgen-serve-{PROTOCOL_VERSION}",
            choices=[choice],
            usage=_usage(len(job.ids), len(gen.steps)),
        )
        return JSONResponse(out.model_dump())

    async def chat_completions(self, request: Request) -> Response:
        """POST /v1/chat/completions: the messages in the checkpoint's chat template, then a completion."""
        try:
            chat = await self._validated(request, ChatCompletionRequest)
            prompt, req, job = await self._off_loop(self._prepare_chat, chat)
        except RequestError as err:
            return _error(err.status, str(err), err.kind)
        model_name = chat.model or self.served.model_id
        if req.stream:
            return self._completion_stream(prompt, job, req, model_name, chat=True)
        try:
            gen = await self._run(lambda: self._generate(prompt, job, True))
        except _Overloaded:
            return _error(429, "Model is overloaded", "overloaded")
        except Exception as err:
            return _error(424, f"Request failed during generation: {err}", "generation")
        return JSONResponse({
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_name,
            "system_fingerprint": f"switchgen-serve-{PROTOCOL_VERSION}",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": gen.text},
                "finish_reason": "length" if gen.finish == "length" else "stop",
                "logprobs": None,
            }],
            "usage": _usage(len(job.ids), len(gen.steps)).model_dump(),
        })

    async def not_found(self, request: Request, exc: Exception) -> Response:
        return _error(404, f"{request.method} {request.url.path} is not served here", "not_found")

    async def method_not_allowed(self, request: Request, exc: Exception) -> Response:
        return _error(405, f"{request.method} is not allowed on {request.url.path}", "method_not_allowed")

    # -- requests to engine work -----------------------------------------------------------

    async def _validated(self, request: Request, model: type[BaseModel]) -> Any:
        """The body (at most the payload limit) parsed into `model`, off the event loop."""
        raw = await read_body(request, self.limits.payload_limit)
        return await self._off_loop(_parse, model, raw)

    async def _off_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.validation, fn, *args)

    def _encode(self, text: str, adapter: str | None, field: str) -> list[int]:
        problem = invalid_text(text)
        if problem:
            raise RequestError(f"Input validation error: `{field}` {problem}")
        return self.engine.encode(text, adapter)

    def _prepare(self, req: GenerateRequest) -> _Prepared:
        engine, p = self.engine, req.parameters
        if p.adapter_id not in (None, "", "null") and p.adapter_id not in engine.adapters:
            raise RequestError(f"unknown adapter_id {p.adapter_id!r}; this server has {sorted(engine.adapters) or 'none'}")
        adapter = p.adapter_id if p.adapter_id not in ("", "null") else None
        for stop in p.stop:
            if invalid_text(stop):
                raise RequestError(f"Input validation error: `stop` {invalid_text(stop)}")
        ids = self._encode(req.inputs, adapter, "inputs")
        if p.truncate is not None:
            ids = ids[-p.truncate :]
        room = self.limits.max_total_tokens - len(ids)
        max_new = p.max_new_tokens or max(1, min(DEFAULT_MAX_NEW_TOKENS, room))
        self.limits.check_tokens(len(ids), max_new)
        top_n = p.top_n_tokens or 0
        if top_n > self.served.max_top_n_tokens:
            raise RequestError(f"top_n_tokens must be <= {self.served.max_top_n_tokens} (the server's --max-top-n-tokens)")
        # TGI samples when asked to, or when any warper is set (its NextTokenChooser).
        sampling = p.do_sample or (p.temperature is not None and p.temperature != 1.0) or p.top_p is not None
        params = GenerationParams(
            max_new_tokens=max_new,
            greedy=not sampling,
            temperature=p.temperature or 1.0,
            top_p=p.top_p or 1.0,
            seed=p.seed,
            stop=tuple(p.stop),
        )
        return _Prepared(ids, params, top_n, adapter)

    def _prepare_chat(self, chat: ChatCompletionRequest) -> tuple[str, CompletionRequest, _Prepared]:
        """The messages in the checkpoint's chat template, and that prompt's completion."""
        tokenizer = self.engine.tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise RequestError(f"{self.served.model_id} has no chat template: use /v1/completions")
        try:
            prompt = tokenizer.apply_chat_template(chat.messages, tokenize=False, add_generation_prompt=True)
        except Exception as err:
            raise RequestError(f"messages: the chat template cannot render them ({err})".replace("\n", " ")) from None
        req = chat.completion(prompt)
        return prompt, req, self._prepare_completion(req, prompt)

    def _prepare_completion(self, req: CompletionRequest, prompt: str) -> _Prepared:
        engine = self.engine
        adapter = req.model if req.model in engine.adapters else None
        stops = [req.stop] if isinstance(req.stop, str) else req.stop or []
        for stop in stops:
            if invalid_text(stop):
                raise RequestError(f"Input validation error: `stop` {invalid_text(stop)}")
        ids = self._encode(prompt, adapter, "prompt")
        max_new = req.max_tokens or 16
        self.limits.check_tokens(len(ids), max_new, new_name="max_tokens")
        if (req.logprobs or 0) > self.served.max_top_n_tokens:
            raise RequestError(f"logprobs must be <= {self.served.max_top_n_tokens} (the server's --max-top-n-tokens)")
        temperature = 1.0 if req.temperature is None else req.temperature
        params = GenerationParams(
            max_new_tokens=max_new,
            greedy=temperature == 0.0,
            temperature=temperature or 1.0,
            top_p=req.top_p or 1.0,
            seed=req.seed,
            stop=tuple([req.stop] if isinstance(req.stop, str) else req.stop or []),
        )
        return _Prepared(ids, params, req.logprobs or 0, adapter)

    def _generate(self, prompt: str, job: _Prepared, remember: bool, **kwargs: Any) -> Generation:
        gen = self.engine.generate(job.ids, job.params, top_n=job.top_n, adapter=job.adapter, **kwargs)
        if remember:  # the next patch's prompt extends this one: keep the tokens it was written as
            self.engine.remember(prompt, job.ids, gen, job.adapter)
        return gen

    async def _run(self, fn: Callable[[], Generation]) -> Generation:
        if self.in_flight >= self.served.max_concurrent_requests:
            raise _Overloaded
        self.in_flight += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn)
        finally:
            self.in_flight -= 1

    async def _job_events(self, work: Callable[..., Generation]) -> AsyncIterator[tuple[str, Any]]:
        """Run `work` in the pool and yield ("step", Step)... then ("done", Generation) or ("error", err)."""
        job = _Job(asyncio.get_running_loop())
        self.in_flight += 1
        future = asyncio.get_running_loop().run_in_executor(self.executor, job.run, work)
        try:
            while True:
                kind, item = await job.queue.get()
                yield kind, item
                if kind != "step":
                    return
        finally:
            job.cancelled.set()  # a client that went away stops the model at its next token
            self.in_flight -= 1
            del future

    # -- streams ---------------------------------------------------------------------------

    async def _tgi_stream(self, req: GenerateRequest) -> Response:
        try:
            job = await self._off_loop(self._prepare, req)
        except RequestError as err:
            return _error(err.status, str(err), err.kind, stream=True)
        if self.in_flight >= self.served.max_concurrent_requests:
            return _error(429, "Model is overloaded", "overloaded", stream=True)
        seed = req.parameters.seed if not job.params.greedy else None
        keep = req.parameters.truncate is None

        def work(on_step: Callable[[Step], None], cancelled: threading.Event) -> Generation:
            return self._generate(req.inputs, job, keep, on_step=on_step, cancelled=cancelled)

        async def events() -> AsyncIterator[bytes]:
            # One step is held back: the last token's event carries generated_text and details.
            held: Step | None = None
            async for kind, item in self._job_events(work):
                if kind == "step":
                    if held is not None:
                        yield _sse(_stream_event(held, job.top_n))
                    held = item
                elif kind == "done" and held is not None:
                    yield _sse(_stream_event(held, job.top_n, item, len(job.ids), seed))
                else:
                    yield _sse({"error": f"Request failed during generation: {item}", "error_type": "generation"})

        return StreamingResponse(events(), media_type="text/event-stream")

    def _completion_stream(
        self, prompt: str, job: _Prepared, req: CompletionRequest, model_name: str, *, chat: bool = False
    ) -> Response:
        """The completion as server-sent events: text_completion chunks, or chat.completion.chunk deltas."""
        head = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": model_name,
            "system_fingerprint": f"switchgen-serve-{PROTOCOL_VERSION}",
        }

        def chunk(text: str, finish: str | None = None, stop: str | None = None) -> bytes:
            if chat:
                delta = {"content": text} if text or finish is None else {}
                choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
                return _sse({**head, "object": "chat.completion.chunk", "choices": [choice]})
            choice = CompletionChoiceOut(index=0, text=text, finish_reason=finish, stop_reason=stop, logprobs=None)
            return _sse(CompletionOut(**head, choices=[choice]).model_dump(exclude={"usage"}))

        def work(on_step: Callable[[Step], None], cancelled: threading.Event) -> Generation:
            return self._generate(prompt, job, True, ignore_eos=req.ignore_eos, on_step=on_step, cancelled=cancelled)

        async def events() -> AsyncIterator[bytes]:
            pending: list[str] = []
            visible = StopHoldback(pending.append, job.params.stop)  # vLLM never shows a stop string
            async for kind, item in self._job_events(work):
                if kind == "step":
                    visible.add(item.token.text if not item.token.special else "")
                elif kind == "done":
                    visible.finish(item.text)
                else:
                    yield _sse({"error": {"message": f"Request failed during generation: {item}", "type": "generation"}})
                    return
                if pending:
                    yield chunk("".join(pending))
                    pending.clear()
                if kind == "done":
                    yield chunk("", "length" if item.finish == "length" else "stop", item.stop)
                    usage = _usage(len(job.ids), len(item.steps))
                    if chat:
                        yield _sse({**head, "object": "chat.completion.chunk", "choices": [], "usage": usage.model_dump()})
                    else:
                        yield _sse(CompletionOut(**head, choices=[], usage=usage).model_dump())
                    yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")


def create_app(served: ServedModel, *, workers: int = 8) -> Starlette:
    """The ASGI app serving one checkpoint."""
    return ServeApp(served, workers=workers).starlette()


_error = error_response


def _usage(prompt_tokens: int, completion_tokens: int) -> UsageOut:
    return UsageOut(
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens
    )


def _token(t: TokenInfo) -> TokenOut:
    return TokenOut(id=t.id, text=t.text, logprob=t.logprob, special=t.special)


def _sse(payload: dict[str, Any]) -> bytes:
    return f"data:{json.dumps(payload, ensure_ascii=False)}\n\n".encode()


def _stream_event(
    step: Step, top_n: int, gen: Generation | None = None, input_length: int = 0, seed: int | None = None
) -> dict[str, Any]:
    """TGI's StreamResponse: one token; the last one carries generated_text and details."""
    event = StreamEventOut(index=step.index + 1, token=_token(step.token), generated_text=None, details=None)
    if top_n:
        event.top_tokens = [_token(t) for t in step.top]
    if gen is not None:
        event.generated_text = gen.full_text
        event.details = DetailsOut(
            finish_reason=FINISH_TO_TGI[gen.finish],
            generated_tokens=len(gen.steps),
            input_length=input_length,
            seed=seed,
        )
    return event.dump()


def _openai_logprobs(steps: list[Step], top_n: int) -> dict[str, Any]:
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
