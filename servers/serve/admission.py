"""How many requests run at once and how many may wait, counted when a request is admitted.

A request takes its slots before its response starts (a stream holds them until its last event)
so the limit holds for streams too. Past the limit a request waits in a bounded queue, first come
first served; a full queue is a 429 and a wait past its deadline (--queue-timeout) a 503, both
with `Retry-After`.
`switchgen serve` keeps TGI's behaviour (no queue: 429 at once); `switchgen api` queues.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from switchgen.servers.serve.http import HttpError

RETRY_AFTER_S = 1


class Slot:
    """Slots held by one request; `release` is idempotent (a stream and its response both call it)."""

    def __init__(self, admission: Admission, n: int) -> None:
        self.admission, self.n = admission, n
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self.admission._release(self.n)

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Admission:
    """`limit` slots; up to `queue` requests wait for theirs (until their deadline)."""

    def __init__(
        self, limit: int, *, queue: int = 0, kind: str = "rate_limit_error", busy: str | None = None,
        on_change: Callable[[int, int], None] | None = None,
    ) -> None:
        self.limit, self.queue, self.kind = limit, queue, kind
        self.busy = busy  # the 429's message (TGI: "Model is overloaded"); default: says the limit
        self.running = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()
        self.on_change = on_change  # (running, waiting), for gauges

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def enter(self, n: int = 1, deadline: float | None = None) -> Slot:
        """`n` slots, now or after a wait in the queue; `deadline` is the event loop's time."""
        if n > self.limit:
            raise HttpError(400, f"the request needs {n} slots and the server runs {self.limit} at once", param="n")
        if not self._waiting and self.running + n <= self.limit:
            self.running += n
            self._changed()
            return Slot(self, n)
        if len(self._waiting) >= self.queue:
            message = self.busy or (f"the server is at its limit of {self.limit} concurrent requests"
                                    f"{f' and {self.queue} waiting' if self.queue else ''}; retry")
            raise HttpError(429, message, self.kind, code="overloaded", headers=_retry())
        return await self._wait(n, deadline)

    async def _wait(self, n: int, deadline: float | None) -> Slot:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, future)
        self._waiting.append(entry)
        self._changed()
        try:
            async with asyncio.timeout_at(deadline):
                await future
        except BaseException as err:  # a timeout, or the client left while waiting
            granted = future.done() and not future.cancelled()
            if entry in self._waiting:
                self._waiting.remove(entry)
                self._changed()
            if granted and isinstance(err, TimeoutError):
                return Slot(self, n)  # granted as the deadline passed
            if granted:
                self._release(n)
            if isinstance(err, TimeoutError):
                raise HttpError(503, "no slot came free within the server's --queue-timeout; retry", self.kind,
                                code="queue_timeout", headers=_retry()) from None
            raise
        return Slot(self, n)

    def _release(self, n: int) -> None:
        self.running -= n
        while self._waiting and self.running + self._waiting[0][0] <= self.limit:
            need, future = self._waiting.popleft()
            if future.done():
                continue
            self.running += need
            future.set_result(None)
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self.running, len(self._waiting))


def _retry() -> dict[str, str]:
    return {"Retry-After": str(RETRY_AFTER_S)}


class Holding(Response):
    """A response that releases its request's slots when it is done, however it ends."""

    def __init__(self, response: Response, slot: Slot) -> None:
        self.response, self.slot = response, slot
        self.status_code = response.status_code
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.response(scope, receive, send)
        finally:
            self.slot.release()
