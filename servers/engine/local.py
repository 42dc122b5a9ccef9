"""The in-process engine: transformers checkpoints, loaded once, with KV caches reused across patches.

Several checkpoints may share one device (CPU works too), which ends the reference code's need
for one GPU per model. A LoRA switcher on a candidate's checkpoint shares its weights: the
adapter is switched off for the candidate's calls.
"""

from __future__ import annotations

import functools
import inspect
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import replace

import torch
from transformers import DynamicCache, PreTrainedTokenizerBase

from switchgen.core.errors import InputTooLong
from switchgen.servers.base import ChoiceScores, GenerationParams, Patch, TextCallback
from switchgen.servers.choices import choice_probabilities, choice_token_ids
from switchgen.servers.engine.batching import DecodeWorker
from switchgen.servers.engine.kvcache import PrefixCachePool
from switchgen.servers.engine.loading import (
    attach_adapter,
    load_model,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
    resolve_model,
)
from switchgen.servers.engine.requests import LoadedModel, Request, to_patch

_WRITTEN_CAPACITY = 128  # remembered (prompt + patch) texts per backend
# Warm caches kept per backend: one per conversation in flight between its patches, so at least
# the number of queries run at once (switchgen generate keeps 16 in flight by default).
CACHE_CAPACITY = 64


def encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of a rendered prompt, with the tokenizer's BOS unless the text already starts with it.

    Chat templates differ in whether they write BOS themselves; this gives exactly one either way.
    This differs from the reference code, which tokenizes the templated text with the tokenizer's
    defaults: for a template that writes BOS itself (Llama 3's, Tulu 3's) it gets two.
    """
    bos = tokenizer.bos_token
    add_special = not (bos and text.startswith(bos))
    # verbose off: the engine checks lengths against the model's context itself (check_length), and
    # transformers' "longer than the maximum sequence length" warning would reach the user's screen.
    return tokenizer(text, add_special_tokens=add_special, verbose=False)["input_ids"]


class LocalBackend:
    """A loaded checkpoint (optionally with one LoRA adapter active) behind the `Backend` surface."""

    def __init__(
        self, loaded: LoadedModel, adapter: str | None, cache_capacity: int, reuse_cache: bool, worker: DecodeWorker
    ) -> None:
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
        self.worker = worker  # the device's decode thread
        self._written: OrderedDict[str, list[int]] = OrderedDict()
        self._written_lock = threading.Lock()

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.loaded.tokenizer

    @property
    def device(self) -> torch.device:
        return self.loaded.device

    @property
    def max_total_tokens(self) -> int:
        """The model's context: prompt plus generated tokens (max_position_embeddings; 4096 if unset)."""
        config = getattr(self.loaded.model, "config", None)
        return int(getattr(config, "max_position_embeddings", 4096) or 4096)

    def check_length(self, prompt_tokens: int, new_tokens: int) -> None:
        """Refuse (InputTooLong) a call whose prompt and new tokens exceed the context, as a server would (422)."""
        limit = self.max_total_tokens
        if prompt_tokens + new_tokens > limit:
            raise InputTooLong(
                f"the input is too long for {self.loaded.location}: its prompt is {prompt_tokens} tokens and "
                f"{new_tokens} more may be generated, over the model's context of {limit} tokens; "
                "shorten the input (or lower patch_size / max_new_tokens)"
            )

    def encode(self, text: str) -> list[int]:
        """Token ids of a prompt; text this backend wrote keeps the tokens it was written as.

        A prompt that extends an earlier prompt plus this backend's patch reuses those ids and
        tokenises only the new text: the model continues its own tokens as if it had never
        stopped (re-tokenising decoded text can split differently), and the KV cache matches.
        """
        with self._written_lock:
            known = max((t for t in self._written if text.startswith(t)), key=len, default=None)
            ids = list(self._written[known]) if known is not None else None
        if known is None:
            return encode(self.tokenizer, text)
        rest = text[len(known) :]
        return ids + (self.tokenizer(rest, add_special_tokens=False, verbose=False)["input_ids"] if rest else [])

    def generate(self, prompt: str, params: GenerationParams, on_text: TextCallback | None = None) -> Patch:
        """One patch; where the context cannot hold max_new_tokens more, as many as fit (`context_full`)."""
        ids = self.encode(prompt)
        self.check_length(len(ids), 1)  # the prompt itself must leave room to write
        room = self.max_total_tokens - len(ids)
        clamped = params.max_new_tokens + params.finish_character > room
        if clamped:
            size = min(params.max_new_tokens, room)
            params = replace(params, max_new_tokens=size, finish_character=room - size)
        done = self.worker.run(self, Request(ids, params, streaming=on_text is not None), on_text)
        patch = to_patch(done)
        if clamped and patch.finish_reason == "length" and patch.tokens >= room:
            patch = replace(patch, context_full=True)
        if patch.finish_reason == "length":  # the text is exactly the tokens: remember them
            self.remember(prompt + patch.text, ids + done.out)
        return patch

    def remember(self, text: str, ids: list[int]) -> None:
        """`text` was written as `ids`: a later prompt extending it continues from these tokens."""
        with self._written_lock:
            self._written[text] = ids
            self._written.move_to_end(text)
            while len(self._written) > _WRITTEN_CAPACITY:
                self._written.popitem(last=False)

    def choice_distribution(self, prompt: str, choices: Sequence[str]) -> ChoiceScores:
        key = tuple(choices)
        if key not in self._choice_ids:
            self._choice_ids[key] = choice_token_ids(self.tokenizer, choices)
        choice_ids = self._choice_ids[key]
        ids = self.encode(prompt)
        self.check_length(len(ids), 1)
        done = self.worker.run(self, Request(ids, None, choices=choice_ids))  # scored on the device, with others
        if not all(choice_ids):
            return ChoiceScores(probs=None, mass=0.0, prefilled=done.prefilled)
        assert done.scores is not None
        probs, mass = choice_probabilities(done.scores, True)
        return ChoiceScores(probs=probs, mass=mass, prefilled=done.prefilled)

    # -- used by the decode worker, on its thread ------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor,
        cache: DynamicCache,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
    ) -> torch.Tensor:
        """Last-position logits for a batch; `cache` is extended in place."""
        return self.forward_logits(input_ids, cache, attention_mask, position_ids, 1)[:, -1]

    @torch.inference_mode()
    def forward_logits(
        self,
        input_ids: torch.Tensor,
        cache: DynamicCache,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        keep: int | torch.Tensor,
    ) -> torch.Tensor:
        """Logits [rows, positions, vocab] at the last `keep` positions (or the positions a tensor lists)."""
        model = self.loaded.model
        out = model(
            input_ids=input_ids,
            **{cache_argument(type(model.get_base_model() if hasattr(model, "get_base_model") else model)): cache},
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=keep,
        )
        return out.logits

    def decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    @contextmanager
    def active(self) -> Iterator[None]:
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

    def __init__(self, *, cache_capacity: int = CACHE_CAPACITY, reuse_cache: bool = True) -> None:
        self.cache_capacity = cache_capacity
        self.reuse_cache = reuse_cache
        self._models: dict[tuple[str, str, str], LoadedModel] = {}
        self._device_locks: dict[str, threading.RLock] = {}
        self._workers: dict[str, DecodeWorker] = {}
        self._backends: dict[tuple[str, str, str, str | None, bool], LocalBackend] = {}
        self._lock = threading.Lock()

    def backend(
        self,
        model: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        adapter: str | None = None,
        reuse_cache: bool | None = None,
    ) -> LocalBackend:
        """A backend over `model` (loaded on first use, then shared); `reuse_cache` overrides the engine's."""
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
                    lock=self._device_locks.setdefault(str(dev), threading.RLock()),
                )
                self._models[mkey] = loaded
            adapter_name = None
            if adapter is not None:
                adapter_name = re.sub(r"\W", "_", adapter)
                loaded.model = attach_adapter(loaded.model, adapter, adapter_name)
            reuse = self.reuse_cache if reuse_cache is None else reuse_cache
            bkey = (*mkey, adapter_name, reuse)
            if bkey not in self._backends:
                worker = self._workers.setdefault(str(dev), DecodeWorker(dev))
                self._backends[bkey] = LocalBackend(loaded, adapter_name, self.cache_capacity, reuse, worker)
            return self._backends[bkey]

    @property
    def workers(self) -> list[DecodeWorker]:
        """The decode thread of each device in use."""
        return list(self._workers.values())

    @property
    def loaded_models(self) -> list[LoadedModel]:
        """Every distinct set of weights in memory."""
        return list(self._models.values())

    def clear_caches(self) -> None:
        """Forget every KV cache and remembered tokenisation (a cold start)."""
        for backend in self._backends.values():
            backend.pool.clear()
            with backend._written_lock:
                backend._written.clear()


@functools.cache
def cache_argument(model_class: type) -> str:
    """The forward argument taking the KV cache: `cache` (transformers >= 5.24, which deprecates the old name),
    else `past_key_values`."""
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"
