"""The HTTP ground under both servers: `switchgen serve` (TGI's protocol) and `switchgen api` (OpenAI's).

Both are Starlette apps on uvicorn that read a JSON body, check a bearer key, answer in their
protocol's error shape and stream server-sent events. Kept in one place so a fix lands in both:
a body is read bounded (413 before a huge body is buffered), a body that is not JSON or nests too
deep is a 4xx in the app's shape, a client that leaves mid-body is no traceback, loopback servers
without a key check `Host` and `Origin` (DNS rebinding, cross-origin posts from a browser), every
response carries an `X-Request-Id`, and an access log line and the metrics hook see every request.
Admission (servers/serve/admission.py) and the thread bridge (servers/serve/bridge.py) complete it.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from switchgen.core.errors import describe

ACCESS_LOG = logging.getLogger("switchgen.http.access")
ERROR_LOG = logging.getLogger("switchgen.http")
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


class HttpError(Exception):
    """A request refused: its status, a one-line message, and what the app's error shape needs."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.kind, self.param, self.code = status, kind, param, code
        self.headers = headers or {}


class ClientGone(Exception):
    """The client closed the connection before its body arrived: nobody is left to answer."""


ErrorShape = Callable[[HttpError], dict[str, Any]]


def openai_shape(err: HttpError) -> dict[str, Any]:
    """OpenAI's error body."""
    return {"error": {"message": str(err), "type": err.kind, "param": err.param, "code": err.code}}


def tgi_shape(err: HttpError) -> dict[str, Any]:
    """TGI's error body."""
    return {"error": str(err), "error_type": err.kind}


def sse(payload: dict[str, Any] | str, *, space: bool = True) -> bytes:
    """One server-sent event (`data: ...`; TGI writes `data:` without the space)."""
    text = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data:{' ' if space else ''}{text}\n\n".encode()


# -- the body ----------------------------------------------------------------------------------


def too_large(limit: int, flag: str = "--payload-limit") -> HttpError:
    return HttpError(413, f"Payload too large: the body exceeds {limit} bytes (the server's {flag})", "payload_limit")


async def read_body(request: Request, limit: int, flag: str = "--payload-limit") -> bytes:
    """The request body, refused (413) as soon as it exceeds `limit` bytes: a huge body is never buffered whole."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(limit, flag)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large(limit, flag)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientGone from None
    return b"".join(chunks)


def parse_body(raw: bytes, model: type[BaseModel], status: int = 400, kind: str = "invalid_request_error") -> Any:
    """`raw` as JSON validated into `model`; anything else is a one-line `status` error naming the field."""
    try:
        data = json.loads(raw)
    except RecursionError:
        raise HttpError(status, "the body is not valid JSON: nested too deeply", kind) from None
    except ValueError as err:  # also a number of more than 4300 digits
        raise HttpError(status, f"the body is not valid JSON: {err}", kind) from None
    try:
        return model.model_validate(data)
    except RecursionError:
        raise HttpError(status, "the body nests too deeply", kind) from None
    except ValidationError as err:
        errors = err.errors()
        loc = ".".join(str(p) for p in errors[0]["loc"]) if errors else ""
        raise HttpError(status, describe(err, root="body"), kind, param=loc or None) from None


# -- who may ask -------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(host: str, api_key: str | None, given: Sequence[str] | None = None) -> frozenset[str] | None:
    """The host names `Host` and `Origin` may carry (None: any).

    `given` (a flag) wins; `*` allows any. Otherwise a loopback server without a key answers only
    its loopback names: a web page cannot reach it through DNS rebinding or a cross-origin post.
    A server with a key, or on a public address, is for other machines: the key guards it.
    """
    if given:
        names = {h.strip().lower() for h in given if h.strip()}
        return None if "*" in names else frozenset(names)
    if api_key or not is_loopback(host):
        return None
    return frozenset(LOOPBACK_NAMES | {host.lower().strip("[]")})


def _hostname(authority: str) -> str:
    try:
        return (urlsplit(f"//{authority}").hostname or "").lower()
    except ValueError:
        return ""


def host_refusal(headers: Headers, allowed: frozenset[str] | None) -> HttpError | None:
    """Why `Host` or `Origin` is not allowed here (None: they are)."""
    if allowed is None:
        return None
    host = _hostname(headers.get("host", ""))
    if host not in allowed:
        return HttpError(403, f"Host {headers.get('host', '')!r} is not allowed here (the server's --allowed-hosts)",
                         "forbidden", code="host_not_allowed")
    origin = headers.get("origin")
    if origin is not None and _hostname(origin.partition("://")[2]) not in allowed:
        return HttpError(403, f"Origin {origin!r} is not allowed here (the server's --allowed-hosts)",
                         "forbidden", code="origin_not_allowed")
    return None


def request_id(headers: Headers) -> str:
    """The client's X-Request-Id when it is a plain token, else a fresh one."""
    given = headers.get("x-request-id", "")
    return given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def access_log_to_stderr() -> None:
    """Access lines on stderr, for the CLI's servers (an application embedding an app configures logging itself)."""
    if not ACCESS_LOG.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        ACCESS_LOG.addHandler(handler)
        ACCESS_LOG.setLevel(logging.INFO)


# -- the service -------------------------------------------------------------------------------

Endpoint = Callable[[Request], Awaitable[Response]]
Observer = Callable[[str, int, float], None]  # route, status, seconds


class HttpService:
    """What both servers share: their routes wrapped with the error shape, the gate, and the body reader."""

    def __init__(
        self,
        *,
        shape: ErrorShape,
        name: str,
        api_key: str | None = None,
        hosts: frozenset[str] | None = None,
        payload_limit: int,
        bad_request: tuple[int, str] = (400, "invalid_request_error"),
        auth_kind: str = "authentication_error",
        access_log: bool = True,
        validation_workers: int = 2,
    ) -> None:
        self.shape, self.name, self.api_key, self.hosts = shape, name, api_key, hosts
        self.payload_limit = payload_limit
        self.bad_request = bad_request
        self.auth_kind = auth_kind
        self.access_log = access_log
        self.observers: list[Observer] = []
        # Parsing (up to the payload limit) runs here, off the event loop that every server shares.
        self.validation = ThreadPoolExecutor(max_workers=validation_workers, thread_name_prefix=f"{name}-validate")

    def app(self, routes: Iterable[tuple[str, Endpoint, list[str]]], *, open_paths: Iterable[str] = ("/health",)) -> Starlette:
        """A Starlette app of `routes` (path, endpoint, methods), each behind the gate and the error shape."""
        table = [Route(path, self._shaped(fn), methods=methods) for path, fn, methods in routes]
        app = Starlette(routes=table, exception_handlers={404: self._not_found, 405: self._not_allowed})
        return _Gate(app, self, frozenset(open_paths))  # type: ignore[return-value]

    def error(self, err: HttpError, *, stream: bool = False) -> Response:
        """`err` in the app's shape; as one server-sent event on a streaming route (TGI's way)."""
        body = self.shape(err)
        if stream:
            return Response(sse(body, space=False), status_code=err.status, media_type="text/event-stream",
                            headers=err.headers)
        return JSONResponse(body, status_code=err.status, headers=err.headers)

    async def parsed(self, request: Request, model: type[BaseModel]) -> Any:
        """The body (at most the payload limit) validated into `model`, off the event loop."""
        raw = await read_body(request, self.payload_limit)
        status, kind = self.bad_request
        return await self.off_loop(parse_body, raw, model, status, kind)

    async def off_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.validation, fn, *args)

    def _shaped(self, endpoint: Endpoint) -> Endpoint:
        async def shaped(request: Request) -> Response:
            try:
                return await endpoint(request)
            except HttpError as err:
                return self.error(err)
            except ClientGone:
                return _NOTHING  # nobody to answer: the access log shows 499 (nginx's "client closed request")
            except Exception as err:  # a bug: one line for the client, the traceback for the operator
                ERROR_LOG.exception("%s %s failed (request %s)", request.method, request.url.path,
                                    request.scope.get("state", {}).get("request_id"))
                return self.error(HttpError(500, f"internal error: {type(err).__name__}", "server_error"))

        return shaped

    async def _not_found(self, request: Request, exc: Exception) -> Response:
        return self.error(HttpError(404, f"{request.method} {request.url.path} is not served here", "not_found",
                                    code="not_found"))

    async def _not_allowed(self, request: Request, exc: Exception) -> Response:
        return self.error(HttpError(405, f"{request.method} is not allowed on {request.url.path}", "method_not_allowed"))

    def refusal(self, scope: Scope, open_paths: frozenset[str]) -> HttpError | None:
        """Why a request may not reach a route at all: its Host/Origin, or a missing or wrong key."""
        headers = Headers(scope=scope)
        refused = host_refusal(headers, self.hosts)
        if refused is not None or not self.api_key or scope["path"] in open_paths:
            return refused
        given = headers.get("authorization", "").encode()
        if hmac.compare_digest(given, f"Bearer {self.api_key}".encode()):
            return None
        return HttpError(401, "a valid API key is required: send Authorization: Bearer <key>", self.auth_kind,
                         code="invalid_api_key")


class _Nothing(Response):
    """No response at all: the client has gone (uvicorn logs nothing for a disconnected client)."""

    def __init__(self) -> None:
        self.status_code = 499
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        return None


_NOTHING = _Nothing()


class _Gate:
    """ASGI middleware: Host/Origin and key checks, X-Request-Id, the access log, the observers."""

    def __init__(self, app: ASGIApp, service: HttpService, open_paths: frozenset[str]) -> None:
        self.app, self.service, self.open_paths = app, service, open_paths
        # A request refused before routing (Host/Origin, key) still counts under its route's name.
        self.paths = frozenset(getattr(route, "path", "") for route in getattr(app, "routes", ()))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = request_id(Headers(scope=scope))
        scope.setdefault("state", {})["request_id"] = rid
        started, status = time.perf_counter(), 0

        async def tagged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["x-request-id"] = rid
            await send(message)

        refused = self.service.refusal(scope, self.open_paths)
        try:
            if refused is not None:
                await self.service.error(refused)(scope, receive, tagged)
            else:
                await self.app(scope, receive, tagged)
        finally:
            self._done(scope, status or 499, time.perf_counter() - started, rid)

    def _done(self, scope: Scope, status: int, seconds: float, rid: str) -> None:
        route = getattr(scope.get("route"), "path", None) or (scope["path"] if scope["path"] in self.paths else "other")
        for observe in self.service.observers:
            observe(route, status, seconds)
        if self.service.access_log and ACCESS_LOG.isEnabledFor(logging.INFO):
            client = scope.get("client") or ("-", 0)
            ACCESS_LOG.info('%s:%s "%s %s" %d %.3fs id=%s', client[0], client[1], scope["method"], scope["path"],
                            status, seconds, rid)
