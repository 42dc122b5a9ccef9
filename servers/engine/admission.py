"""Admitting requests to the decode worker: one prefill pass for the requests that arrived together.

Requests for one stacked group (fused.py) or one transformers checkpoint are prefilled in one pass,
each after the longest prefix of its ids found in its backend's prefix-cache pool (kvcache.py).
Scores (the switcher's digits) are answered from that pass, for all score rows at once: the
probability each choice's tokens hold. Generating rows sample their first token together (one host
transfer) and join their batch. A request whose input or settings fail does so alone: a batched pass
that fails is retried one request at a time.
"""

from __future__ import annotations

from typing import Protocol

import torch

from switchgen.servers.engine import hf_batch
from switchgen.servers.engine.fused import MAX_PREFILL_POSITIONS, PrefillRow, StackedModels
from switchgen.servers.engine.fused_batch import FusedBatch, Joining
from switchgen.servers.engine.hf_batch import HFBatch
from switchgen.servers.engine.kvcache import CacheEntry
from switchgen.servers.engine.requests import EngineBackend, Request
from switchgen.servers.engine.sampling import check_params, next_tokens, row_key

_CHOICE_MATRICES: dict[tuple, torch.Tensor] = {}


class DecodeWorker(Protocol):
    """What admission uses of the device's worker (batching.DecodeWorker)."""

    batches: dict[EngineBackend, HFBatch]
    max_batch_seen: int
    max_prefill_seen: int

    def fused_for(self, backend: EngineBackend) -> tuple[StackedModels, FusedBatch, int] | None: ...

    def size_threads(self, model: torch.nn.Module, tokens: int) -> None: ...

    def accept(self, req: Request, token: int) -> None: ...

    def finish(self, req: Request) -> None: ...


def admit(worker: DecodeWorker, reqs: list[Request]) -> None:
    """Prefill `reqs` (grouped by what can share a pass), answer the scores, start the generations."""
    groups: dict[object, list[Request]] = {}
    for req in reqs:
        backend = req.backend
        assert backend is not None  # not a request's fault: the loop's own bug (it stops the worker)
        try:
            if req.params is not None:
                check_params(req.params)
                req.key = row_key(req.params.seed)
            fused = worker.fused_for(backend)
        except Exception as err:  # this request's settings: it fails alone
            req.events.put(("error", err))
            continue
        # One pass per stacked model (a pass over several would pad each model to the same rows), or per checkpoint.
        groups.setdefault((fused[0], fused[2]) if fused is not None else backend, []).append(req)
    for key, group in groups.items():
        taken = [_checkout(req, stacked=isinstance(key, tuple)) for req in group]
        for chunk in _chunks(list(zip(group, taken, strict=True)), group[0].backend.loaded.model):
            _prefill(worker, [req for req, _ in chunk], [t for _, t in chunk])


def _cost(rows: int, cached: int, new: int, hidden: int) -> int:
    """A prefill's work in units of one token attending to one key: attention, plus the linear layers
    (~12 hidden^2 multiply-adds a token, against 2 hidden per key)."""
    return rows * new * (cached + new + 6 * hidden)


def _pass_cost(hidden: int) -> int:
    """What a pass costs beyond its work (launches, Python), as the work of ~64 tokens: padding up to
    this much is cheaper than a pass of its own."""
    return 64 * 6 * hidden


def _chunks(items: list[tuple[Request, tuple[CacheEntry, list[int]]]], model: torch.nn.Module) -> list[list]:
    """Runs of requests sharing a pass: sorted by what they still have to read, cut where padding every
    row to the chunk's longest would waste more than a quarter of the work (and more than a pass
    costs), or the pass would exceed MAX_PREFILL_POSITIONS."""
    hidden = getattr(getattr(model, "config", None), "hidden_size", 0) or 0
    items = sorted(items, key=lambda it: (len(it[1][1]), len(it[1][0].ids)), reverse=True)
    chunks: list[list] = []
    exact = cached = new = 0
    for item in items:
        c, n = len(item[1][0].ids), len(item[1][1])
        if chunks:
            rows = len(chunks[-1]) + 1
            padded = _cost(rows, max(cached, c), max(new, n), hidden)
            work = exact + _cost(1, c, n, hidden)
            if padded <= 1.25 * work + _pass_cost(hidden) and rows * max(new, n) <= MAX_PREFILL_POSITIONS:
                chunks[-1].append(item)
                exact, cached, new = exact + _cost(1, c, n, hidden), max(cached, c), max(new, n)
                continue
        chunks.append([item])
        exact, cached, new = _cost(1, c, n, hidden), c, n
    return chunks


def _checkout(req: Request, stacked: bool) -> tuple[CacheEntry, list[int]]:
    """The pooled cache sharing the longest prefix with the request's ids (in the form the request's path
    reads), and the ids it still has to read."""
    entry, shared = req.backend.pool.checkout(req.ids)
    if stacked:
        entry.as_stacked()
    else:
        entry.as_dynamic()
    keep = min(shared, len(req.ids) - 1)  # feed at least one token to get fresh logits
    entry.truncate(keep)
    return entry, req.ids[keep:]


def _prefill(worker: DecodeWorker, chunk: list[Request], taken: list[tuple[CacheEntry, list[int]]]) -> None:
    first = chunk[0].backend
    fused = worker.fused_for(first)
    try:
        worker.size_threads(first.loaded.model, sum(len(new) for _, new in taken))
        if fused is not None:
            rows = [PrefillRow(fused[2], e.kv, new) for e, new in taken]
            with first.loaded.lock:
                kvs, logits = fused[0].prefill_rows(rows)
            for (entry, _), kv in zip(taken, kvs, strict=True):
                entry.kv = kv
        else:
            with first.active():
                logits = hf_batch.prefill(first, [e for e, _ in taken], [new for _, new in taken])
    except Exception as err:
        if len(chunk) == 1:  # its cache may be half extended: dropped
            chunk[0].events.put(("error", err))
        else:  # whose input failed the pass? one at a time (the caches are untouched), so only that one fails
            for req, t in zip(chunk, taken, strict=True):
                _prefill(worker, [req], [t])
        return
    for req, (entry, new) in zip(chunk, taken, strict=True):
        entry.ids.extend(new)
        req.entry, req.prefilled = entry, len(new)
    worker.max_prefill_seen = max(worker.max_prefill_seen, len(chunk))
    scores = [i for i, r in enumerate(chunk) if r.params is None]
    if scores:
        _answer_scores([chunk[i] for i in scores], logits[scores])
    writing = [i for i, r in enumerate(chunk) if r.params is not None]
    if writing:
        _start(worker, [chunk[i] for i in writing], logits[writing], fused)


def _own(entry: CacheEntry) -> None:
    """Copy a prefilled entry's keys and values out of the pass's shared tensor before it is pooled."""
    if entry.kv is not None:
        entry.kv = entry.kv.clone()


def _answer_scores(reqs: list[Request], logits: torch.Tensor) -> None:
    """The probability each choice's tokens hold, for every score row of a pass: one host transfer per choice set."""
    by_choices: dict[tuple, list[int]] = {}
    for i, req in enumerate(reqs):
        assert req.choices is not None  # every score names its choices (LocalBackend.choice_distribution)
        by_choices.setdefault(tuple(map(tuple, req.choices)), []).append(i)
    for choices, rows in by_choices.items():
        probs = torch.softmax(logits[rows].float(), dim=-1)
        masses = (probs @ _choice_matrix(choices, probs.shape[-1], probs.device)).tolist()
        for i, mass in zip(rows, masses, strict=True):
            reqs[i].scores = mass
    for req in reqs:
        _own(req.entry)
        req.backend.pool.checkin(req.entry)
        req.events.put(("done", req))


def _choice_matrix(choices: tuple[tuple[int, ...], ...], vocab: int, device: torch.device) -> torch.Tensor:
    """[vocab, choices]: 1 where a token spells the choice (probabilities times it sum each choice's tokens)."""
    key = (choices, vocab, str(device))
    if key not in _CHOICE_MATRICES:
        matrix = torch.zeros(vocab, len(choices), dtype=torch.float32)
        for j, ids in enumerate(choices):
            for token in ids:
                matrix[token, j] = 1.0
        _CHOICE_MATRICES[key] = matrix.to(device)
    return _CHOICE_MATRICES[key]


def _start(
    worker: DecodeWorker, reqs: list[Request], logits: torch.Tensor, fused: tuple[StackedModels, FusedBatch, int] | None
) -> None:
    """Sample the first tokens of a pass's generating rows together; the unfinished ones join their batch."""
    try:
        tokens = next_tokens(logits, [r.params for r in reqs], [r.key for r in reqs], [0] * len(reqs))
    except Exception as err:
        for req in reqs:
            req.events.put(("error", err))
        return
    joining = []
    for i, (req, token) in enumerate(zip(reqs, tokens, strict=True)):
        if req.details:
            req.logits = logits[i]
        try:
            worker.accept(req, token)
        except Exception as err:  # NaN logits, decoding for a stop string: this request alone
            req.events.put(("error", err))
            continue
        if req.finish is not None:
            _own(req.entry)
            worker.finish(req)
        else:
            joining.append(req)
    if fused is not None and joining:
        fused[1].reserve({fused[2]: len(joining)}, max(len(r.entry.ids) for r in joining))
    for req in joining:
        if fused is not None:
            _join_fused(worker, req)
        else:
            batch = worker.batches.setdefault(req.backend, HFBatch())
            batch.add(req)
            worker.max_batch_seen = max(worker.max_batch_seen, len(batch.rows))


def _join_fused(worker: DecodeWorker, req: Request) -> None:
    _, batch, index = worker.fused_for(req.backend)
    entry = req.entry
    batch.add(Joining(req, index, entry.kv, req.out[-1], len(req.out), req.params, req.key))
    entry.kv = None  # the batch holds it now; it comes back when the row leaves
    seen = sum(r is not None and r.backend is req.backend for r in batch.rows)
    worker.max_batch_seen = max(worker.max_batch_seen, seen)
