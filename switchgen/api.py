"""`switchgen api`: the whole switch graph behind OpenAI's chat completions API.

    POST /v1/chat/completions (JSON, or server-sent events with "stream": true), GET /v1/models, GET /health

Any OpenAI client (the `openai` SDK, LangChain's ChatOpenAI, OpenWebUI) gets an answer written by
Switch Generation. `model` names the served configuration (the preset name, or the YAML file's
stem). The answer's trace is in an extra field, `switchgen`: segments and decisions in a
response; in a stream each chunk names the candidate writing it (`switchgen.candidate`,
`switchgen.patch`) and the chunk with the finish_reason holds the whole trace. Per-request run
settings (nodes/context.py: strategy, candidate, patch_size, seed, ...) go in the request's
`switchgen` object (`extra_body={"switchgen": {...}}` in the SDK); `max_tokens` is the budget.

Each request runs the graph in a worker thread; the in-process engine batches the concurrent
requests' forward passes. Errors have OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
Generator sampling (temperature, top_p) is the configuration's: those request fields are accepted
and not applied, as the candidates' sampling is part of the method.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from langchain_core.messages import AIMessage
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from switchgen.core.errors import InputError, ServerError, SwitchgenError, describe

MAX_BODY_BYTES = 4 * 1024 * 1024
FINISH = {"eos": "stop", "stop": "stop", "length": "length", "budget": "length", None: "stop"}
STREAM_MODES = ["custom", "values"]


class ApiError(Exception):
    """A request refused with OpenAI's error shape."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", *, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.param, self.code = status, kind, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}}


# -- the request ---------------------------------------------------------------------------


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ChatRequest(BaseModel):
    """OpenAI's chat completion request; what Switch Generation cannot do is refused, not ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    seed: int | None = None
    n: int = Field(1, ge=1, le=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)  # accepted, not applied (see the module docstring)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    switchgen: dict[str, Any] | None = None  # run settings: nodes/context.py's fields

    @field_validator("stop")
    @classmethod
    def _no_stop(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if stop:
            raise ValueError("stop strings are set per candidate in the configuration (candidates[].stop)")
        return stop

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

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("logprobs are not returned: an answer mixes several checkpoints' tokens")
        return value

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, value: float | None, info: Any) -> float | None:
        if value:
            raise ValueError(f"{info.field_name} is not supported")
        return value


def _parse(raw: bytes) -> ChatRequest:
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
    try:
        data = json.loads(raw)
    except ValueError as err:
        raise ApiError(400, f"the body is not valid JSON: {err}") from None
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]["loc"] if err.errors() else ()
        raise ApiError(400, describe(err, root="body"), param=".".join(str(p) for p in first) or None) from None


def graph_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """OpenAI messages as LangChain message dicts (the graph's `messages` input)."""
    out = []
    for m in messages:
        data = m.model_dump(exclude_none=True)
        if data["role"] == "developer":
            data["role"] = "system"
        data.setdefault("content", "")
        out.append(data)
    return out


def run_input(config: Any, req: ChatRequest) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The graph input and run context for a request."""
    context = dict(req.switchgen or {})
    if context.get("review"):
        raise ApiError(400, "review mode pauses for a reviewer: use the graph (langgraph dev), not this API",
                       param="switchgen.review")
    budget = req.max_completion_tokens or req.max_tokens
    if budget is not None:
        context["max_new_tokens"] = budget
        context["patch_size"] = min(context.get("patch_size") or config.patch_size, budget)
    if req.seed is not None:
        context["seed"] = req.seed
    return {"messages": graph_messages(req.messages)}, context or None


# -- responses -----------------------------------------------------------------------------


def trace_of(answer: AIMessage) -> dict[str, Any]:
    meta = answer.response_metadata
    keys = ("segments", "decisions", "tokens_used", "max_new_tokens", "usage_by_candidate")
    return {k: meta[k] for k in keys if k in meta}


def usage_of(answer: AIMessage) -> dict[str, int]:
    usage = answer.usage_metadata or {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
    return {
        "prompt_tokens": usage["input_tokens"],
        "completion_tokens": usage["output_tokens"],
        "total_tokens": usage["total_tokens"],
    }


def final_answer(state: dict[str, Any] | None) -> AIMessage:
    message = ((state or {}).get("messages") or [None])[-1]
    if not isinstance(message, AIMessage) or "__interrupt__" in (state or {}):
        raise ApiError(500, "the graph returned no answer", "server_error")
    return message


def _sse(payload: dict[str, Any] | str) -> bytes:
    text = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {text}\n\n".encode()


def _as_api_error(err: BaseException) -> ApiError:
    if isinstance(err, ApiError):
        return err
    if isinstance(err, InputError):
        return ApiError(400, str(err))
    if isinstance(err, ServerError):
        return ApiError(502, f"a checkpoint's server failed: {err}", "server_error")
    if isinstance(err, SwitchgenError):
        return ApiError(400, str(err))
    return ApiError(500, f"generation failed: {type(err).__name__}: {err}", "server_error")


class _Worker:
    """A graph run in a worker thread; its events reach the event loop through a queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()

    def put(self, item: tuple[str, Any]) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def run(self, events: Callable[[], Any]) -> None:
        try:
            for event in events():
                if self.cancelled.is_set():  # the client went away: closing the stream stops the graph
                    break
                self.put(("event", event))
            self.put(("end", None))
        except Exception as err:  # passed on to the request
            self.put(("error", err))


class ChatAPI:
    """The switch graph behind OpenAI's chat completions routes: a method per route."""

    def __init__(
        self, graph: Any, model_id: str, *, max_concurrent_requests: int = 32, api_key: str | None = None
    ) -> None:
        self.graph = graph
        self.api_key = api_key
        self.config = graph.switch_config
        self.model_id = model_id
        self.max_concurrent = max_concurrent_requests
        self.executor = ThreadPoolExecutor(max_workers=max_concurrent_requests, thread_name_prefix="switchgen-api")
        self.in_flight = 0
        self.created = int(time.time())

    def starlette(self) -> Starlette:
        routes = [
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/models/{model:path}", self.model, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
        ]
        if self.api_key:
            routes = [r if r.path == "/health" else Route(r.path, self._guard(r.endpoint), methods=r.methods)
                      for r in routes]
        return Starlette(routes=routes, exception_handlers={404: self.not_found, 405: self.method_not_allowed})

    def _guard(self, route: Callable[[Request], Any]) -> Callable[[Request], Any]:
        """`route`, answered only with the server's API key as a bearer token (OpenAI's 401 otherwise)."""
        import hmac

        expected = f"Bearer {self.api_key}".encode()

        async def guarded(request: Request) -> Response:
            if not hmac.compare_digest(request.headers.get("authorization", "").encode(), expected):
                return self._error(ApiError(401, "a valid API key is required: send Authorization: Bearer <key>",
                                            "authentication_error", code="invalid_api_key"))
            return await route(request)

        return guarded

    # -- routes ----------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": self.model_id, "in_flight": self.in_flight})

    def _model_card(self) -> dict[str, Any]:
        return {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "switchgen"}

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    async def model(self, request: Request) -> Response:
        if request.path_params["model"] != self.model_id:
            return self._error(self._unknown_model(request.path_params["model"]))
        return JSONResponse(self._model_card())

    async def chat_completions(self, request: Request) -> Response:
        try:
            req = _parse(await request.body())
            if req.model != self.model_id:
                raise self._unknown_model(req.model)
            inputs, context = run_input(self.config, req)
            if self.in_flight >= self.max_concurrent:
                raise ApiError(429, f"the server is at its limit of {self.max_concurrent} concurrent requests; retry",
                               "rate_limit_error", code="overloaded")
        except ApiError as err:
            return self._error(err)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": self.model_id,
                "system_fingerprint": "switchgen"}

        def events() -> Any:
            return self.graph.stream(inputs, context=context, stream_mode=STREAM_MODES)

        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(self._stream(events, head, include_usage), media_type="text/event-stream")
        final = None
        try:
            async for mode, data in self._events(events):
                if mode == "values":
                    final = data
            answer = final_answer(final)
        except Exception as err:
            return self._error(_as_api_error(err))
        return JSONResponse({
            **head,
            "object": "chat.completion",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": answer.text, "refusal": None},
                "finish_reason": FINISH.get(answer.response_metadata.get("finish_reason"), "stop"),
                "logprobs": None,
            }],
            "usage": usage_of(answer),
            "switchgen": trace_of(answer),
        })

    async def not_found(self, request: Request, exc: Exception) -> Response:
        return self._error(ApiError(404, f"{request.method} {request.url.path} is not served here", code="not_found"))

    async def method_not_allowed(self, request: Request, exc: Exception) -> Response:
        return self._error(ApiError(405, f"{request.method} is not allowed on {request.url.path}"))

    # -- running the graph -----------------------------------------------------------------

    def _unknown_model(self, name: str) -> ApiError:
        return ApiError(404, f"the model {name!r} does not exist; this server serves {self.model_id!r}",
                        param="model", code="model_not_found")

    @staticmethod
    def _error(err: ApiError) -> Response:
        return JSONResponse(err.body(), status_code=err.status)

    async def _events(self, events: Callable[[], Any]) -> AsyncIterator[tuple[str, Any]]:
        """The graph's stream events, run in the pool; a worker error is raised here."""
        worker = _Worker(asyncio.get_running_loop())
        self.in_flight += 1
        future = asyncio.get_running_loop().run_in_executor(self.executor, worker.run, events)
        try:
            while True:
                kind, item = await worker.queue.get()
                if kind == "event":
                    yield item
                elif kind == "error":
                    raise item
                else:
                    return
        finally:
            worker.cancelled.set()
            self.in_flight -= 1
            del future

    async def _stream(self, events: Callable[[], Any], head: dict[str, Any], include_usage: bool) -> AsyncIterator[bytes]:
        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            return _sse({**head, "object": "chat.completion.chunk", "choices": [choice], **extra})

        yield chunk({"role": "assistant", "content": ""})
        final = None
        try:
            async for mode, data in self._events(events):
                if mode == "values":
                    final = data
                elif isinstance(data, dict) and data.get("text"):
                    yield chunk({"content": data["text"]},
                                switchgen={"candidate": data["candidate"], "patch": data["patch"]})
            answer = final_answer(final)
        except Exception as err:  # the stream has started: the error is an event
            yield _sse(_as_api_error(err).body())
            return
        finish = FINISH.get(answer.response_metadata.get("finish_reason"), "stop")
        yield chunk({}, finish, switchgen=trace_of(answer))
        if include_usage:
            yield _sse({**head, "object": "chat.completion.chunk", "choices": [], "usage": usage_of(answer)})
        yield _sse("[DONE]")


def model_id_for(source: str | None) -> str:
    """The served model's name: the preset name, or the YAML file's stem."""
    from pathlib import Path

    from switchgen.core.config import DEFAULT_PRESET

    if not source:
        return DEFAULT_PRESET
    path = Path(source)
    return path.stem if path.suffix in (".yaml", ".yml") else source


def create_api_app(
    graph: Any, model_id: str, *, max_concurrent_requests: int = 32, api_key: str | None = None
) -> Starlette:
    """The ASGI app serving a compiled switch graph (from switchgen.graph.build_graph)."""
    return ChatAPI(graph, model_id, max_concurrent_requests=max_concurrent_requests, api_key=api_key).starlette()


def _uvicorn_config(app: Starlette) -> Any:
    import uvicorn

    return uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=2)


def _quiet_server(app: Starlette) -> Any:
    """A uvicorn server that leaves the process's signal handlers alone (it runs on a thread)."""
    import contextlib

    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):  # type: ignore[override]
            yield

    return Server(_uvicorn_config(app))


class BackgroundAPI:
    """`switchgen api` on a daemon thread (tests, notebooks): `url` once started, `stop()` to end it."""

    def __init__(self, app: Starlette, host: str = "127.0.0.1", port: int = 0) -> None:
        from switchgen.servers.serve.run import bind

        self.sock = bind(host, port)
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        self.server = _quiet_server(app)
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


def serve_api(app: Starlette, host: str, port: int, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve until Ctrl-C / SIGTERM (a clean exit, status 0)."""
    import contextlib
    import signal

    from switchgen.servers.serve.run import bind

    sock = bind(host, port)  # a taken port is a clear error
    url = f"http://{host}:{sock.getsockname()[1]}"
    server = _quiet_server(app)

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
