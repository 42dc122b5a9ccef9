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
The HTTP ground (bounded bodies, error shapes, the key, Host/Origin, request ids, admission, the
thread bridge) is servers/serve/http.py, admission.py and bridge.py, shared with `switchgen api`.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import ASGIApp

from switchgen.core.jsonl import invalid_text
from switchgen.servers.base import GenerationParams
from switchgen.servers.protocol import FINISH_TO_TGI
from switchgen.servers.serve.admission import Admission, Holding, Slot
from switchgen.servers.serve.bridge import Work, bridged
from switchgen.servers.serve.http import HttpError, HttpService, sse, tgi_shape
from switchgen.servers.serve.limits import Limits, RequestError
from switchgen.servers.serve.schema import (
    DEFAULT_MAX_NEW_TOKENS,
    PROTOCOL_VERSION,
    ChatCompletionRequest,
    CompletionChoiceOut,
    CompletionOut,
    CompletionRequest,
    DetailsOut,
    GenerateOut,
    GenerateRequest,
    InfoOut,
    openai_logprobs,
    stream_event,
    token_out,
    usage_out,
)
from switchgen.servers.serve.steps import Generation, Step, TokenServer
from switchgen.servers.stops import StopHoldback

FINGERPRINT = f"switchgen-serve-{PROTOCOL_VERSION}"


@dataclass
class ServedModel:
    """A checkpoint to serve: its id in responses and the engine behind it."""

    model_id: str
    server: TokenServer
    max_top_n_tokens: int = 1024
    max_concurrent_requests: int = 128
    limits: Limits | None = None  # default: TGI's for the model's context
    api_key: str | None = None  # required as a bearer token on every route but /health
    allowed_hosts: frozenset[str] | None = None  # Host/Origin names answered (None: any); see http.allowed_hosts
    access_log: bool = False


@dataclass
class _Prepared:
    """A generate request checked against the server's limits: what the engine runs."""

    ids: list[int]
    params: GenerationParams
    top_n: int
    adapter: str | None


def public_adapter_name(adapter: str) -> str:
    """How /v1/models names an adapter: a local folder by its own name, never by its path on this machine."""
    path = Path(adapter)
    return path.name if path.is_absolute() or path.exists() else adapter


def _failed(err: Exception) -> HttpError:
    return HttpError(424, f"Request failed during generation: {err}", "generation")


class ServeApp:
    """One checkpoint behind TGI's routes (plus OpenAI's completions): a method per route."""

    def __init__(self, served: ServedModel, *, workers: int = 8, validation_workers: int = 2) -> None:
        self.served = served
        self.engine = served.server
        self.limits = served.limits or Limits.for_context(served.server.max_total_tokens)
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"serve-{served.model_id}")
        self.http = HttpService(
            shape=tgi_shape, name="serve", api_key=served.api_key, hosts=served.allowed_hosts,
            payload_limit=self.limits.payload_limit, bad_request=(422, "validation"), auth_kind="authentication",
            access_log=served.access_log, validation_workers=validation_workers,
        )
        # TGI's --max-concurrent-requests: no queue, a 429 at once (its clients retry with backoff).
        self.admission = Admission(served.max_concurrent_requests, kind="overloaded", busy="Model is overloaded")
        self.adapter_names = {public_adapter_name(a): a for a in sorted(self.engine.adapters)}

    def starlette(self) -> ASGIApp:
        return self.http.app([
            ("/", self.generate, ["POST"]),
            ("/generate", self.generate, ["POST"]),
            ("/generate_stream", self.generate_stream, ["POST"]),
            ("/info", self.info, ["GET"]),
            ("/health", self.health, ["GET"]),
            ("/v1/models", self.models, ["GET"]),
            ("/v1/completions", self.completions, ["POST"]),
            ("/v1/chat/completions", self.chat_completions, ["POST"]),
        ])

    # -- routes ----------------------------------------------------------------------------

    async def generate(self, request: Request) -> Response:
        """POST /generate and POST / (TGI's compat route: a list, or a stream when asked)."""
        req = await self.http.parsed(request, GenerateRequest)
        if request.url.path == "/" and req.stream:
            return await self._tgi_stream(req)
        job = await self.http.off_loop(self._prepare, req)
        keep = req.parameters.truncate is None
        gen = await self._run(lambda: self._generate(req.inputs, job, keep))
        out = GenerateOut(generated_text=gen.full_text)
        if req.parameters.details:
            out.details = DetailsOut(
                finish_reason=FINISH_TO_TGI[gen.finish],
                generated_tokens=len(gen.steps),
                seed=req.parameters.seed if not job.params.greedy else None,
                prefill=[],  # TGI too, unless started with REQUEST_LOGPROBS=1
                tokens=[token_out(s.token) for s in gen.steps],
            )
            if job.top_n:
                out.details.top_tokens = [[token_out(t) for t in s.top] for s in gen.steps]
        body = out.dump()
        return JSONResponse([body] if request.url.path == "/" else body)

    async def generate_stream(self, request: Request) -> Response:
        """POST /generate_stream: TGI's server-sent events, one token each."""
        try:
            req = await self.http.parsed(request, GenerateRequest)
        except HttpError as err:
            return self.http.error(err, stream=True)
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
            return self.http.error(HttpError(503, "unhealthy", "healthcheck"))
        return Response(status_code=200)

    async def models(self, request: Request) -> Response:
        """GET /v1/models: the checkpoint and each LoRA adapter it serves (a local one by its folder's name)."""
        created = int(time.time())
        ids = [self.served.model_id, *self.adapter_names]
        return JSONResponse(
            {"object": "list", "data": [{"id": i, "object": "model", "created": created, "owned_by": "switchgen"} for i in ids]}
        )

    async def completions(self, request: Request) -> Response:
        """POST /v1/completions: OpenAI's legacy completions, vLLM style (top-k logprob dicts, stop_reason)."""
        req = await self.http.parsed(request, CompletionRequest)
        prompt = (req.prompt[0] if isinstance(req.prompt, list) else req.prompt) + (req.suffix or "")
        job = await self.http.off_loop(self._prepare_completion, req, prompt)
        model_name = req.model or self.served.model_id
        if req.stream:
            return await self._completion_stream(prompt, job, req, model_name)
        gen = await self._run(lambda: self._generate(prompt, job, True, ignore_eos=req.ignore_eos))
        choice = CompletionChoiceOut(
            index=0,
            text=gen.text,
            finish_reason="length" if gen.finish == "length" else "stop",
            stop_reason=gen.stop,  # vLLM: the stop string; None for EOS and length
            logprobs=openai_logprobs(gen.steps, job.top_n) if req.logprobs is not None else None,
        )
        out = CompletionOut(
            id=f"cmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=model_name,
            system_fingerprint=FINGERPRINT,
            choices=[choice],
            usage=usage_out(len(job.ids), len(gen.steps)),
        )
        return JSONResponse(out.model_dump())

    async def chat_completions(self, request: Request) -> Response:
        """POST /v1/chat/completions: the messages in the checkpoint's chat template, then a completion."""
        chat = await self.http.parsed(request, ChatCompletionRequest)
        prompt, req, job = await self.http.off_loop(self._prepare_chat, chat)
        model_name = chat.model or self.served.model_id
        if req.stream:
            return await self._completion_stream(prompt, job, req, model_name, chat=True)
        gen = await self._run(lambda: self._generate(prompt, job, True))
        return JSONResponse({
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_name,
            "system_fingerprint": FINGERPRINT,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": gen.text},
                "finish_reason": "length" if gen.finish == "length" else "stop",
                "logprobs": None,
            }],
            "usage": usage_out(len(job.ids), len(gen.steps)).model_dump(),
        })

    # -- requests to engine work -----------------------------------------------------------

    def _adapter(self, name: str | None) -> str | None:
        """The adapter a request names (by its listed name or as configured); None: the base weights."""
        if name in (None, "", "null"):
            return None
        return self.adapter_names.get(name, name if name in self.engine.adapters else None)

    def _encode(self, text: str, adapter: str | None, field: str) -> list[int]:
        problem = invalid_text(text)
        if problem:
            raise RequestError(f"Input validation error: `{field}` {problem}")
        return self.engine.encode(text, adapter)

    def _prepare(self, req: GenerateRequest) -> _Prepared:
        p = req.parameters
        adapter = self._adapter(p.adapter_id)
        if p.adapter_id not in (None, "", "null") and adapter is None:
            raise RequestError(f"unknown adapter_id {p.adapter_id!r}; this server has {list(self.adapter_names) or 'none'}")
        _check_stops(p.stop)
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
        messages = [m.as_dict() for m in chat.messages]
        try:
            prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as err:
            raise RequestError(f"messages: the chat template cannot render them ({err})".replace("\n", " ")) from None
        req = chat.completion(prompt)
        return prompt, req, self._prepare_completion(req, prompt)

    def _prepare_completion(self, req: CompletionRequest, prompt: str) -> _Prepared:
        adapter = self._adapter(req.model)
        stops = [req.stop] if isinstance(req.stop, str) else req.stop or []
        _check_stops(stops)
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
            stop=tuple(stops),
        )
        return _Prepared(ids, params, req.logprobs or 0, adapter)

    def _generate(self, prompt: str, job: _Prepared, remember: bool, **kwargs: Any) -> Generation:
        gen = self.engine.generate(job.ids, job.params, top_n=job.top_n, adapter=job.adapter, **kwargs)
        if remember:  # the next patch's prompt extends this one: keep the tokens it was written as
            self.engine.remember(prompt, job.ids, gen, job.adapter)
        return gen

    async def _run(self, fn: Callable[[], Generation]) -> Generation:
        """`fn` in the pool, under one of the server's slots; a failure is TGI's 424."""
        with await self.admission.enter():
            try:
                return await asyncio.get_running_loop().run_in_executor(self.executor, fn)
            except Exception as err:
                raise _failed(err) from None

    async def _steps(self, work: Work, slot: Slot) -> AsyncIterator[tuple[str, Any]]:
        """Run `work` in the pool: ("step", Step)... then ("done", Generation) or ("error", HttpError)."""
        with slot:
            try:
                async with aclosing(bridged(self.executor, [work])) as events:
                    async for _, kind, item in events:  # closing it stops the model at its next token
                        yield ("step" if kind == "event" else kind), item
            except Exception as err:
                yield "error", _failed(err)

    # -- streams ---------------------------------------------------------------------------

    async def _tgi_stream(self, req: GenerateRequest) -> Response:
        try:
            job = await self.http.off_loop(self._prepare, req)
            slot = await self.admission.enter()  # counted now, not when the stream starts
        except HttpError as err:
            return self.http.error(err, stream=True)
        seed = req.parameters.seed if not job.params.greedy else None
        keep = req.parameters.truncate is None

        def work(on_step: Callable[[Step], None], cancelled: Any) -> Generation:
            return self._generate(req.inputs, job, keep, on_step=on_step, cancelled=cancelled)

        async def events() -> AsyncIterator[bytes]:
            # One step is held back: the last token's event carries generated_text and details.
            held: Step | None = None
            async for kind, item in self._steps(work, slot):
                if kind == "step":
                    if held is not None:
                        yield sse(stream_event(held, job.top_n), space=False)
                    held = item
                elif kind == "done" and held is not None and item is not None:
                    yield sse(stream_event(held, job.top_n, item, len(job.ids), seed), space=False)
                elif kind == "error":
                    yield sse(tgi_shape(item), space=False)

        return Holding(StreamingResponse(events(), media_type="text/event-stream"), slot)

    async def _completion_stream(
        self, prompt: str, job: _Prepared, req: CompletionRequest, model_name: str, *, chat: bool = False
    ) -> Response:
        """The completion as server-sent events: text_completion chunks, or chat.completion.chunk deltas."""
        slot = await self.admission.enter()  # counted now, not when the stream starts
        head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}", "created": int(time.time()),
                "model": model_name, "system_fingerprint": FINGERPRINT}

        def chunk(text: str, finish: str | None = None, stop: str | None = None) -> bytes:
            if chat:
                delta = {"content": text} if text or finish is None else {}
                choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
                return sse({**head, "object": "chat.completion.chunk", "choices": [choice]}, space=False)
            choice = CompletionChoiceOut(index=0, text=text, finish_reason=finish, stop_reason=stop, logprobs=None)
            return sse(CompletionOut(**head, choices=[choice]).model_dump(exclude={"usage"}), space=False)

        def last(gen: Generation) -> list[bytes]:
            usage = usage_out(len(job.ids), len(gen.steps))
            end = ({**head, "object": "chat.completion.chunk", "choices": [], "usage": usage.model_dump()} if chat
                   else CompletionOut(**head, choices=[], usage=usage).model_dump())
            return [chunk("", "length" if gen.finish == "length" else "stop", gen.stop), sse(end, space=False),
                    b"data: [DONE]\n\n"]

        def work(on_step: Callable[[Step], None], cancelled: Any) -> Generation:
            return self._generate(prompt, job, True, ignore_eos=req.ignore_eos, on_step=on_step, cancelled=cancelled)

        async def events() -> AsyncIterator[bytes]:
            pending: list[str] = []
            visible = StopHoldback(pending.append, job.params.stop)  # vLLM never shows a stop string
            async for kind, item in self._steps(work, slot):
                if kind == "error":
                    yield sse({"error": {"message": str(item), "type": item.kind}}, space=False)
                    return
                if kind == "done" and item is None:  # stopped: nobody reads any more
                    return
                if kind == "step":
                    visible.add(item.token.text if not item.token.special else "")
                else:
                    visible.finish(item.text)
                if pending:
                    yield chunk("".join(pending))
                    pending.clear()
                if kind == "done":
                    for part in last(item):
                        yield part

        return Holding(StreamingResponse(events(), media_type="text/event-stream"), slot)


def _check_stops(stops: list[str]) -> None:
    for stop in stops:
        if invalid_text(stop):
            raise RequestError(f"Input validation error: `stop` {invalid_text(stop)}")


def create_app(served: ServedModel, *, workers: int = 8) -> ASGIApp:
    """The ASGI app serving one checkpoint."""
    return ServeApp(served, workers=workers).starlette()
