"""Blocking model work in a thread pool, its events delivered to the event loop as they happen.

A graph run (`switchgen api`) or a generation (`switchgen serve`) blocks for seconds; the event
loop must keep serving other requests meanwhile. Each piece of work runs in the pool with an
`emit` callback and a `cancelled` event: closing the iterator (the client went away, or the
request's deadline passed) sets `cancelled`, and the work stops at its next token or event.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor
from typing import Any

from switchgen.servers.engine.batching import Cancelled

Emit = Callable[[Any], None]
Work = Callable[[Emit, threading.Event], Any]


async def bridged(
    executor: Executor, works: Sequence[Work], *, deadline: float | None = None
) -> AsyncIterator[tuple[int, str, Any]]:
    """Run each of `works` in `executor`; yield (i, "event", item) as work i emits, then (i, "done", result).

    A work's exception is raised here; past `deadline` (the loop's time) TimeoutError is.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, str, Any]] = asyncio.Queue()
    cancelled = threading.Event()

    def put(item: tuple[int, str, Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: the server is gone
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def run(i: int, work: Work) -> None:
        try:
            put((i, "done", work(lambda event: put((i, "event", event)), cancelled)))
        except Cancelled:
            put((i, "done", None))  # stopped because nobody listens any more
        except Exception as err:  # passed on to the request
            put((i, "error", err))

    for i, work in enumerate(works):
        loop.run_in_executor(executor, run, i, work)
    left = len(works)
    try:
        while left:
            async with asyncio.timeout_at(deadline):
                i, kind, item = await queue.get()
            if kind == "error":
                raise item
            left -= kind == "done"
            yield i, kind, item
    finally:
        cancelled.set()
