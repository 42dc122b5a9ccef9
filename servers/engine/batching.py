"""Continuous batching for the in-process engine: one decode thread per device.

Requests for the checkpoints on a device, from concurrently running graphs, are decoded together.
One worker thread per device runs every forward pass on it. Each round it admits the requests that
arrived (the ones of one checkpoint group in one batched prefill, each after its own cached prefix:
a switcher's scores for several queries are one pass), then steps every running batch once. Same-
shaped Llama checkpoints share stacked weights and fixed buffers (fused.py, fused_batch.py: on CUDA
one checkpoint per batch, its step a captured graph); others keep transformers' forward (hf_batch.py).
Tokens are sampled for the whole batch on the device with one host transfer per step (sampling.py).
A finished sequence's cache goes back to the prefix-cache pool, so its next patch starts warm. One
thread per device (not per checkpoint) keeps the checkpoints from contending for the device, and for
Python's GIL.
"""

from __future__ import annotations

import atexit
import queue
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable

import torch

from switchgen.servers.base import TextCallback
from switchgen.servers.engine import admission
from switchgen.servers.engine.fused import StackedModels, stack_key
from switchgen.servers.engine.fused_batch import FusedBatch
from switchgen.servers.engine.hf_batch import HFBatch
from switchgen.servers.engine.requests import Cancelled, EngineBackend, Request, TokenDetails, to_patch
from switchgen.servers.engine.sampling import FAILED, NaNLogits, next_tokens
from switchgen.servers.stops import cut_at_stop, streamable

STREAM_INTERVAL = 0.02  # seconds between streamed text events of one request
# A forward pass with fewer multiply-adds than this runs on one CPU thread: splitting tiny
# operations over torch's intra-op pool costs more than it saves, and on a busy machine every
# operation then waits for the slowest pool thread to be scheduled (run times varied 20x).
ONE_THREAD_WORK = 1 << 26


class WorkerDied(RuntimeError):
    """The device's decode thread stopped on an error no request caused; the server reports it on /health."""


def _room_to_stack(model: torch.nn.Module, group: tuple[StackedModels, FusedBatch] | None) -> bool:
    """Stacking copies every member's weights once before the old copies are freed: on a GPU,
    only when that copy fits (else the model keeps the transformers path)."""
    device = next(model.parameters()).device
    if device.type != "cuda":
        return True
    members = [model, *(group[0].models if group is not None else [])]
    need = sum(p.numel() * p.element_size() for m in members for p in m.parameters())
    free, _ = torch.cuda.mem_get_info(device)
    return free > 1.1 * need


_WORKERS: weakref.WeakSet[DecodeWorker] = weakref.WeakSet()


@atexit.register
def _stop_workers() -> None:
    # A thread still parked in torch at interpreter exit aborts the process ("terminate called").
    for worker in list(_WORKERS):
        worker.close()


class DecodeWorker:
    """The thread that runs every forward pass on one device, batching concurrent requests."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.inbox: queue.SimpleQueue[Request | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.batches: dict[EngineBackend, HFBatch] = {}
        # Same-shaped Llama checkpoints on this device: stacked weights and one batch for all of them.
        self.fused: dict[tuple, tuple[StackedModels, FusedBatch]] = {}
        self._fused_of: dict[torch.nn.Module, tuple[tuple, int] | None] = {}
        self._params: dict[torch.nn.Module, int] = {}
        self.max_batch_seen = 0
        self.max_prefill_seen = 0  # the most requests one prefill pass read
        self.max_threads = torch.get_num_threads()  # the caller's setting: the most a large forward gets
        self._threads = 0
        self.died: BaseException | None = None  # set when the thread stopped on an error (see _loop)
        _WORKERS.add(self)

    @property
    def healthy(self) -> bool:
        """False once the thread has died (the serving app's /health then answers 503)."""
        return self.died is None

    def close(self) -> None:
        """Stop the thread once its running requests are done."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            self.inbox.put(None)
            thread.join(timeout=5)

    def running(self, backend: EngineBackend) -> int:
        """How many of `backend`'s sequences are being decoded now."""
        batch = self.batches.get(backend)
        fused = sum(r is not None and r.backend is backend for _, b in self.fused.values() for r in b.rows)
        return fused + (len(batch.rows) if batch is not None else 0)

    def fused_for(self, backend: EngineBackend) -> tuple[StackedModels, FusedBatch, int] | None:
        """The stacked weights, the shared batch and the model's index there; None: the transformers path.

        Runs on the worker thread only (a model joining restacks weights and moves running rows).
        """
        if backend.adapter is not None:
            return None
        model = backend.loaded.model
        if model not in self._fused_of:
            key = stack_key(model)
            if key is not None and not _room_to_stack(model, self.fused.get(key)):
                key = None
            if key is None:
                self._fused_of[model] = None
            elif key not in self.fused:
                stack = StackedModels([model])
                self.fused[key] = (stack, FusedBatch(stack))
                self._fused_of[model] = (key, 0)
            else:
                stack, batch = self.fused[key]
                index = stack.add(model)
                batch.relayout(batch.per_model, 0)
                self._fused_of[model] = (key, index)
        found = self._fused_of[model]
        if found is None:
            return None
        stack, batch = self.fused[found[0]]
        return stack, batch, found[1]

    def size_threads(self, model: torch.nn.Module, tokens: int) -> None:
        """Intra-op threads for a forward over `tokens` tokens: one for small work, the caller's count otherwise."""
        if model not in self._params:
            self._params[model] = sum(p.numel() for p in model.parameters())
        big = self.device.type == "cpu" and self._params[model] * tokens >= ONE_THREAD_WORK
        want = self.max_threads if big else 1
        if want != self._threads:
            torch.set_num_threads(want)
            self._threads = want

    def run(
        self,
        backend: EngineBackend,
        req: Request,
        on_text: TextCallback | None = None,
        on_token: Callable[[TokenDetails], None] | None = None,
    ) -> Request:
        """Run `req` on `backend` and wait; text and token events are delivered on the caller's thread."""
        req.backend = backend
        self._ensure_thread()
        self.inbox.put(req)
        while True:
            try:
                kind, value = req.events.get(timeout=1.0)
            except queue.Empty:
                if self.died is not None or not self._thread_alive():
                    raise WorkerDied(f"the decode thread of {self.device} stopped: {self.died!r}") from None
                continue
            if kind == "text":
                if on_text is not None:
                    on_text(value)
            elif kind == "token":
                if on_token is not None:
                    on_token(value)
            elif kind == "done":
                return req
            else:
                raise value

    def _thread_alive(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def _ensure_thread(self) -> None:
        if self.died is not None:
            raise WorkerDied(f"the decode thread of {self.device} stopped: {self.died!r}")
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name=f"switchgen-decode-{self.device}", daemon=True)
                self._thread.start()

    def _busy(self) -> bool:
        return any(batch.rows for batch in self.batches.values()) or any(
            r is not None for _, b in self.fused.values() for r in b.rows
        )

    @torch.inference_mode()  # every tensor the worker makes is an inference tensor, updated in place only here
    def _loop(self) -> None:
        """Admit new requests, step every batch, repeat. No request can stop it: whatever one
        request's parameters or logits make fail (sampling, a forward pass) fails that request
        alone (see admission.py, _step_*). Should the loop itself fail, every waiting caller gets
        the error instead of hanging, and `healthy` turns False."""
        try:
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)  # graphs capture on, and streams belong to, the current device
            closing = False
            while not closing or self._busy():
                new = [self.inbox.get()] if not self._busy() else []
                while True:
                    try:
                        new.append(self.inbox.get_nowait())
                    except queue.Empty:
                        break
                closing = closing or None in new
                admission.admit(self, [r for r in new if r is not None])
                for stack, batch in list(self.fused.values()):
                    if any(r is not None for r in batch.rows):
                        self._step_fused(stack, batch)
                for backend, batch in list(self.batches.items()):
                    if batch.rows:
                        self._step_hf(backend, batch)
        except BaseException as err:  # a bug, not a request: say so (with where), fail every caller, stop
            traceback.print_exception(err, file=sys.stderr)
            self.died = err
            self._fail_everything(err)
            print(f"switchgen: the decode thread of {self.device} stopped: {err!r}; /health answers 503", file=sys.stderr)

    def _fail_everything(self, err: BaseException) -> None:
        died = WorkerDied(f"the decode thread of {self.device} stopped: {err!r}")
        for batch in self.batches.values():
            for r in batch.rows:
                r.events.put(("error", died))
            batch.rows, batch.pads, batch.cache = [], [], None
        for _, fused in self.fused.values():
            for s, r in enumerate(fused.rows):
                if r is not None:
                    fused.rows[s] = None  # its state may be what failed: drop the row, copy nothing
                    r.events.put(("error", died))
        while True:
            try:
                req = self.inbox.get_nowait()
            except queue.Empty:
                break
            if req is not None:
                req.events.put(("error", died))

    def accept(self, req: Request, token: int) -> None:
        """Append `token`; send it where asked; set `finish` when the patch is over."""
        params, backend = req.params, req.backend
        assert params is not None and backend is not None
        if token == FAILED:
            raise NaNLogits()
        req.out.append(token)
        if req.details:
            assert req.logits is not None
            logprobs = torch.log_softmax(req.logits.float(), dim=-1)
            top: list[tuple[int, float]] = []
            if req.top_n > 0:
                values, ids = torch.topk(logprobs, min(req.top_n, logprobs.numel()))
                top = list(zip(ids.tolist(), values.tolist(), strict=True))
            req.events.put(("token", (token, float(logprobs[token]), top)))
        if token in backend.eos_ids and not params.ignore_eos:
            req.finish = "eos"
        elif params.stop or (req.streaming and time.monotonic() >= req.next_emit):
            text, stopped = cut_at_stop(backend.decode(req.out), params.stop)
            if stopped:
                req.text, req.finish = text, "stop"
            req.emitted = _emit(req, text, final=stopped)
        if req.finish is None and len(req.out) >= params.max_new_tokens:
            extra = len(req.out) < params.max_new_tokens + params.finish_character
            if not (extra and backend.decode(req.out[-4:]).endswith("\ufffd")):  # a split character: one more
                req.finish = "length"

    def _settle(self, req: Request, token: int) -> BaseException | bool:
        """Take a decoded row's `token`. False: it decodes on; True: it finished; an exception: it
        failed (NaN logits, decoding for a stop string) or was cancelled. Either way the caller takes
        it out of its batch (its cache back into its entry), then `close`s it."""
        if req.cancelled is not None and req.cancelled.is_set():
            return Cancelled()
        try:
            self.accept(req, token)
        except Exception as err:
            return err
        return req.finish is not None

    def end_row(self, req: Request, outcome: BaseException | bool) -> None:
        """End a row that left its batch: done, or its error (a cancelled row's cache stays warm)."""
        if outcome is True:
            self.finish(req)
            return
        if isinstance(outcome, Cancelled):
            req.backend.pool.checkin(req.entry)
        req.events.put(("error", outcome))

    def _step_fused(self, stack: StackedModels, batch: FusedBatch) -> None:
        """One forward pass (and sampling) for every running row of every stacked checkpoint."""
        batch.compact()
        self.size_threads(stack.models[0], len(batch.rows))
        try:
            with next(r for r in batch.rows if r is not None).backend.loaded.lock:
                stepped, logits = batch.step()
                tokens = batch.buf.tokens[stepped].tolist()  # the one host transfer of the step
        except Exception as err:
            for s in batch.live:
                r = batch.rows[s]
                r.entry.kv = batch.remove(s)
                r.events.put(("error", err))
            return
        for s in batch.live:
            r = batch.rows[s]
            r.entry.ids.append(r.out[-1])
            if r.details:
                r.logits = logits[s - stepped.start]
            outcome = self._settle(r, tokens[s - stepped.start])
            if outcome is not False:
                r.entry.kv = batch.remove(s)
                self.end_row(r, outcome)

    def _step_hf(self, backend: EngineBackend, batch: HFBatch) -> None:
        """One transformers forward pass for `backend`'s running rows, sampled together."""
        rows = list(batch.rows)
        self.size_threads(backend.loaded.model, len(rows))
        try:
            logits = batch.step(backend)
            tokens = next_tokens(logits, [r.params for r in rows], [r.key for r in rows], [len(r.out) for r in rows])
        except Exception as err:
            for r in rows:
                batch.remove(r)
                r.events.put(("error", err))
            return
        for i, (r, token) in enumerate(zip(rows, tokens, strict=True)):
            r.entry.ids.append(r.out[-1])
            if r.details:
                r.logits = logits[i]
            outcome = self._settle(r, token)
            if outcome is not False:
                batch.remove(r)
                self.end_row(r, outcome)

    def finish(self, req: Request) -> None:
        backend = req.backend
        assert backend is not None
        if req.finish != "stop":
            req.text = backend.decode([t for t in req.out if t not in backend.eos_ids])
            _emit(req, req.text, final=True)
        backend.pool.checkin(req.entry)
        req.events.put(("done", req))


def _emit(req: Request, text: str, *, final: bool) -> str:
    """Queue the new part of `text` for the caller; return what has been sent.

    Until the patch is final, a trailing partial UTF-8 character and a tail that could still
    grow into a stop string are held back, so the stream never shows text the patch drops.
    Events are at most one per STREAM_INTERVAL (a wake-up of the caller's thread per token
    costs more than the token on small models); the end of a patch is sent at once.
    """
    if not req.streaming or (not final and time.monotonic() < req.next_emit):
        return req.emitted
    stable = text if final else streamable(text, req.params.stop if req.params else ())
    if len(stable) > len(req.emitted) and stable.startswith(req.emitted):
        req.events.put(("text", stable[len(req.emitted) :]))
        req.next_emit = time.monotonic() + STREAM_INTERVAL
        return stable
    return req.emitted



__all__ = ["Cancelled", "DecodeWorker", "Request", "TokenDetails", "WorkerDied", "to_patch"]
