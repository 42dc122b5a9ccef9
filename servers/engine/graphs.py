"""The decode step as CUDA graphs: captured once per shape, replayed after.

A decode step of a 1B model is a few hundred small kernels; launched one by one from Python, the
launches, not the GPU, set the pace (~17-22 ms/token measured on an H200 where the weights take
~0.4 ms to read). A captured graph launches them all at once. The step functions given here read and
write fixed buffers only (fused_batch.py), so the graph captured for a key stays valid until the owner
drops it (`clear`) because it reallocated those buffers.

The first call for a key runs the function eagerly: that is the real step, and its warm-up (lazy
kernel selection, cuBLAS workspaces); the capture follows, which only records. Later calls replay.
Off CUDA, or with SWITCHGEN_CUDA_GRAPHS=0, the function simply runs: the same code path, eager.
SWITCHGEN_CUDA_GRAPHS=emulate runs the same protocol on any device with torch.fx instead of CUDA:
the first call is traced into a graph of tensor operations (make_fx: host values become constants and
the buffers it touches are the same tensors, as in a CUDA graph), later calls run that graph. A step
that baked a changing host value into its capture, instead of reading it from a buffer, then writes
other tokens than eager decoding: the tests' check, on CPU, of what a CUDA graph would replay.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Hashable

import torch


def graphs_mode(device: torch.device) -> str:
    """"cuda" (capture and replay), "emulate" (the protocol without CUDA) or "off" (run eagerly)."""
    setting = os.environ.get("SWITCHGEN_CUDA_GRAPHS", "1")
    if setting == "emulate":
        return "emulate"
    return "cuda" if device.type == "cuda" and setting != "0" else "off"


class StepGraphs:
    """Captured graphs of one owner's step function, by key (shapes and anything else baked into the capture)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.mode = graphs_mode(device)
        self._graphs: dict[Hashable, tuple[Callable[[], object], torch.Tensor]] = {}
        self._pool = None
        self.captures = 0  # for tests and the bench: how often a step was captured
        self.replays = 0

    @property
    def enabled(self) -> bool:
        """Whether steps are captured (or emulated): their shapes then come in buckets."""
        return self.mode != "off"

    def clear(self) -> None:
        """Forget every graph (their buffers were reallocated)."""
        self._graphs.clear()

    def run(self, key: Hashable, step: Callable[[], torch.Tensor]) -> torch.Tensor:
        """`step()`'s result: replayed from the graph captured for `key`, else run (and captured for next time)."""
        found = self._graphs.get(key)
        if found is not None:
            self.replays += 1
            out = found[0]()
            return out if self.mode == "emulate" else found[1]
        if self.mode == "emulate":
            return self._trace(key, step)
        if self.mode != "cuda":
            return step()
        side = torch.cuda.Stream(self.device)  # the warm-up (the real step) on a side stream, as CUDA's recipe has it
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            out = step()
        torch.cuda.current_stream(self.device).wait_stream(side)
        self._capture(key, step)
        return out

    def _trace(self, key: Hashable, step: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The emulated capture: run `step` once under make_fx, keep the traced graph for the replays."""
        from torch.fx.experimental.proxy_tensor import make_fx

        outputs: list[torch.Tensor] = []
        graph = make_fx(lambda: outputs.append(step()) or outputs[-1])()
        self._graphs[key] = (graph, outputs[0])
        self.captures += 1
        return outputs[0]

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
            self.mode = "off"
            print(f"switchgen: CUDA graph capture failed ({err!r}); decoding eagerly", file=sys.stderr)
            return
        self._graphs[key] = (graph.replay, out)
        self.captures += 1
