"""Token-by-token generation with log-probabilities, for serving a checkpoint over HTTP.

The HTTP server (servers/serve/app.py) reports what an inference server reports: each token's
id, text and log-probability, the top-n alternatives, and why generation ended. This is a thin
layer over the in-process engine's backends (servers/engine/local.py): the same decode worker, so
concurrent requests to one checkpoint are decoded together in one batch, the same prefix KV
caches and the same memory of the tokens each patch was written as. Greedy output is therefore
exactly the in-process engine's.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from switchgen.servers.base import GenerationParams
from switchgen.servers.engine.batching import Cancelled, Request, TokenDetails
from switchgen.servers.engine.local import LocalBackend
from switchgen.servers.stops import first_stop

__all__ = ["Cancelled", "Generation", "Step", "TokenInfo", "TokenServer"]


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


class TokenServer:
    """One loaded checkpoint (and the LoRA adapters attached to it), served token by token."""

    def __init__(self, base: LocalBackend, adapters: dict[str, LocalBackend] | None = None) -> None:
        self._backends: dict[str | None, LocalBackend] = {None: base, **(adapters or {})}
        self.adapters = {name: b.adapter for name, b in (adapters or {}).items()}
        self.loaded = base.loaded
        self.eos_ids = base.eos_ids
        self.special_ids = frozenset(self.tokenizer.all_special_ids)

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.loaded.tokenizer

    @property
    def max_total_tokens(self) -> int:
        return self._backends[None].max_total_tokens

    @property
    def healthy(self) -> bool:
        """False once the device's decode thread has died: every request would fail (/health says 503)."""
        return all(b.worker.healthy for b in self._backends.values())

    def encode(self, text: str, adapter: str | None = None) -> list[int]:
        """A prompt's ids, BOS added as TGI and vLLM do; text this server wrote keeps its tokens."""
        return self._backends[adapter].encode(text)

    def remember(self, prompt: str, ids: list[int], generation: Generation, adapter: str | None = None) -> None:
        """After a patch that ran to its length, `prompt + text` is exactly `ids + its tokens`."""
        if generation.finish == "length":
            self._backends[adapter].remember(prompt + generation.text, ids + [s.token.id for s in generation.steps])

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
        backend = self._backends[adapter]
        result = Generation(input_length=len(ids))
        detok = _Detokenizer(self)

        def on_token(details: TokenDetails) -> None:
            token, logprob, top = details
            piece = detok.add(token)
            step = Step(
                len(result.steps),
                TokenInfo(token, piece, logprob, token in self.special_ids),
                [self._info(i, lp) for i, lp in top],
            )
            result.steps.append(step)
            if on_step is not None:
                on_step(step)

        if ignore_eos:
            params = dataclasses.replace(params, ignore_eos=True)
        request = Request(ids, params, details=True, top_n=top_n, cancelled=cancelled)
        done = backend.worker.run(backend, request, on_token=on_token)
        result.finish = done.finish or "length"
        kept = [t for t in done.out if t not in self.eos_ids or ignore_eos]
        result.full_text = backend.decode(kept)
        result.text = result.full_text
        hit = first_stop(result.full_text, params.stop) if result.finish == "stop" else None
        if hit is not None:
            cut, result.stop = hit
            result.text = result.full_text[:cut]
        return result

    def _info(self, token: int, logprob: float) -> TokenInfo:
        text = self.tokenizer.decode([token], skip_special_tokens=False)
        return TokenInfo(token, text, logprob, token in self.special_ids)


class _Detokenizer:
    """Incremental detokenisation (as TGI): each token's text piece, a split character with its last token."""

    def __init__(self, server: TokenServer) -> None:
        self.server = server
        self.out: list[int] = []
        self.prefix = 0
        self.read = 0

    def add(self, token: int) -> str:
        self.out.append(token)
        tokenizer = self.server.tokenizer
        if token in self.server.special_ids:
            self.prefix = self.read = len(self.out)
            return tokenizer.decode([token], skip_special_tokens=False)
        before = tokenizer.decode(self.out[self.prefix : self.read], skip_special_tokens=True)
        after = tokenizer.decode(self.out[self.prefix :], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.out)
            return after[len(before) :]
        return ""
