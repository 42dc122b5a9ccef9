"""The module-level compiled graph that langgraph.json names (`langgraph dev`, Platform).

Configured by environment: SWITCHGEN_CONFIG is a preset name or a YAML path (default: the
embedded default preset).
"""

import os

from switchgen.core.config import DEFAULT_PRESET, load_config
from switchgen.graph.builder import build_graph

graph = build_graph(load_config(os.environ.get("SWITCHGEN_CONFIG", DEFAULT_PRESET)))
