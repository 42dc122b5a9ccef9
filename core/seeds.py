"""Per-step seeds derived from the run's seed, so every step is reproducible on its own."""

from __future__ import annotations

import hashlib

MAX_SEED = 2**64 - 1  # the largest seed a user may give: TGI's seed is a u64 (and torch's generator takes no more)


def derive_seed(seed: int | None, *parts: object) -> int | None:
    """A 63-bit seed for (seed, parts), or None (fresh randomness) when the run has no seed."""
    if seed is None:
        return None
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1
