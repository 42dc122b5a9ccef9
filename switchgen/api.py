"""`switchgen api`: the whole switch graph behind OpenAI's chat completions and completions APIs.

    POST /v1/chat/completions, POST /v1/completions (JSON, or server-sent events with "stream": true),
    GET /v1/models, GET /metrics (Prometheus), GET /health

Any OpenAI client (the `openai` SDK, LangChain's ChatOpenAI, OpenWebUI, lm-eval's API models) gets
an answer written by Switch Generation. `model` names the served configuration (`--served-model-name`,
else the preset name or the YAML file's stem). The trace is in an extra field, `switchgen`: each
choice's segments and decisions (the top-level field is the first choice's); in a stream each chunk
names the candidate writing it (`switchgen.candidate`, `switchgen.patch`) and the chunk with a
choice's finish_reason holds its trace. Per-request run settings (nodes/context.py: strategy,
candidate, patch_size, sequence, seed, ...) go in the request's `switchgen` object.

OpenAI's semantics are kept or refused, never ignored: `max_tokens` is the budget (above the
smallest in-process model's context: 400 before any work); `stop` strings become every candidate's
stop strings and cut the joined answer (graph/variants.py, as the lm-eval plug-in applies them);
`n` runs the graph n times (choice i > 0 seeded from the request's seed and i); `temperature` and
`top_p` set the candidates' sampling (0: greedy, with a seeded switcher so the answer repeats);
the other sampling fields (servers/serve/chat.py) are 400s naming the field. The HTTP ground
(bounded bodies, errors, key, Host/Origin, X-Request-Id, access log) is servers/serve/http.py,
shared with `switchgen serve`; admission (the concurrency limit, a bounded queue, Retry-After) is
servers/serve/admission.py. Errors have OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import AIMessage
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import ASGIApp

from switchgen.core.config import SwitchConfig, SwitcherConfig
from switchgen.core.errors import InputError, ServerError, SwitchgenError
from switchgen.core.jsonl import invalid_text
from switchgen.core.seeds import MAX_SEED, derive_seed
from switchgen.graph.variants import GraphVariants
from switchgen.servers.engine.local import LocalEngine
from switchgen.servers.serve.admission import Admission, Holding, Slot
from switchgen.servers.serve.bridge import Work, bridged
from switchgen.servers.serve.chat import ChatMessage, TextOnly
from switchgen.servers.serve.http import HttpError, HttpService, allowed_hosts, openai_shape, sse
from switchgen.servers.serve.metrics import Metrics
from switchgen.servers.serve.settings import ServiceSettings
from switchgen.servers.stops import StopHoldback, cut_at_stop

DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's and vLLM's default for /v1/completions
MAX_BUDGET = 2**31 - 1  # with no in-process model to tell the context
MAX_STOPS = 4  # OpenAI's
FINISH = {"eos": "stop", "stop": "stop", "length": "length", "budget": "length", None: "stop"}
STREAM_MODES = ["custom", "values"]


# -- the requests -------------------------------------------------------------------------------


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class _Request(TextOnly):
    """What both completion routes take: the budget, sampling, stop strings, n, and the run settings."""

    model: str = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    n: int = Field(1, ge=1, le=128)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    switchgen: dict[str, Any] | None = None  # run settings: nodes/context.py's fields

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop: str | list[str] | None) -> list[str]:
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop strings")
        for s in stops:
            if not s or invalid_text(s):
                raise ValueError(f"stop string {s!r} is {invalid_text(s) or 'empty'}")
        return stops

    @property
    def budget(self) -> int | None:
        return self.max_tokens

    def graph_input(self) -> dict[str, Any]:
        raise NotImplementedError


class ChatRequest(_Request):
    """OpenAI's chat completion request."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, tools: list | None) -> list | None:
        if tools:
            raise ValueError("tool calling is not supported: the checkpoints write text; call the tools in your agent")
        return tools

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, fmt: dict | None) -> dict | None:
        if fmt and fmt.get("type") not in (None, "text"):
            raise ValueError("only text responses are supported (no JSON mode or structured output)")
        return fmt

    @property
    def budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def graph_input(self) -> dict[str, Any]:
        return {"messages": [m.as_dict() for m in self.messages]}


class CompletionRequest(_Request):
    """OpenAI's (legacy) completions request: the prompt is the query the candidates answer."""

    prompt: str | list[str]
    max_tokens: int | None = Field(DEFAULT_COMPLETION_TOKENS, ge=1)
    echo: bool = False
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: str | list[str]) -> str | list[str]:
        if isinstance(prompt, list) and len(prompt) != 1:
            raise ValueError("send exactly one prompt per request (n gives several answers to one)")
        if not (prompt[0] if isinstance(prompt, list) else prompt):
            raise ValueError("prompt is empty")
        return prompt

    @field_validator("echo", "suffix")
    @classmethod
    def _refused(cls, value: Any, info: Any) -> Any:
        if value:
            raise ValueError(f"{info.field_name} is not supported: the answer is the graph's, after the prompt")
        return value

    def graph_input(self) -> dict[str, Any]:
        return {"query": self.prompt[0] if isinstance(self.prompt, list) else self.prompt}


# -- a request as graph runs --------------------------------------------------------------------


@dataclass
class Run:
    """What a request runs: one graph (its stop strings and sampling), an input, a context per choice."""

    graph: Any
    inputs: dict[str, Any]
    contexts: list[dict[str, Any] | None]
    stop: tuple[str, ...]


def sampling_of(req: _Request) -> dict[str, Any]:
    """The candidates' sampling a request asks for (empty: the configuration's)."""
    if req.temperature == 0:
        return {"greedy": True}
    sampling: dict[str, Any] = {}
    if req.temperature is not None:
        sampling.update(greedy=False, temperature=req.temperature)
    if req.top_p is not None:
        sampling.update(greedy=False, top_p=req.top_p)
    return sampling


def choice_seeds(req: _Request, config: SwitchConfig) -> list[int | None]:
    """A seed per choice: the request's (else the configuration's; 0 for temperature 0, so greedy
    answers repeat), the first as given and the others derived from it, so n answers differ."""
    base = req.seed if req.seed is not None else config.seed
    if base is None and req.temperature == 0:
        base = 0
    return [base if i == 0 else derive_seed(base, "choice", i) for i in range(req.n)]


def run_context(req: _Request, config: SwitchConfig) -> dict[str, Any]:
    """The request's `switchgen` run settings, with its budget (its patches no longer than it)."""
    context = dict(req.switchgen or {})
    if context.get("review"):
        raise HttpError(400, "review mode pauses for a reviewer: use the graph (langgraph dev), not this API",
                        param="switchgen.review")
    if isinstance(context.get("sequence"), str):  # "A P A", as the YAML configuration takes it
        context["sequence"] = SwitcherConfig.model_validate({"sequence": context["sequence"]}).sequence
    budget = req.budget
    if budget is not None:
        context["max_new_tokens"] = budget
        context["patch_size"] = min(context.get("patch_size") or config.patch_size, budget)
    return context


def context_limit(config: SwitchConfig, engine: LocalEngine) -> int | None:
    """The smallest context of the in-process candidates (None: every candidate is on a server)."""
    sizes = [engine.backend(c.model, device=c.device, dtype=c.dtype).max_total_tokens
             for c in config.candidates if c.backend == "local"]
    return min(sizes) if sizes else None


# -- answers ------------------------------------------------------------------------------------


def final_answer(state: dict[str, Any] | None) -> AIMessage:
    message = ((state or {}).get("messages") or [None])[-1]
    if not isinstance(message, AIMessage) or "__interrupt__" in (state or {}):
        raise HttpError(500, "the graph returned no answer", "server_error")
    return message


def trace_of(answer: AIMessage) -> dict[str, Any]:
    meta = answer.response_metadata
    keys = ("segments", "decisions", "tokens_used", "max_new_tokens", "usage_by_candidate")
    return {k: meta[k] for k in keys if k in meta}


def finish_of(answer: AIMessage, stop: tuple[str, ...]) -> tuple[str, str]:
    """The answer's text cut at the first stop string, and OpenAI's finish_reason."""
    text, cut = cut_at_stop(answer.text, stop)
    return text, "stop" if cut else FINISH.get(answer.response_metadata.get("finish_reason"), "stop")


def usage_of(answers: list[AIMessage]) -> dict[str, int]:
    """The prompt counted once, the completions of every choice."""
    prompt = (answers[0].usage_metadata or {}).get("input_tokens", 0) if answers else 0
    completion = sum((a.usage_metadata or {}).get("output_tokens", 0) for a in answers)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def api_error(err: BaseException) -> HttpError:
    if isinstance(err, HttpError):
        return err
    if isinstance(err, TimeoutError):
        return HttpError(504, "the answer took longer than the server's --request-timeout; it was stopped",
                         "server_error", code="timeout")
    if isinstance(err, ServerError):
        return HttpError(502, f"a checkpoint's server failed: {err}", "server_error")
    if isinstance(err, (InputError, SwitchgenError)):
        return HttpError(400, str(err))
    return HttpError(500, f"generation failed: {type(err).__name__}: {err}", "server_error")


class _Format:
    """How one route writes choices: chat messages and deltas, or completion texts."""

    def __init__(self, chat: bool) -> None:
        self.chat = chat
        self.prefix, self.object = ("chatcmpl", "chat.completion") if chat else ("cmpl", "text_completion")
        self.chunk_object = "chat.completion.chunk" if chat else "text_completion"

    def choice(self, i: int, text: str, finish: str, trace: dict[str, Any]) -> dict[str, Any]:
        body = {"message": {"role": "assistant", "content": text, "refusal": None}} if self.chat else {"text": text}
        return {"index": i, **body, "finish_reason": finish, "logprobs": None, "switchgen": trace}

    def chunk(self, head: dict[str, Any], i: int, text: str | None, finish: str | None = None, **extra: Any) -> bytes:
        if self.chat:
            delta = {"content": text} if text is not None else {}
            choice = {"index": i, "delta": delta, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": i, "text": text or "", "finish_reason": finish, "logprobs": None}
        return sse({**head, "object": self.chunk_object, "choices": [choice], **extra})

    def role(self, head: dict[str, Any], i: int) -> bytes | None:
        if not self.chat:
            return None
        return sse({**head, "object": self.chunk_object,
                    "choices": [{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None,
                                 "logprobs": None}]})


CHAT, COMPLETION = _Format(chat=True), _Format(chat=False)


# -- the app ------------------------------------------------------------------------------------


class ChatAPI:
    """The switch graph behind OpenAI's routes: a method per route."""

    def __init__(
        self, config: SwitchConfig, model_id: str, *, engine: LocalEngine | None = None,
        settings: ServiceSettings | None = None,
    ) -> None:
        self.settings = s = settings or ServiceSettings()
        self.config, self.model_id = config, model_id
        self.variants = GraphVariants(config, engine)
        self.variants.get()  # every checkpoint loads now, not at the first request
        self.context = context_limit(config, self.variants.engine)
        self.metrics = Metrics("switchgen_api")
        self.admission = Admission(s.max_concurrent_requests, queue=s.max_queued_requests,
                                   on_change=self.metrics.admission)
        self.http = HttpService(shape=openai_shape, name="api", api_key=s.api_key, payload_limit=s.payload_limit,
                                hosts=allowed_hosts(s.host, s.api_key, s.allowed_hosts), access_log=s.access_log)
        self.http.observers.append(self.metrics.observe)
        self.executor = ThreadPoolExecutor(max_workers=s.max_concurrent_requests, thread_name_prefix="switchgen-api")
        self.created = int(time.time())

    def app(self) -> ASGIApp:
        return self.http.app([
            ("/v1/chat/completions", self.chat_completions, ["POST"]),
            ("/v1/completions", self.completions, ["POST"]),
            ("/v1/models", self.models, ["GET"]),
            ("/v1/models/{model:path}", self.model, ["GET"]),
            ("/metrics", self.metrics.endpoint, ["GET"]),
            ("/health", self.health, ["GET"]),
        ])

    # -- routes ----------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": self.model_id, "running": self.admission.running,
                             "waiting": self.admission.waiting})

    def _model_card(self) -> dict[str, Any]:
        return {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "switchgen"}

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    async def model(self, request: Request) -> Response:
        if request.path_params["model"] != self.model_id:
            raise self._unknown_model(request.path_params["model"])
        return JSONResponse(self._model_card())

    async def chat_completions(self, request: Request) -> Response:
        return await self._complete(request, ChatRequest, CHAT)

    async def completions(self, request: Request) -> Response:
        return await self._complete(request, CompletionRequest, COMPLETION)

    # -- a request to graph runs -----------------------------------------------------------

    def _unknown_model(self, name: str) -> HttpError:
        return HttpError(404, f"the model {name!r} does not exist; this server serves {self.model_id!r}",
                         param="model", code="model_not_found")

    def plan(self, req: _Request) -> Run:
        """The graph runs a request asks for, or a 4xx before any work."""
        if req.model != self.model_id:
            raise self._unknown_model(req.model)
        budget, limit = req.budget, self.context or MAX_BUDGET
        if budget is not None and budget > limit:
            param = "max_completion_tokens" if getattr(req, "max_completion_tokens", None) else "max_tokens"
            shown = f"{budget}" if budget < 10**12 else f"a number of {len(str(budget))} digits"
            what = f"the model's context of {limit} tokens" if self.context else f"the largest budget, {limit} tokens"
            raise HttpError(400, f"{param} is {shown}, more than {what}", param=param, code="context_length_exceeded")
        context = run_context(req, self.config)
        try:
            graph = self.variants.get(tuple(req.stop or ()), sampling_of(req))
        except SwitchgenError as err:
            raise HttpError(400, str(err)) from None
        contexts = [{**context, "seed": seed} if seed is not None else (context or None)
                    for seed in choice_seeds(req, self.config)]
        return Run(graph, req.graph_input(), contexts, tuple(req.stop or ()))

    async def _complete(self, request: Request, model: type[_Request], fmt: _Format) -> Response:
        loop = asyncio.get_running_loop()
        req = await self.http.parsed(request, model)
        run = await self.http.off_loop(self.plan, req)  # a new stop set or sampling builds a graph
        slot = await self.admission.enter(req.n, loop.time() + self.settings.queue_timeout)
        deadline = loop.time() + self.settings.request_timeout
        head = {"id": f"{fmt.prefix}-{uuid.uuid4().hex}", "created": int(time.time()), "model": self.model_id,
                "system_fingerprint": "switchgen"}
        if req.stream:
            usage = bool(req.stream_options and req.stream_options.include_usage)
            events = self._stream(run, fmt, head, usage, deadline, slot)
            return Holding(StreamingResponse(events, media_type="text/event-stream"), slot)
        with slot:
            try:
                answers = await self._answers(run, deadline)
            except Exception as err:
                raise api_error(err) from None
        choices = []
        for i, answer in enumerate(answers):
            text, finish = finish_of(answer, run.stop)
            choices.append(fmt.choice(i, text, finish, trace_of(answer)))
        return JSONResponse({**head, "object": fmt.object, "choices": choices, "usage": usage_of(answers),
                             "switchgen": choices[0]["switchgen"]})

    def _works(self, run: Run, *, streamed: bool) -> list[Work]:
        """A graph run per choice: its token events emitted (when `streamed`: an answer sent whole
        leaves the custom stream unread, so the engine does not stream it), its final state returned."""
        modes = STREAM_MODES if streamed else ["values"]

        def work(context: dict[str, Any] | None) -> Work:
            def go(emit: Callable[[Any], None], cancelled: threading.Event) -> Any:
                final = None
                for mode, data in run.graph.stream(run.inputs, context=context, stream_mode=modes):
                    if cancelled.is_set():  # the client went away: closing the stream stops the graph
                        break
                    if mode == "values":
                        final = data
                    elif isinstance(data, dict) and data.get("text"):
                        emit(data)
                return final

            return go

        return [work(context) for context in run.contexts]

    def _answered(self, answer: AIMessage) -> None:
        decisions = answer.response_metadata.get("decisions") or []
        calls = sum(1 for d in decisions if d.get("digit_mass") is not None)  # the learned switcher was asked
        self.metrics.answer(answer.response_metadata.get("usage_by_candidate") or {}, calls)

    async def _answers(self, run: Run, deadline: float) -> list[AIMessage]:
        answers: dict[int, AIMessage] = {}
        async with aclosing(bridged(self.executor, self._works(run, streamed=False), deadline=deadline)) as events:
            async for i, kind, item in events:
                if kind == "done":
                    answers[i] = final_answer(item)
                    self._answered(answers[i])
        return [answers[i] for i in range(len(run.contexts))]

    async def _stream(
        self, run: Run, fmt: _Format, head: dict[str, Any], include_usage: bool, deadline: float, slot: Slot
    ) -> AsyncIterator[bytes]:
        n = len(run.contexts)
        holds = [StopHoldback(None, run.stop) for _ in range(n)]  # never shows what a stop string may claim
        answers: list[AIMessage] = []
        with slot:
            for i in range(n):
                if (role := fmt.role(head, i)) is not None:
                    yield role
            try:
                async with aclosing(bridged(self.executor, self._works(run, streamed=True), deadline=deadline)) as events:
                    async for i, kind, item in events:
                        for chunk in self._chunks(fmt, head, i, kind, item, holds[i], run.stop, answers):
                            yield chunk
            except Exception as err:  # the stream has started: the error is an event
                yield sse(openai_shape(api_error(err)))
                return
            if include_usage:
                yield sse({**head, "object": fmt.chunk_object, "choices": [], "usage": usage_of(answers)})
            yield sse("[DONE]")

    def _chunks(
        self, fmt: _Format, head: dict[str, Any], i: int, kind: str, item: Any, hold: StopHoldback,
        stop: tuple[str, ...], answers: list[AIMessage],
    ) -> list[bytes]:
        """The chunks one event of choice i gives: new visible text, or its end (finish_reason and trace)."""
        sent = len(hold.sent)
        if kind == "event":
            hold.add(item["text"])
            new = hold.sent[sent:]
            author = {"candidate": item["candidate"], "patch": item["patch"]}
            return [fmt.chunk(head, i, new, switchgen=author)] if new else []
        answer = final_answer(item)
        self._answered(answer)
        answers.append(answer)
        hold.finish(answer.text)
        text, finish = finish_of(answer, stop)
        rest = [fmt.chunk(head, i, hold.sent[sent:])] if len(hold.sent) > sent else []
        return [*rest, fmt.chunk(head, i, None if fmt.chat else "", finish, switchgen=trace_of(answer))]


def model_id_for(source: str | None, served_name: str | None = None) -> str:
    """The served model's name: `--served-model-name`, else the preset name or the YAML file's stem."""
    from pathlib import Path

    from switchgen.core.config import DEFAULT_PRESET

    if served_name:
        return served_name
    if not source:
        return DEFAULT_PRESET
    path = Path(source)
    return path.stem if path.suffix in (".yaml", ".yml") else source


def create_api_app(
    config: SwitchConfig, model_id: str, *, engine: LocalEngine | None = None, settings: ServiceSettings | None = None
) -> ASGIApp:
    """The ASGI app serving the switch graph of `config` (every checkpoint loaded on `engine` now)."""
    return ChatAPI(config, model_id, engine=engine, settings=settings).app()


class BackgroundAPI:
    """`switchgen api` on a daemon thread (tests, notebooks): `url` once started, `stop()` to end it."""

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> None:
        from switchgen.servers.serve.run import bind, quiet_server

        self.sock = bind(host, port)
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        self.server = quiet_server(app)
        self._thread = threading.Thread(target=self._run, name="switchgen-api", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self.server.serve(sockets=[self.sock]))
        finally:
            self.sock.close()

    def start(self, timeout: float = 30.0) -> BackgroundAPI:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                self.stop()
                raise RuntimeError("switchgen api did not start in time")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)

    def __enter__(self) -> BackgroundAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_api(app: ASGIApp, host: str, port: int, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve until Ctrl-C / SIGTERM (a clean exit, status 0); access lines go to stderr."""
    import contextlib
    import signal

    from switchgen.servers.serve.http import access_log_to_stderr
    from switchgen.servers.serve.run import bind, quiet_server

    sock = bind(host, port)  # a taken port is a clear error
    url = f"http://{host}:{sock.getsockname()[1]}"
    server = quiet_server(app)
    access_log_to_stderr()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
        task = asyncio.ensure_future(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.02)
        if on_ready is not None and server.started:
            on_ready(url)
        await task

    try:
        asyncio.run(main())
    finally:
        sock.close()
