"""How the steps connect: configuration, state, and the graph builder."""

from switchgen.graph.builder import build_graph
from switchgen.graph.config import SwitchConfig, load_config
from switchgen.graph.state import Decision, Segment, SwitchState

__all__ = ["Decision", "Segment", "SwitchConfig", "SwitchState", "build_graph", "load_config"]
