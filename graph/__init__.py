"""How the steps connect: `build_graph` wires the nodes to their backends into one compiled graph.

The public API of the graph: build it from a configuration (a preset name, a YAML path or a
SwitchConfig) and run it as any LangGraph graph.
"""

from switchgen.core.config import SwitchConfig, load_config
from switchgen.core.trace import Decision, Segment
from switchgen.graph.builder import build_graph
from switchgen.nodes.state import SwitchState

__all__ = ["Decision", "Segment", "SwitchConfig", "SwitchState", "build_graph", "load_config"]
