"""Token-by-token generation with log-probabilities, for serving a checkpoint over HTTP.

The HTTP server (servers/http_server.py) reports what an inference server reports: each token's
id, text and log-probability, the top-n alternatives, and why generation ended. The in-process
`LocalBackend` returns only finished patches, so this module runs the same loop (the same
`next_token`, seeds, prefix KV caches, and the same memory of its own patches' tokens) on the
same loaded weights, token by token. Greedy output is therefore the in-process engine's.

Requests to one checkpoint interleave token by token (the device lock is held per forward
pass), but are not batched: this is a development server; TGI and vLLM batch.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedTokenizerBase

from switchgen.servers.base import GenerationParams
from switchgen.servers.kvcache import CacheEntry, PrefixCachePool
from switchgen.servers.local import LoadedModel, LocalBackend
from switchgen.servers.sampling import make_generator, next_token


@dataclass(frozen=True)
class TokenInfo:
    id: int
    text: str
    logprob: float
    special: bool


@dataclass(frozen=True)
class Step:
    """One generated token, with the most likely alternatives at its position."""

    index: int
    token: TokenInfo
    top: list[TokenInfo]


@dataclass
class Generation:
    """A finished request. `text` is cut before a stop string; `full_text` keeps it (TGI's way)."""

    steps: list[Step] = field(default_factory=list)
    text: str = ""
    full_text: str = ""
    finish: str = "length"  # length | eos | stop
    stop: str | None = None  # the stop string that ended it
    input_length: int = 0


class Cancelled(Exception):
    """The client went away; the model stops at the next token."""


class TokenServer:
    """One loaded checkpoint (and the LoRA adapters attached to it), served token by token.

    Thread-safe: model work holds the checkpoint's lock (shared with the in-process backends).
    """

    def __init__(
        self,
        base: LocalBackend,
        adapters: dict[str, LocalBackend] | None = None,
        cache_capacity: int = 32,
        written_capacity: int = 256,
    ) -> None:
        self.loaded: LoadedModel = base.loaded
        self.eos_ids = base.eos_ids
        self.adapters = {name: b.adapter for name, b in (adapters or {}).items()}
        self._pools: dict[str | None, PrefixCachePool] = {}
        self._written: dict[str | None, OrderedDict[str, list[int]]] = {}
        self._lock = threading.Lock()
        self._cache_capacity = cache_capacity
        self._written_capacity = written_capacity
        self.special_ids = frozenset(self.tokenizer.all_special_ids)

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.loaded.tokenizer

    @property
    def max_total_tokens(self) -> int:
        config = getattr(self.loaded.model, "config", None)
        return int(getattr(config, "max_position_embeddings", 4096) or 4096)

    def encode(self, text: str, adapter: str | None = None) -> list[int]:
        """A prompt's ids: the tokenizer's special tokens (BOS) added, as TGI and vLLM do, except
        that text this server wrote keeps the tokens it was written as (as the in-process engine:
        re-tokenising decoded text can split differently, and the KV cache then matches).
        """
        with self._lock:
            written = self._written.setdefault(adapter, OrderedDict())
            known = max((t for t in written if text.startswith(t)), key=len, default=None)
            ids = list(written[known]) if known is not None else None
        if known is None:
            return self.tokenizer(text, add_special_tokens=True)["input_ids"]
        rest = text[len(known) :]
        return ids + (self.tokenizer(rest, add_special_tokens=False)["input_ids"] if rest else [])

    def remember(self, prompt: str, ids: list[int], generation: Generation, adapter: str | None = None) -> None:
        """After a patch that ran to its length, `prompt + text` is exactly `ids + its tokens`."""
        if generation.finish != "length":
            return
        with self._lock:
            written = self._written.setdefault(adapter, OrderedDict())
            written[prompt + generation.text] = ids + [s.token.id for s in generation.steps]
            while len(written) > self._written_capacity:
                written.popitem(last=False)

    def generate(
        self,
        ids: list[int],
        params: GenerationParams,
        *,
        top_n: int = 0,
        adapter: str | None = None,
        ignore_eos: bool = False,
        on_step: Callable[[Step], None] | None = None,
        cancelled: threading.Event | None = None,
    ) -> Generation:
        """Generate after `ids`; `adapter` names one of `self.adapters` (None: the base weights)."""
        result = Generation(input_length=len(ids))
        out: list[int] = []
        generator = make_generator(params.seed, self.loaded.device)
        pool = self._pool(adapter)
        entry, shared = pool.checkout(ids)
        try:
            entry.truncate(min(shared, len(ids) - 1))
            logits = self._forward(entry, ids[len(entry.ids) :], adapter)
            text = ""  # decoded so far, without a trailing partial character
            prefix, read = 0, 0  # incremental detokenisation (as TGI): decode a short window, not everything
            while len(out) < params.max_new_tokens:
                if cancelled is not None and cancelled.is_set():
                    raise Cancelled
                logprobs = torch.log_softmax(logits.float(), dim=-1)
                token = next_token(logits, params, generator)
                out.append(token)
                if token in self.special_ids:
                    piece = self.tokenizer.decode([token], skip_special_tokens=False)
                    prefix = read = len(out)
                else:
                    before = self._decode(out[prefix:read])
                    after = self._decode(out[prefix:])
                    piece = ""  # a character split across tokens comes with its last token
                    if len(after) > len(before) and not after.endswith("\ufffd"):
                        piece = after[len(before) :]
                        prefix, read = read, len(out)
                    text += piece
                step = Step(len(out) - 1, self._info(token, piece, logprobs), self._top(logprobs, top_n))
                result.steps.append(step)
                if on_step is not None:
                    on_step(step)
                if token in self.eos_ids and not ignore_eos:
                    result.finish = "eos"
                    break
                cut = min(((text.find(s), s) for s in params.stop if s and s in text), default=None)
                if cut is not None:
                    result.finish, result.stop = "stop", cut[1]
                    break
                if len(out) < params.max_new_tokens:
                    logits = self._forward(entry, [token], adapter)
        finally:
            pool.checkin(entry)
        kept = [t for t in out if t not in self.eos_ids or ignore_eos]
        result.full_text = self._decode(kept)
        result.text = result.full_text
        if result.stop is not None:
            result.text = result.full_text[: result.full_text.find(result.stop)]
        return result

    # -- internals -------------------------------------------------------------------------

    def _info(self, token: int, text: str, logprobs: torch.Tensor) -> TokenInfo:
        return TokenInfo(token, text, float(logprobs[token]), token in self.special_ids)

    def _top(self, logprobs: torch.Tensor, n: int) -> list[TokenInfo]:
        if n <= 0:
            return []
        values, ids = torch.topk(logprobs, min(n, logprobs.numel()))
        return [
            TokenInfo(i, self.tokenizer.decode([i], skip_special_tokens=False), float(v), i in self.special_ids)
            for v, i in zip(values.tolist(), ids.tolist(), strict=True)
        ]

    def _pool(self, adapter: str | None) -> PrefixCachePool:
        with self._lock:  # caches differ per adapter: each gets its own pool
            if adapter not in self._pools:
                self._pools[adapter] = PrefixCachePool(self._cache_capacity)
            return self._pools[adapter]

    @torch.inference_mode()
    def _forward(self, entry: CacheEntry, new_ids: list[int], adapter: str | None) -> torch.Tensor:
        input_ids = torch.tensor([new_ids], device=self.loaded.device)
        with self._active(adapter):
            out = self.loaded.model(input_ids=input_ids, past_key_values=entry.cache, use_cache=True, logits_to_keep=1)
        entry.cache = out.past_key_values
        entry.ids.extend(new_ids)
        return out.logits[0, -1]

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    @contextmanager
    def _active(self, adapter: str | None) -> Iterator[None]:
        """Hold the device for one forward pass, with `adapter` on or every adapter off (as LocalBackend)."""
        with self.loaded.lock:
            model = self.loaded.model
            if not hasattr(model, "peft_config"):
                yield
                return
            if adapter is None:
                ctx = model.disable_adapter()
            else:
                model.set_adapter(self.adapters[adapter])
                ctx = nullcontext()
            with ctx:
                yield
