"""The decode step as CUDA graphs: captured once per shape, replayed after.

A decode step of a 1B model is a few hundred small kernels; launched one by one from Python, the
launches, not the GPU, set the pace (~17-22 ms/token measured on an H200 where the weights take
~0.4 ms to read). A captured graph launches them all at once. The step functions given here read and
write fixed buffers only (fused_batch.py), so the graph captured for a key stays valid until the owner
drops it (`clear`) because it reallocated those buffers.

The first call for a key runs the function eagerly: that is the real step, and its warm-up (lazy
kernel selection, cuBLAS workspaces); the capture follows, which only records. Later calls replay.
Off CUDA, or with SWITCHGEN_CUDA_GRAPHS=0, the function simply runs: the same code path, eager.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Hashable

import torch


def graphs_enabled(device: torch.device) -> bool:
    return device.type == "cuda" and os.environ.get("SWITCHGEN_CUDA_GRAPHS", "1") != "0"


class StepGraphs:
    """Captured graphs of one owner's step function, by key (shapes and anything else baked into the capture)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.enabled = graphs_enabled(device)
        self._graphs: dict[Hashable, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = None
        self.captures = 0  # for tests and the bench: how often a step was captured
        self.replays = 0

    def clear(self) -> None:
        """Forget every graph (their buffers were reallocated)."""
        self._graphs.clear()

    def run(self, key: Hashable, step: Callable[[], torch.Tensor]) -> torch.Tensor:
        """`step()`'s result: replayed from the graph captured for `key`, else run (and captured for next time)."""
        found = self._graphs.get(key)
        if found is not None:
            found[0].replay()
            self.replays += 1
            return found[1]
        out = step()
        if self.enabled:
            self._capture(key, step)
        return out

    def _capture(self, key: Hashable, step: Callable[[], torch.Tensor]) -> None:
        torch.cuda.synchronize(self.device)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                out = step()
        except Exception as err:  # an operation that cannot be captured: keep running eagerly
            torch.cuda.synchronize(self.device)
            self.enabled = False
            print(f"switchgen: CUDA graph capture failed ({err!r}); decoding eagerly", file=sys.stderr)
            return
        self._graphs[key] = (graph, out)
        self.captures += 1
