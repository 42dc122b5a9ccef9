"""Graphs that differ from one configuration only in the candidates' stop strings and sampling.

A caller's stop strings (an lm-eval task's `until`, an API request's `stop`) become every
candidate's stop strings, so a patch ends where one appears, as a configured stop string ends it;
a caller's sampling (an API request's temperature, top_p) replaces the configuration's. Each
variant is built once over the same engine (nothing loads twice) and kept in a small LRU, so
callers choosing many different values cannot grow memory without bound.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from langgraph.graph.state import CompiledStateGraph

from switchgen.core.config import SwitchConfig, load_config
from switchgen.graph.builder import build_graph
from switchgen.servers.engine.local import LocalEngine


def variant_config(config: SwitchConfig, stop: Sequence[str] = (), sampling: Mapping[str, Any] | None = None) -> SwitchConfig:
    """`config` with `stop` added to every candidate's stop strings and `sampling` over its sampling."""
    data = config.model_dump()
    for cand in data["candidates"]:
        cand["stop"] = sorted(set(cand["stop"]) | set(stop))
    data["sampling"].update(sampling or {})
    return load_config(data)


class GraphVariants:
    """`get(stop, sampling)`: the configuration's graph with those stop strings and sampling, built once."""

    def __init__(self, config: SwitchConfig, engine: LocalEngine | None = None, *, keep: int = 16) -> None:
        self.config = config
        self.engine = engine or LocalEngine()
        self.keep = keep
        self._graphs: OrderedDict[tuple, CompiledStateGraph] = OrderedDict()
        self._lock = threading.Lock()  # callers run in threads (lm-eval's, the API's)

    def get(self, stop: Sequence[str] = (), sampling: Mapping[str, Any] | None = None) -> CompiledStateGraph:
        key = (tuple(sorted(set(stop))), tuple(sorted((sampling or {}).items())))
        with self._lock:
            graph = self._graphs.get(key)
            if graph is None:
                graph = build_graph(variant_config(self.config, stop, sampling), engine=self.engine)
                self._graphs[key] = graph
                while len(self._graphs) > self.keep:
                    self._graphs.popitem(last=False)
            self._graphs.move_to_end(key)
            return graph
