"""A small pool of KV caches per checkpoint, matched to new prompts by longest common token prefix.

Each conversation's prompt grows by one patch per step, so the cache that holds the longest
prefix of the new prompt is almost always the one from that conversation's previous call:
only the tokens after the common prefix are prefilled. No session ids are needed, and
forks, retries and concurrent graphs all find their own cache.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache


def kv_of(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """transformers' cache as (keys, values) per layer."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def cache_of(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    """(keys, values) per layer as transformers' cache."""
    cache = DynamicCache()
    for i, (k, v) in enumerate(layers):
        cache.update(k, v, i)
    return cache


@dataclass
class CacheEntry:
    """The keys and values of `ids`, in one of two forms: the stacked path's one tensor
    ([layers, 2 (keys, values), kv_heads, tokens, head_dim], see fused.py), or transformers' cache."""

    ids: list[int] = field(default_factory=list)  # tokens whose keys and values the entry holds
    cache: DynamicCache = field(default_factory=DynamicCache)
    kv: torch.Tensor | None = None

    def as_stacked(self) -> None:
        """Hold the keys and values in the stacked path's form (a checkpoint can move between the paths:
        a LoRA adapter attached to a stacked model sends it to the transformers path)."""
        if self.kv is None and self.ids and self.cache.layers:
            self.kv = torch.stack([torch.stack([k[0], v[0]]) for k, v in kv_of(self.cache)])
            self.cache = DynamicCache()

    def as_dynamic(self) -> None:
        """Hold the keys and values in transformers' form (see `as_stacked`)."""
        if self.kv is not None:
            self.cache, self.kv = cache_of([(layer[0][None].clone(), layer[1][None].clone()) for layer in self.kv]), None

    def truncate(self, keep: int) -> None:
        """Keep the first `keep` tokens (start over where the cache cannot be cropped)."""
        drop = len(self.ids) - keep
        if drop <= 0:
            return
        if keep == 0 or (self.kv is None and not self.cache.is_croppable):
            self.ids, self.cache, self.kv = [], DynamicCache(), None
            return
        if self.kv is not None:
            self.kv = self.kv[:, :, :, :keep]
        else:
            self.cache.crop(-drop)
        del self.ids[keep:]


def common_prefix(a: list[int], b: list[int]) -> int:
    """The length of the longest common prefix, by slice comparisons (done in C) in doubling steps,
    then halving: a pool entry of another conversation costs a few short compares, the matching one
    about one pass over its ids. It runs on the decode thread for every request and pooled entry."""
    n = min(len(a), len(b))
    lo, step = 0, 16
    while lo < n:
        hi = min(n, lo + step)
        if a[lo:hi] != b[lo:hi]:
            while hi - lo > 1:  # a[:lo] == b[:lo]; they differ somewhere before hi
                mid = (lo + hi) // 2
                if a[lo:mid] == b[lo:mid]:
                    lo = mid
                else:
                    hi = mid
            return lo
        lo, step = hi, step * 2
    return n


class PrefixCachePool:
    """Holds up to `capacity` caches; `checkout` hands out the best match for exclusive use."""

    def __init__(self, capacity: int = 8) -> None:
        self.capacity = capacity
        self._entries: list[CacheEntry] = []
        self._lock = threading.Lock()

    def checkout(self, ids: list[int]) -> tuple[CacheEntry, int]:
        """The entry sharing the longest prefix with `ids` (removed from the pool) and that length."""
        with self._lock:
            best, best_len = None, 0
            for entry in self._entries:
                n = common_prefix(entry.ids, ids)
                if n > best_len:
                    best, best_len = entry, n
            if best is None:
                return CacheEntry(), 0
            self._entries.remove(best)
            return best, best_len

    def checkin(self, entry: CacheEntry) -> None:
        """Return an entry; the least recently used one is dropped beyond capacity."""
        if self.capacity <= 0:
            return
        with self._lock:
            self._entries.append(entry)
            del self._entries[: max(0, len(self._entries) - self.capacity)]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
