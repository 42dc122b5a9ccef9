"""The in-process engine: transformers checkpoints, loaded once, with KV caches reused across patches.

Several checkpoints may share one device (CPU works too), which ends the reference code's need
for one GPU per model. A LoRA switcher on a candidate's checkpoint shares its weights: the
adapter is switched off for the candidate's calls.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedTokenizerBase

from switchgen.servers.base import ChoiceScores, GenerationParams, Patch, TextCallback
from switchgen.servers.kvcache import CacheEntry, PrefixCachePool
from switchgen.servers.loading import (
    attach_adapter,
    load_model,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
    resolve_model,
)
from switchgen.servers.sampling import make_generator, next_token


@dataclass
class LoadedModel:
    """One set of weights in memory, shared by every backend that names it."""

    location: str
    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    lock: threading.RLock = field(default_factory=threading.RLock)


def encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of a rendered prompt, with the tokenizer's BOS unless the text already starts with it.

    Chat templates differ in whether they write BOS themselves; this gives exactly one either way
    (and matches how the reference code tokenizes templated prompts).
    """
    bos = tokenizer.bos_token
    add_special = not (bos and text.startswith(bos))
    return tokenizer(text, add_special_tokens=add_special)["input_ids"]


def choice_token_ids(tokenizer: PreTrainedTokenizerBase, choices: Sequence[str]) -> list[list[int]]:
    """For each choice, the single tokens that spell it, with and without a leading space."""
    ids: list[list[int]] = []
    for choice in choices:
        found: list[int] = []
        for spelling in (choice, " " + choice):
            toks = tokenizer.encode(spelling, add_special_tokens=False)
            if len(toks) == 1 and toks[0] not in found:
                found.append(toks[0])
        ids.append(found)
    return ids


def _emit(on_text: TextCallback | None, emitted: str, text: str, *, final: bool, stop: tuple[str, ...] = ()) -> str:
    """Send the new part of `text` and return what has been sent.

    Until the patch is final, a trailing partial UTF-8 character and a tail that could still
    grow into a stop string are held back, so the stream never shows text the patch drops.
    """
    if on_text is None:
        return emitted
    stable = text
    if not final:
        stable = stable.rstrip("\ufffd")
        held = max((k for s in stop for k in range(1, len(s)) if stable.endswith(s[:k])), default=0)
        stable = stable[: len(stable) - held]
    if len(stable) > len(emitted) and stable.startswith(emitted):
        on_text(stable[len(emitted) :])
        return stable
    return emitted


class LocalBackend:
    """A loaded checkpoint (optionally with one LoRA adapter active) behind the `Backend` surface."""

    def __init__(self, loaded: LoadedModel, adapter: str | None, cache_capacity: int, reuse_cache: bool) -> None:
        self.loaded = loaded
        self.adapter = adapter
        self.reuse_cache = reuse_cache
        self.pool = PrefixCachePool(cache_capacity if reuse_cache else 0)
        gen_eos = getattr(getattr(loaded.model, "generation_config", None), "eos_token_id", None)
        eos = set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
        if loaded.tokenizer.eos_token_id is not None:
            eos.add(loaded.tokenizer.eos_token_id)
        self.eos_ids = frozenset(eos)
        self._choice_ids: dict[tuple[str, ...], list[list[int]]] = {}

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.loaded.tokenizer

    @property
    def device(self) -> torch.device:
        return self.loaded.device

    def encode(self, text: str) -> list[int]:
        return encode(self.tokenizer, text)

    def generate(self, prompt: str, params: GenerationParams, on_text: TextCallback | None = None) -> Patch:
        ids = self.encode(prompt)
        generator = make_generator(params.seed, self.device)
        out: list[int] = []
        finish = "length"
        emitted = ""
        with self._active():
            entry, logits, prefilled = self._prefill(ids)
            try:
                while len(out) < params.max_new_tokens:
                    token = next_token(logits, params, generator)
                    out.append(token)
                    if token in self.eos_ids:
                        finish = "eos"
                        break
                    if params.stop or on_text is not None:
                        text = self._decode(out)
                        cut = min((text.find(s) for s in params.stop if s in text), default=-1)
                        if cut >= 0:
                            text, finish = text[:cut], "stop"
                        emitted = _emit(on_text, emitted, text, final=finish == "stop", stop=params.stop)
                        if finish == "stop":
                            break
                    if len(out) < params.max_new_tokens:
                        logits = self._forward(entry, [token])
            finally:
                self.pool.checkin(entry)
        if finish != "stop":
            text = self._decode([t for t in out if t not in self.eos_ids])
            _emit(on_text, emitted, text, final=True)
        return Patch(text=text, tokens=len(out), finish_reason=finish, prefilled=prefilled)

    def choice_distribution(self, prompt: str, choices: Sequence[str]) -> ChoiceScores:
        key = tuple(choices)
        if key not in self._choice_ids:
            self._choice_ids[key] = choice_token_ids(self.tokenizer, choices)
        choice_ids = self._choice_ids[key]
        with self._active():
            entry, logits, prefilled = self._prefill(self.encode(prompt))
            self.pool.checkin(entry)
        if not all(choice_ids):
            return ChoiceScores(probs=None, mass=0.0, prefilled=prefilled)
        full = torch.softmax(logits.float(), dim=-1)
        per_choice = torch.stack([full[ids].sum() for ids in choice_ids])
        mass = float(per_choice.sum())
        if not torch.isfinite(per_choice).all() or mass <= 0.0:
            return ChoiceScores(probs=None, mass=mass if mass == mass else 0.0, prefilled=prefilled)
        return ChoiceScores(probs=(per_choice / mass).tolist(), mass=mass, prefilled=prefilled)

    # -- internals -------------------------------------------------------------------------

    def _prefill(self, ids: list[int]) -> tuple[CacheEntry, torch.Tensor, int]:
        """A cache holding `ids` and the logits after them; only tokens not already cached are run."""
        entry, shared = self.pool.checkout(ids)
        keep = min(shared, len(ids) - 1)  # feed at least one token to get fresh logits
        entry.truncate(keep)
        logits = self._forward(entry, ids[keep:])
        return entry, logits, len(ids) - keep

    @torch.inference_mode()
    def _forward(self, entry: CacheEntry, new_ids: list[int]) -> torch.Tensor:
        input_ids = torch.tensor([new_ids], device=self.device)
        out = self.loaded.model(input_ids=input_ids, past_key_values=entry.cache, use_cache=True)
        entry.cache = out.past_key_values
        entry.ids.extend(new_ids)
        return out.logits[0, -1]

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    @contextmanager
    def _active(self) -> Iterator[None]:
        """Hold the weights, with this backend's adapter on (or every adapter off)."""
        with self.loaded.lock:
            model = self.loaded.model
            if not hasattr(model, "peft_config"):
                yield
                return
            if self.adapter is None:
                ctx = model.disable_adapter()
            else:
                model.set_adapter(self.adapter)
                ctx = nullcontext()
            with ctx:
                yield


class LocalEngine:
    """Loads each checkpoint once and hands out backends over it.

    `reuse_cache=False` re-encodes every prompt from scratch (the reference algorithm's cost,
    and the ground truth the cache is tested against).
    """

    def __init__(self, *, cache_capacity: int = 8, reuse_cache: bool = True) -> None:
        self.cache_capacity = cache_capacity
        self.reuse_cache = reuse_cache
        self._models: dict[tuple[str, str, str], LoadedModel] = {}
        self._backends: dict[tuple[str, str, str, str | None], LocalBackend] = {}
        self._lock = threading.Lock()

    def backend(self, model: str, *, device: str = "auto", dtype: str = "auto", adapter: str | None = None) -> LocalBackend:
        location = resolve_model(model)
        dev = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, dev)
        mkey = (location, str(dev), str(torch_dtype))
        with self._lock:
            loaded = self._models.get(mkey)
            if loaded is None:
                loaded = LoadedModel(
                    location=location,
                    model=load_model(location, dev, torch_dtype),
                    tokenizer=load_tokenizer(location),
                    device=dev,
                )
                self._models[mkey] = loaded
            adapter_name = None
            if adapter is not None:
                adapter_name = re.sub(r"\W", "_", adapter)
                loaded.model = attach_adapter(loaded.model, adapter, adapter_name)
            bkey = (*mkey, adapter_name)
            if bkey not in self._backends:
                self._backends[bkey] = LocalBackend(loaded, adapter_name, self.cache_capacity, self.reuse_cache)
            return self._backends[bkey]

    @property
    def loaded_models(self) -> list[LoadedModel]:
        """Every distinct set of weights in memory."""
        return list(self._models.values())

    def clear_caches(self) -> None:
        for backend in self._backends.values():
            backend.pool.clear()
