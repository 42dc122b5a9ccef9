"""What the decode worker handles: loaded weights, the backend surface it drives, and one request's progress.

Kept below the worker (batching.py, admission.py, hf_batch.py) and the backends (local.py), so they
all name these types without importing each other.
"""

from __future__ import annotations

import queue
import threading
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

import torch
from transformers import DynamicCache, PreTrainedTokenizerBase

from switchgen.servers.base import GenerationParams, Patch
from switchgen.servers.engine.kvcache import CacheEntry, PrefixCachePool

# What a caller with `details` receives per token: id, log-probability, top-n (id, log-probability).
TokenDetails = tuple[int, float, list[tuple[int, float]]]


class Cancelled(Exception):
    """The caller went away (a closed HTTP stream): its sequence left the batch."""


@dataclass
class LoadedModel:
    """One set of weights in memory, shared by every backend that names it.

    `lock` is the device's: forward passes on one device run one at a time (each is already
    batched), so decode threads of several checkpoints never oversubscribe its cores or streams.
    """

    location: str
    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    lock: threading.RLock


class EngineBackend(Protocol):
    """What the decode worker needs of a backend (local.LocalBackend)."""

    loaded: LoadedModel
    adapter: str | None
    pool: PrefixCachePool
    eos_ids: frozenset[int]

    @property
    def device(self) -> torch.device: ...

    def decode(self, tokens: list[int]) -> str: ...

    def active(self) -> AbstractContextManager[None]: ...

    def forward(
        self, input_ids: torch.Tensor, cache: DynamicCache, attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
    ) -> torch.Tensor: ...

    def forward_logits(
        self, input_ids: torch.Tensor, cache: DynamicCache, attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None, keep: int | torch.Tensor,
    ) -> torch.Tensor: ...


@dataclass
class Request:
    """One generate (params set) or score (params None) call, and its progress."""

    ids: list[int]
    params: GenerationParams | None
    backend: EngineBackend | None = None  # set by DecodeWorker.run
    streaming: bool = False  # send decoded text as it grows
    details: bool = False  # send every token with its log-probability and the top-n alternatives
    top_n: int = 0
    cancelled: threading.Event | None = None
    choices: list[list[int]] | None = None  # a score: the token ids spelling each choice
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    entry: CacheEntry | None = None
    logits: torch.Tensor | None = None  # for `details`: the row's last logits
    scores: list[float] | None = None  # a score with choices: the probability each choice's tokens hold
    prefilled: int = 0
    out: list[int] = field(default_factory=list)
    key: int = 0  # the sampling noise key (sampling.row_key)
    finish: str | None = None
    emitted: str = ""
    text: str = ""
    next_emit: float = 0.0  # monotonic time before which no text event is sent


def to_patch(req: Request) -> Patch:
    assert req.finish in ("length", "eos", "stop")
    return Patch(text=req.text, tokens=len(req.out), finish_reason=req.finish, prefilled=req.prefilled)

