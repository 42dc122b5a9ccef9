"""The transformers path: checkpoints our own forward does not cover (other architectures, LoRA adapters).

Rows of one checkpoint share a left-padded `DynamicCache` and step through the model's own forward.
Prefill is batched too: requests admitted together read their new tokens in one pass, each after
its own cached prefix (the cached parts left-padded to one width, the new tokens right-padded, a 4-D
mask), and each row's cache is cut back out for it.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from switchgen.servers.engine.fused import prefill_mask
from switchgen.servers.engine.kvcache import CacheEntry, cache_of, kv_of
from switchgen.servers.engine.requests import EngineBackend, Request


def _pad_left(t: torch.Tensor, n: int) -> torch.Tensor:
    if n == 0:
        return t
    shape = list(t.shape)
    shape[2] = n
    return torch.cat([t.new_zeros(shape), t], dim=2)


def _left_padded(rows: list[list[tuple[torch.Tensor, torch.Tensor]] | None], starts: list[int]) -> list:
    """Per layer, every row's cached keys and values left-padded to the longest (None: nothing cached)."""
    c = max(starts)
    if not c:
        return []
    ref = next(r for r in rows if r is not None)

    def padded(row, s: int, i: int, j: int) -> torch.Tensor:
        if row is None:
            t = ref[i][j]
            return t.new_zeros(1, t.shape[1], c, t.shape[3])
        return _pad_left(row[i][j], c - s)

    return [
        tuple(torch.cat([padded(row, s, i, j) for row, s in zip(rows, starts, strict=True)]) for j in (0, 1))
        for i in range(len(ref))
    ]


def prefill(backend: EngineBackend, entries: list[CacheEntry], news: list[list[int]]) -> torch.Tensor:
    """Extend each entry's cache by its new tokens in one forward pass; the logits after each [rows, vocab]."""
    device = backend.device
    if len(entries) == 1:
        return backend.forward(torch.tensor([news[0]], device=device), entries[0].cache, None, None)
    starts = [len(e.ids) for e in entries]
    c, length = max(starts), max(len(n) for n in news)
    cache = cache_of(_left_padded([kv_of(e.cache) if s else None for e, s in zip(entries, starts, strict=True)], starts))
    tokens = torch.tensor([n + [0] * (length - len(n)) for n in news], device=device)
    positions = torch.tensor([list(range(s, s + length)) for s in starts], device=device)
    last = [len(n) - 1 for n in news]
    keep = sorted(set(last))
    logits = backend.forward_logits(tokens, cache, prefill_mask(starts, length, device), positions, torch.tensor(keep, device=device))
    logits = logits[torch.arange(len(entries)), torch.tensor([keep.index(i) for i in last])]
    grown = kv_of(cache)
    for i, (entry, s, n) in enumerate(zip(entries, starts, news, strict=True)):
        entry.cache = cache_of([(k[i : i + 1, :, c - s : c + len(n)].clone(), v[i : i + 1, :, c - s : c + len(n)].clone())
                                for k, v in grown])
    return logits


class HFBatch:
    """Running sequences of one checkpoint sharing one left-padded cache."""

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
        own = kv_of(req.entry.cache)
        n = len(req.entry.ids)
        if self.cache is None:
            self.rows, self.pads, self.cache = [req], [0], req.entry.cache
            req.entry.cache = DynamicCache()
            return
        layers = kv_of(self.cache)
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
        self.cache = cache_of(layers)
        self.rows.append(req)
        self.pads.append(pad)
        req.entry.cache = DynamicCache()

    def remove(self, req: Request) -> None:
        """Take `req` out; its unpadded cache goes back into its entry."""
        self._mask = None
        i = self.rows.index(req)
        layers = kv_of(self.cache)
        assert req.entry is not None
        req.entry.cache = cache_of([(k[i : i + 1, :, self.pads[i] :], v[i : i + 1, :, self.pads[i] :]) for k, v in layers])
        keep = [j for j in range(len(self.rows)) if j != i]
        self.rows = [self.rows[j] for j in keep]
        self.pads = [self.pads[j] for j in keep]
        if not keep:
            self.cache = None
            return
        drop = min(self.pads)  # padding every row has is dead weight
        index = torch.tensor(keep, device=layers[0][0].device)
        self.cache = cache_of([(k.index_select(0, index)[:, :, drop:], v.index_select(0, index)[:, :, drop:]) for k, v in layers])
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

    def step(self, backend: EngineBackend) -> torch.Tensor:
        """Feed every row its last token; the logits after it [rows, vocab]."""
        rows, device = self.rows, backend.device
        tokens = torch.tensor([[r.out[-1]] for r in rows], device=device)
        with backend.active():
            if len(rows) == 1:
                return backend.forward(tokens, self.cache, None, None)
            positions = torch.tensor([[len(r.entry.ids)] for r in rows], device=device)
            return backend.forward(tokens, self.cache, self.mask(device), positions)
