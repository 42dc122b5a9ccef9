"""TGI's wire vocabulary, shared by the TGI clients (servers/clients/) and `switchgen serve` (servers/serve/)."""

from __future__ import annotations

from typing import Any, Literal

from switchgen.servers.base import GenerationParams

FinishReason = Literal["length", "eos", "stop"]

# TGI's finish_reason <-> a Patch's.
FINISH_FROM_TGI: dict[str, FinishReason] = {"length": "length", "eos_token": "eos", "stop_sequence": "stop"}
FINISH_TO_TGI: dict[FinishReason, str] = {ours: theirs for theirs, ours in FINISH_FROM_TGI.items()}


def tgi_parameters(params: GenerationParams) -> dict[str, Any]:
    """`text_generation` parameters for one patch.

    TGI samples whenever a warper (temperature, top_p) is set, so they are sent only to sample;
    it refuses top_p = 1.0 (the range is open), which means "no top-p" and is left out.
    """
    out: dict[str, Any] = {"max_new_tokens": params.max_new_tokens}
    if params.stop:
        out["stop"] = list(params.stop)
    if not params.greedy:
        out.update(do_sample=True, temperature=params.temperature)
        if params.seed is not None:
            out["seed"] = params.seed
        if params.top_p < 1.0:
            out["top_p"] = params.top_p
    return out
