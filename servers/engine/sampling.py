"""Choosing the next token from logits: greedy, or temperature and nucleus (top-p) sampling."""

from __future__ import annotations

import torch

from switchgen.servers.base import GenerationParams

# Temperatures below this sample as if at it: dividing float32 logits by a tinier one (1e-300 is
# a valid JSON number) overflows to inf and the softmax to NaN. At 1e-4 sampling is greedy in all
# but exact ties.
MIN_TEMPERATURE = 1e-4


def seeded_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    if seed is None:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def next_token(logits: torch.Tensor, params: GenerationParams, generator: torch.Generator | None) -> int:
    """One token id from a 1-D logits vector."""
    if params.greedy:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / max(params.temperature, MIN_TEMPERATURE), dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        # Keep the smallest prefix whose mass reaches top_p (the token that crosses it included).
        outside = cumulative - sorted_probs >= params.top_p
        outside[0] = False  # the most likely token always stays (a top_p that rounds to 0 in float32)
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        choice = torch.multinomial(sorted_probs, 1, generator=generator)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=generator))


def next_tokens(
    logits: torch.Tensor, params: list[GenerationParams], generators: list[torch.Generator | None]
) -> list[int]:
    """One token id per row of a [rows, vocab] batch, each row with its own settings and generator.

    Rows sharing settings are transformed together (one softmax and sort for all of them), then
    each samples with its own generator, so a seeded request draws the same tokens whether it
    runs alone or in a batch (the transforms act on each row independently).
    """
    tokens = [0] * len(params)
    greedy = [i for i, p in enumerate(params) if p.greedy]
    if greedy:
        for i, token in zip(greedy, logits[greedy].argmax(dim=-1).tolist(), strict=True):
            tokens[i] = token
    groups: dict[tuple[float, float], list[int]] = {}
    for i, p in enumerate(params):
        if not p.greedy:
            groups.setdefault((p.temperature, p.top_p), []).append(i)
    for (temperature, top_p), rows in groups.items():
        probs = torch.softmax(logits[rows].float() / max(temperature, MIN_TEMPERATURE), dim=-1)
        order = None
        if top_p < 1.0:
            probs, order = torch.sort(probs, dim=-1, descending=True)
            cumulative = torch.cumsum(probs, dim=-1)
            outside = cumulative - probs >= top_p
            outside[:, 0] = False  # the most likely token always stays (a top_p that rounds to 0 in float32)
            probs = probs.masked_fill(outside, 0.0)
        for j, i in enumerate(rows):
            choice = torch.multinomial(probs[j], 1, generator=generators[i])
            tokens[i] = int(order[j, choice]) if order is not None else int(choice)
    return tokens
