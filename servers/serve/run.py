"""Starting `switchgen serve`: load each planned checkpoint once and serve it on its own port."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp

from switchgen.core.errors import ConfigError
from switchgen.servers.engine.local import LocalEngine
from switchgen.servers.serve.app import ServedModel, create_app
from switchgen.servers.serve.http import access_log_to_stderr
from switchgen.servers.serve.http import allowed_hosts as allowed_hosts_for
from switchgen.servers.serve.limits import Limits
from switchgen.servers.serve.plan import PlannedServer
from switchgen.servers.serve.steps import TokenServer


@dataclass
class RunningServer:
    plan: PlannedServer
    served: ServedModel
    sock: socket.socket


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, bound now so a taken port is a clear error before any model loads."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"port {port} is out of range 0..65535; choose another --port")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except (OSError, OverflowError) as err:
        sock.close()
        why = getattr(err, "strerror", None) or str(err)
        raise ConfigError(f"cannot listen on {host}:{port} ({why}); choose another --port or --host") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


def prepare(
    plan: list[PlannedServer],
    host: str,
    *,
    max_top_n_tokens: int,
    max_concurrent_requests: int = 128,
    engine: LocalEngine | None = None,
    max_input_tokens: int | None = None,
    max_total_tokens: int | None = None,
    payload_limit: int | None = None,
    api_key: str | None = None,
    allowed_hosts: Sequence[str] | None = None,
    access_log: bool = False,
) -> list[RunningServer]:
    """Bind every port (port 0: the OS picks; the plan is updated), then load every checkpoint.

    The limits (TGI's flags, servers/serve/limits.py) default to TGI's for each model's context.
    `allowed_hosts` (the names Host/Origin may carry) defaults as servers/serve/http.py's allowed_hosts says.
    """
    hosts = allowed_hosts_for(host, api_key, allowed_hosts)
    socks: list[socket.socket] = []
    try:
        for server in plan:
            sock = bind(host, server.port)
            server.port = sock.getsockname()[1]
            socks.append(sock)
        engine = engine or LocalEngine()
        running = []
        for server, sock in zip(plan, socks, strict=True):
            base = engine.backend(server.model, device=server.device, dtype=server.dtype)
            adapters = {
                a: engine.backend(server.model, device=server.device, dtype=server.dtype, adapter=a) for a in server.adapters
            }
            try:
                limits = Limits.for_context(
                    base.max_total_tokens,
                    max_input_tokens=max_input_tokens,
                    max_total_tokens=max_total_tokens,
                    payload_limit=payload_limit,
                )
            except ValueError as err:
                raise ConfigError(f"{server.model}: {err}") from None
            served = ServedModel(
                server.model,
                TokenServer(base, adapters),
                max_top_n_tokens=max_top_n_tokens,
                max_concurrent_requests=max_concurrent_requests,
                limits=limits,
                api_key=api_key,
                allowed_hosts=hosts,
                access_log=access_log,
            )
            running.append(RunningServer(server, served, sock))
        return running
    except BaseException:
        for sock in socks:
            sock.close()
        raise


def quiet_server(app: ASGIApp) -> Any:
    """A uvicorn server for `app` that leaves the process's signal handlers alone (one handler stops them
    all, see _serve; `switchgen api` runs one on a thread) and logs no access lines of its own (the
    HTTP base writes them, with each request's id)."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    config = {"log_level": "warning", "access_log": False, "lifespan": "off", "timeout_graceful_shutdown": 2}
    return Server(uvicorn.Config(app, **config))


def _uvicorn_servers(running: list[RunningServer]) -> list[Any]:
    return [quiet_server(create_app(r.served)) for r in running]


async def _serve(
    servers: list[Any], running: list[RunningServer], on_ready: Callable[[], None] | None, *, signals: bool
) -> None:
    loop = asyncio.get_running_loop()

    def stop() -> None:
        for srv in servers:
            srv.should_exit = True

    if signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop)

    async def ready() -> None:
        while not all(srv.started for srv in servers):
            if any(srv.should_exit for srv in servers):
                return
            await asyncio.sleep(0.02)
        if on_ready is not None:
            on_ready()

    waiter = asyncio.ensure_future(ready())
    await asyncio.gather(*(srv.serve(sockets=[r.sock]) for srv, r in zip(servers, running, strict=True)))
    waiter.cancel()


def serve_forever(running: list[RunningServer], *, on_ready: Callable[[], None] | None = None) -> None:
    """Serve until SIGINT/SIGTERM; `on_ready` runs once every server accepts connections."""
    if any(r.served.access_log for r in running):
        access_log_to_stderr()
    try:
        asyncio.run(_serve(_uvicorn_servers(running), running, on_ready, signals=True))
    finally:
        for r in running:
            r.sock.close()
        sys.stdout.flush()


class BackgroundServers:
    """The servers on a daemon thread (tests, notebooks): `urls` once started, `stop()` to end them."""

    def __init__(self, running: list[RunningServer]) -> None:
        self.running = running
        self._servers = _uvicorn_servers(running)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="switchgen-serve", daemon=True)

    @property
    def urls(self) -> dict[str, str]:
        """Server URL by user: candidate names and "switcher"."""
        return {user: r.plan.url() for r in self.running for user in r.plan.users}

    def start(self, timeout: float = 60.0) -> BackgroundServers:
        if self._thread.is_alive():
            return self
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise RuntimeError("switchgen serve: the servers did not start in time")
        return self

    def stop(self) -> None:
        for srv in self._servers:
            srv.should_exit = True
        self._thread.join(timeout=30)

    def _run(self) -> None:
        try:
            asyncio.run(_serve(self._servers, self.running, self._ready.set, signals=False))
        finally:
            for r in self.running:
                r.sock.close()

    def __enter__(self) -> BackgroundServers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
