"""Logit merging: several in-process checkpoints that share one tokenizer write as one model.

Each step every checkpoint scores the same sequence and the next token is drawn from the mean of
their next-token log-probabilities (a product of experts, renormalised). Each checkpoint keeps its
own KV cache for the call, so a step costs one single-token forward pass per checkpoint. It is a
`Backend`, so the graph runs it like any candidate (the `logit-merge` evaluation baseline).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache, PreTrainedTokenizerBase

from switchgen.servers.base import ChoiceScores, GenerationParams, Patch, TextCallback
from switchgen.servers.choices import choice_probabilities, choice_token_ids
from switchgen.servers.engine.local import LocalBackend, encode
from switchgen.servers.engine.sampling import check_params, next_token, row_key
from switchgen.servers.stops import cut_at_stop


class TokenizerMismatch(ValueError):
    """The checkpoints do not share a tokenizer, so their distributions cannot be averaged."""


class LogitMergeBackend:
    """The mean of `backends`' next-token log-probabilities, sampled token by token."""

    def __init__(self, backends: Sequence[LocalBackend]) -> None:
        if len(backends) < 2:
            raise TokenizerMismatch("logit merging needs at least two checkpoints")
        vocab = backends[0].tokenizer.get_vocab()
        for b in backends[1:]:
            if b.tokenizer.get_vocab() != vocab:
                raise TokenizerMismatch(
                    f"{b.loaded.location} and {backends[0].loaded.location} have different tokenizers"
                )
        self.backends = list(backends)
        self.eos_ids = frozenset().union(*(b.eos_ids for b in backends))

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.backends[0].tokenizer

    def _step(self, tokens: list[int], caches: list[DynamicCache]) -> torch.Tensor:
        """Feed `tokens` to every checkpoint; the mean of their next-token log-probabilities (on CPU)."""
        logps = []
        for backend, cache in zip(self.backends, caches, strict=True):
            with backend.active():
                logits = backend.forward(torch.tensor([tokens], device=backend.device), cache, None, None)
            logps.append(torch.log_softmax(logits[0].float(), dim=-1).cpu())
        return torch.stack(logps).mean(dim=0)

    def generate(self, prompt: str, params: GenerationParams, on_text: TextCallback | None = None) -> Patch:
        ids = encode(self.tokenizer, prompt)
        caches = [DynamicCache() for _ in self.backends]
        check_params(params)
        key = row_key(params.seed)
        out: list[int] = []
        finish = "length"
        merged = self._step(ids, caches)
        while len(out) < params.max_new_tokens:
            token = next_token(merged, params, key, len(out))  # log-probabilities work as logits
            out.append(token)
            if token in self.eos_ids and not params.ignore_eos:
                finish = "eos"
                break
            if params.stop and cut_at_stop(self.tokenizer.decode(out, skip_special_tokens=True), params.stop)[1]:
                finish = "stop"
                break
            if len(out) < params.max_new_tokens:
                merged = self._step([token], caches)
        written = [t for t in out if t not in self.eos_ids] if finish == "eos" else out
        text, _ = cut_at_stop(self.tokenizer.decode(written, skip_special_tokens=True), params.stop)
        if on_text is not None and text:
            on_text(text)
        return Patch(text=text, tokens=len(out), finish_reason=finish, prefilled=len(ids) * len(self.backends))

    def choice_distribution(self, prompt: str, choices: Sequence[str]) -> ChoiceScores:
        choice_ids = choice_token_ids(self.tokenizer, choices)
        ids = encode(self.tokenizer, prompt)
        probs = torch.exp(self._step(ids, [DynamicCache() for _ in self.backends]))
        probs = probs / probs.sum()
        renorm, mass = choice_probabilities([float(probs[i].sum()) for i in choice_ids], all(choice_ids))
        return ChoiceScores(probs=renorm, mass=mass, prefilled=len(ids) * len(self.backends))
