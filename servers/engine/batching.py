"""Continuous batching for the in-process engine: one decode thread per device.

Requests for the same checkpoint from concurrently running graphs are decoded together. One
worker thread per device runs every forward pass on it, for all its checkpoints: new requests
are prefilled one by one (each from its own prefix cache) between decode steps, then join their
checkpoint's running batch; each round steps every checkpoint's batch once, one forward pass
over the last token of every running sequence. Caches of different lengths are merged by left
padding (masked out), and a finished sequence's cache is cut back out and returned to the
prefix-cache pool, so its next patch still starts warm. One thread per device (not per
checkpoint) keeps the checkpoints from contending for the device, and for Python's GIL.
"""

from __future__ import annotations

import atexit
import queue
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from transformers import DynamicCache

from switchgen.servers.base import GenerationParams, Patch, TextCallback
from switchgen.servers.engine.fused import FusedBatch, StackedModels, signature
from switchgen.servers.engine.kvcache import CacheEntry
from switchgen.servers.engine.sampling import next_token, next_tokens, seeded_generator
from switchgen.servers.stops import cut_at_stop, streamable

if TYPE_CHECKING:
    from switchgen.servers.engine.local import LocalBackend

STREAM_INTERVAL = 0.02  # seconds between streamed text events of one request
# A forward pass with fewer multiply-adds than this runs on one CPU thread: splitting tiny
# operations over torch's intra-op pool costs more than it saves, and on a busy machine every
# operation then waits for the slowest pool thread to be scheduled (run times varied 20x).
ONE_THREAD_WORK = 1 << 26


class Cancelled(Exception):
    """The caller went away (a closed HTTP stream): its sequence left the batch."""


class WorkerDied(RuntimeError):
    """The device's decode thread stopped on an error no request caused; the server reports it on /health."""


# What a caller with `details` receives per token: id, log-probability, top-n (id, log-probability).
TokenDetails = tuple[int, float, list[tuple[int, float]]]


@dataclass
class Request:
    """One generate (params set) or score (params None) call, and its progress."""

    ids: list[int]
    params: GenerationParams | None
    backend: LocalBackend | None = None  # set by DecodeWorker.run
    streaming: bool = False  # send decoded text as it grows
    details: bool = False  # send every token with its log-probability and the top-n alternatives
    top_n: int = 0
    cancelled: threading.Event | None = None
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    entry: CacheEntry | None = None
    logits: torch.Tensor | None = None
    prefilled: int = 0
    out: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None
    finish: str | None = None
    emitted: str = ""
    text: str = ""
    next_emit: float = 0.0  # monotonic time before which no text event is sent


class _Batch:
    """Running sequences sharing one left-padded cache."""

    def __init__(self) -> None:
        self.rows: list[Request] = []
        self.pads: list[int] = []
        self.cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # over the cache; rebuilt when rows join or leave

    @property
    def length(self) -> int:
        return self.cache.get_seq_length() if self.cache is not None else 0

    def add(self, req: Request) -> None:
        assert req.entry is not None
        self._mask = None
        own = _kv(req.entry.cache)
        n = len(req.entry.ids)
        if self.cache is None:
            self.rows, self.pads, self.cache = [req], [0], req.entry.cache
            req.entry.cache = DynamicCache()
            return
        layers = _kv(self.cache)
        length = self.length
        grow = max(0, n - length)
        if grow:
            layers = [(_pad_left(k, grow), _pad_left(v, grow)) for k, v in layers]
            self.pads = [p + grow for p in self.pads]
        pad = max(length, n) - n
        layers = [
            (torch.cat([k, _pad_left(k2, pad)]), torch.cat([v, _pad_left(v2, pad)]))
            for (k, v), (k2, v2) in zip(layers, own, strict=True)
        ]
        self.cache = _cache(layers)
        self.rows.append(req)
        self.pads.append(pad)
        req.entry.cache = DynamicCache()

    def remove(self, req: Request) -> None:
        """Take `req` out; its unpadded cache goes back into its entry."""
        self._mask = None
        i = self.rows.index(req)
        layers = _kv(self.cache)
        assert req.entry is not None
        req.entry.cache = _cache([(k[i : i + 1, :, self.pads[i] :], v[i : i + 1, :, self.pads[i] :]) for k, v in layers])
        keep = [j for j in range(len(self.rows)) if j != i]
        self.rows = [self.rows[j] for j in keep]
        self.pads = [self.pads[j] for j in keep]
        if not keep:
            self.cache = None
            return
        drop = min(self.pads)  # padding every row has is dead weight
        index = torch.tensor(keep, device=layers[0][0].device)
        self.cache = _cache([(k.index_select(0, index)[:, :, drop:], v.index_select(0, index)[:, :, drop:]) for k, v in layers])
        self.pads = [p - drop for p in self.pads]

    def mask(self, device: torch.device) -> torch.Tensor:
        """Attention mask over the cache plus one new token per row, already 4-D ([rows, 1, 1, keys]):
        transformers uses it as is instead of rebuilding one from a padding mask every step.
        Between joins and leaves it only grows by one column a step."""
        length = self.length
        if self._mask is None or self._mask.shape[-1] != length:
            mask = torch.ones(len(self.rows), 1, 1, length, dtype=torch.bool, device=device)
            for i, pad in enumerate(self.pads):
                mask[i, ..., :pad] = False
            self._mask = mask
        self._mask = torch.cat([self._mask, self._mask.new_ones(len(self.rows), 1, 1, 1)], dim=-1)
        return self._mask


def _kv(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _cache(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    cache = DynamicCache()
    for i, (k, v) in enumerate(layers):
        cache.update(k, v, i)
    return cache


def _pad_left(t: torch.Tensor, n: int) -> torch.Tensor:
    if n == 0:
        return t
    shape = list(t.shape)
    shape[2] = n
    return torch.cat([t.new_zeros(shape), t], dim=2)


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
        self.batches: dict[LocalBackend, _Batch] = {}
        # Same-shaped Llama checkpoints on this device: stacked weights and one batch for all of them.
        self.fused: dict[tuple, tuple[StackedModels, FusedBatch]] = {}
        self._fused_of: dict[torch.nn.Module, tuple[tuple, int] | None] = {}
        self._params: dict[torch.nn.Module, int] = {}
        self.max_batch_seen = 0
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

    def running(self, backend: LocalBackend) -> int:
        """How many of `backend`'s sequences are being decoded now."""
        batch = self.batches.get(backend)
        fused = sum(r is not None and r.backend is backend for _, b in self.fused.values() for r in b.rows)
        return fused + (len(batch.rows) if batch is not None else 0)

    def fused_for(self, backend: LocalBackend) -> tuple[StackedModels, FusedBatch, int] | None:
        """The stacked weights, the shared batch and the model's index there; None: the transformers path.

        Runs on the worker thread only (a model joining restacks weights and moves running rows).
        """
        if backend.adapter is not None:
            return None
        model = backend.loaded.model
        if model not in self._fused_of:
            key = signature(model)
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
                if batch.per_model:
                    batch._relayout(batch.per_model, 0)
                self._fused_of[model] = (key, index)
        found = self._fused_of[model]
        if found is None:
            return None
        stack, batch = self.fused[found[0]]
        return stack, batch, found[1]

    def _size_threads(self, model: torch.nn.Module, tokens: int) -> None:
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
        backend: LocalBackend,
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
        request's parameters or logits make fail (sampling, seeding, a forward pass) fails that
        request alone (see _admit, _step). Should the loop itself fail, every waiting caller gets
        the error instead of hanging, and `healthy` turns False."""
        try:
            closing = False
            while not closing or self._busy():
                new = [self.inbox.get()] if not self._busy() else []
                while True:
                    try:
                        new.append(self.inbox.get_nowait())
                    except queue.Empty:
                        break
                for req in new:
                    if req is None:
                        closing = True
                    else:
                        self._admit(req)
                for stack, batch in list(self.fused.values()):
                    if any(r is not None for r in batch.rows):
                        self._step_fused(stack, batch)
                for backend, batch in list(self.batches.items()):
                    if batch.rows:
                        self._step(backend, batch)
        except BaseException as err:  # a bug, not a request: say so once, fail every caller, stop
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

    def _admit(self, req: Request) -> None:
        backend = req.backend
        assert backend is not None
        try:
            fused = self.fused_for(backend)
            self._size_threads(backend.loaded.model, len(req.ids))
            with backend.active():
                req.entry, req.logits, req.prefilled = backend.prefill(
                    req.ids, (fused[0], fused[2]) if fused is not None else None
                )
            if req.params is None:
                backend.pool.checkin(req.entry)
                req.events.put(("done", req))
                return
            req.generator = seeded_generator(req.params.seed, backend.device)
            self._sample(req)
        except Exception as err:  # this request's input or parameters: it fails alone
            req.events.put(("error", err))
            return
        if req.finish is not None:
            self._finish(req)
        elif fused is not None:
            _, shared, index = fused
            shared.add(index, req, req.entry.cache, len(req.entry.ids))
            req.entry.cache = DynamicCache()
            self.max_batch_seen = max(self.max_batch_seen, sum(r is not None and r.backend is backend for r in shared.rows))
        else:
            batch = self.batches.setdefault(backend, _Batch())
            batch.add(req)
            self.max_batch_seen = max(self.max_batch_seen, len(batch.rows))

    def _sample(self, req: Request) -> None:
        """Pick the next token from `req.logits` (a request on its own)."""
        assert req.params is not None and req.logits is not None
        self._accept(req, next_token(req.logits, req.params, req.generator))

    def _accept(self, req: Request, token: int) -> None:
        """Append `token`; send it where asked; set `finish` when the patch is over."""
        params, backend = req.params, req.backend
        assert params is not None and req.logits is not None and backend is not None
        req.out.append(token)
        if req.details:
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

    def _step(self, backend: LocalBackend, batch: _Batch) -> None:
        rows = batch.rows
        tokens = torch.tensor([[r.out[-1]] for r in rows], device=self.device)
        self._size_threads(backend.loaded.model, len(rows))
        try:
            with backend.active():
                if len(rows) == 1:
                    logits = backend.forward(tokens, batch.cache, None, None)
                else:
                    positions = torch.tensor([[len(r.entry.ids)] for r in rows], device=self.device)
                    logits = backend.forward(tokens, batch.cache, batch.mask(self.device), positions)
        except Exception as err:
            for r in list(rows):
                batch.remove(r)
                r.events.put(("error", err))
            return
        rows = list(rows)
        for i, r in enumerate(rows):
            r.entry.ids.append(r.out[-1])
            r.logits = logits[i]
        chosen = self._choose(logits, rows)
        for r, token in zip(rows, chosen, strict=True):
            if isinstance(token, Exception):
                batch.remove(r)
                r.events.put(("error", token))
                continue
            if r.cancelled is not None and r.cancelled.is_set():
                batch.remove(r)
                backend.pool.checkin(r.entry)
                r.events.put(("error", Cancelled()))
                continue
            try:
                self._accept(r, token)
            except Exception as err:  # e.g. decoding for a stop string: this row alone
                batch.remove(r)
                r.events.put(("error", err))
                continue
            if r.finish is not None:
                batch.remove(r)
                self._finish(r)

    def _step_fused(self, stack: StackedModels, batch: FusedBatch) -> None:
        """One forward pass for every running row of every stacked checkpoint."""
        batch.compact()
        slots = batch.live
        rows = [batch.rows[s] for s in slots]
        tokens = [0] * len(batch.rows)
        positions = [0] * len(batch.rows)
        for s, r in zip(slots, rows, strict=True):
            tokens[s], positions[s] = r.out[-1], len(r.entry.ids)
        self._size_threads(stack.models[0], len(batch.rows))
        try:
            with rows[0].backend.loaded.lock:
                logits = batch.step(tokens, positions)
        except Exception as err:
            for s, r in zip(slots, rows, strict=True):
                r.entry.cache = batch.remove(s)
                r.events.put(("error", err))
            return
        logits = logits[torch.tensor(slots, device=logits.device)] if len(slots) < len(batch.rows) else logits
        for i, r in enumerate(rows):
            r.entry.ids.append(r.out[-1])
            r.logits = logits[i]
        chosen = self._choose(logits, rows)
        for s, r, token in zip(slots, rows, chosen, strict=True):
            if isinstance(token, Exception):
                r.entry.cache = batch.remove(s)
                r.events.put(("error", token))
                continue
            if r.cancelled is not None and r.cancelled.is_set():
                r.entry.cache = batch.remove(s)
                r.backend.pool.checkin(r.entry)
                r.events.put(("error", Cancelled()))
                continue
            try:
                self._accept(r, token)
            except Exception as err:  # e.g. decoding for a stop string: this row alone
                r.entry.cache = batch.remove(s)
                r.events.put(("error", err))
                continue
            if r.finish is not None:
                r.entry.cache = batch.remove(s)
                self._finish(r)

    @staticmethod
    def _choose(logits: torch.Tensor, rows: list[Request]) -> list[int | Exception]:
        """The batch's next tokens, sampled together; if that fails, row by row, so only the
        rows whose logits or settings cannot be sampled (NaN logits, say) get the error."""
        try:
            return list(next_tokens(logits, [r.params for r in rows], [r.generator for r in rows]))
        except Exception:
            chosen: list[int | Exception] = []
            for i, r in enumerate(rows):
                try:
                    chosen.append(next_token(logits[i], r.params, r.generator))
                except Exception as err:
                    chosen.append(err)
            return chosen

    def _finish(self, req: Request) -> None:
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


def to_patch(req: Request) -> Patch:
    assert req.finish in ("length", "eos", "stop")
    return Patch(text=req.text, tokens=len(req.out), finish_reason=req.finish, prefilled=req.prefilled)
