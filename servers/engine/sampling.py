"""Choosing the next token for a whole batch on its device: greedy, or temperature and nucleus (top-p) sampling.

One call picks every row's token (`sample`), so a decode step costs one host transfer however many
rows it has, and the call can be captured in a CUDA graph (no host sync, no per-row generator).

Seeded rows are reproducible by construction: a row's random numbers are a hash of (its key, the
index of the token being drawn in its request) — counter-based noise, not draws from a generator
the batch shares — so a seeded row draws the same tokens alone or in any batch, in any order. The
key is a 32-bit mix of the request's seed (`row_key`); an unseeded request gets a fresh random key.
The draw is the inverse CDF over the nucleus ranked by probability: one number per row and token,
whatever the vocabulary.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch

from switchgen.servers.base import GenerationParams

# Temperatures below this sample as if at it: dividing float32 logits by a tinier one (1e-300 is
# a valid JSON number) overflows to inf and the softmax to NaN. At 1e-4 sampling is greedy in all
# but exact ties.
MIN_TEMPERATURE = 1e-4
SEED_RANGE = (-(2**63), 2**64)  # what torch.Generator.manual_seed accepts: the range seeds always had
FAILED = -1  # the token `sample` returns for a row whose logits hold NaN

_MASK32 = 0xFFFFFFFF
_MULT = 0x45D9F3B  # < 2**27: a 32-bit value times it stays below 2**59, exact in int64
_SPREAD = 0x9E3779B9


def _mix(x):
    """A 32-bit integer hash (works on Python ints and int64 tensors alike, with the same results)."""
    x = (((x >> 16) ^ x) * _MULT) & _MASK32
    x = (((x >> 16) ^ x) * _MULT) & _MASK32
    return (x >> 16) ^ x


def check_params(params: GenerationParams) -> None:
    """Refuse (ValueError) settings no token can be sampled with, before the request joins a batch."""
    if params.seed is not None and not SEED_RANGE[0] <= params.seed < SEED_RANGE[1]:
        raise ValueError(f"seed {params.seed} is out of range [-2**63, 2**64)")
    if not params.greedy:
        for name in ("temperature", "top_p"):
            value = getattr(params, name)
            if not isinstance(value, int | float) or math.isnan(value):
                raise ValueError(f"{name} must be a number, got {value!r}")


def row_key(seed: int | None) -> int:
    """A row's 32-bit noise key: a mix of its seed (all 64 bits), or fresh randomness when unseeded."""
    if seed is None:
        return random.getrandbits(32)
    s = seed % 2**64
    return _mix(_mix(s & _MASK32) ^ (s >> 32))


def uniform(keys: torch.Tensor, counters: torch.Tensor) -> torch.Tensor:
    """One number in (0, 1) per row, a pure function of the row's (key, counter)."""
    bits = _mix(keys ^ _mix((counters * _SPREAD + 1) & _MASK32))
    return ((bits >> 8).to(torch.float32) + 0.5) * 2.0**-24


def _ranked(probs: torch.Tensor, graphed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's probabilities in descending order, and the token ids in that order. Ties keep one
    order per row's values, whatever the batch: torch's stable sort on accelerators and in captured
    steps; on CPU numpy's quicksort (deterministic, ~3x faster than torch's CPU sort on rows of a few
    hundred tokens)."""
    if graphed or probs.device.type != "cpu":
        return torch.sort(probs, dim=-1, descending=True, stable=True)
    order = torch.from_numpy(np.argsort(-probs.numpy(), axis=-1))
    return probs.gather(1, order), order


def sample(
    logits: torch.Tensor,
    greedy: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    keys: torch.Tensor,
    counters: torch.Tensor,
    graphed: bool = False,
) -> torch.Tensor:
    """The next token of every row of `logits` [rows, vocab]; FAILED where a row's logits hold NaN.

    Per row: `greedy` (bool), `temperature`, `top_p` (float32), `keys`, `counters` (int64), all on the
    logits' device. Each row depends on its own inputs only, so it draws the same token in any batch.
    `graphed`: the call is captured (device operations only).
    """
    x = logits.float()
    probs = torch.softmax(x / temperature.clamp_min(MIN_TEMPERATURE)[:, None], dim=-1)
    ranked, order = _ranked(probs, graphed)
    # Keep the smallest prefix whose mass reaches top_p (the token that crosses it included); the most
    # likely token always stays (a top_p that rounds to 0 in float32); top_p >= 1 keeps everything.
    outside = (ranked.cumsum(dim=-1) - ranked >= top_p[:, None]) & (top_p < 1.0)[:, None]
    outside[:, 0] = False
    mass = ranked.masked_fill_(outside, 0.0).cumsum_(dim=-1)
    # Inverse CDF: the first ranked token whose cumulative mass passes the row's number times the nucleus's.
    target = uniform(keys, counters) * mass[:, -1]
    index = (mass < target[:, None]).sum(dim=-1).clamp_(max=x.shape[-1] - 1)
    drawn = order.gather(1, index[:, None]).squeeze(1)
    chosen = torch.where(greedy, x.argmax(dim=-1), drawn)
    return chosen.masked_fill_(torch.isnan(x).any(dim=-1), FAILED)


def settings(params: list[GenerationParams], keys: list[int], device: torch.device) -> tuple[torch.Tensor, ...]:
    """`sample`'s per-row inputs (greedy, temperature, top_p, keys) for rows with these settings and keys."""
    return (
        torch.tensor([p.greedy for p in params], dtype=torch.bool, device=device),
        torch.tensor([float(p.temperature) for p in params], dtype=torch.float32, device=device),
        torch.tensor([float(p.top_p) for p in params], dtype=torch.float32, device=device),
        torch.tensor(keys, dtype=torch.int64, device=device),
    )


def next_tokens(
    logits: torch.Tensor, params: list[GenerationParams], keys: list[int], counters: list[int]
) -> list[int]:
    """One token id per row of a [rows, vocab] batch (FAILED for a row with NaN logits): one host transfer."""
    device = logits.device
    counts = torch.tensor(counters, dtype=torch.int64, device=device)
    return sample(logits, *settings(params, keys, device), counts).tolist()


class NaNLogits(ValueError):
    """The model's logits for a row hold NaN: no token can be sampled."""

    def __init__(self) -> None:
        super().__init__("the model's logits hold NaN: no token can be sampled")


def next_token(logits: torch.Tensor, params: GenerationParams, key: int, counter: int) -> int:
    """One token id from a 1-D logits vector (NaNLogits, a ValueError, when the logits hold NaN)."""
    token = next_tokens(logits[None], [params], [key], [counter])[0]
    if token == FAILED:
        raise NaNLogits()
    return token
