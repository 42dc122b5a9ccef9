"""How the steps connect: `build_graph` wires the nodes to their backends into one compiled graph.

The public API of the graph: build it from a configuration (a preset name, a YAML path or a
SwitchConfig) and run it as any LangGraph graph. `calibrated_distribution` reads a digit-answering
model against the candidates' order as the switcher does (baselines that ask such a model use it).
"""

from switchgen.core.config import SwitchConfig, load_config
from switchgen.core.trace import Decision, Segment
from switchgen.graph.builder import build_graph
from switchgen.nodes.calibration import distribution as calibrated_distribution
from switchgen.nodes.state import SwitchState

__all__ = ["Decision", "Segment", "SwitchConfig", "SwitchState", "build_graph", "calibrated_distribution", "load_config"]
