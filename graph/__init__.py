"""How the steps connect: configuration, state, and the graph builder.

`build_graph` is imported on first use, so that the node modules (which import the config and
state from here) can be imported on their own without an import cycle through the builder.
"""

from typing import TYPE_CHECKING, Any

from switchgen.config import SwitchConfig, load_config
from switchgen.graph.state import Decision, Segment, SwitchState

if TYPE_CHECKING:
    from switchgen.graph.builder import build_graph

__all__ = ["Decision", "Segment", "SwitchConfig", "SwitchState", "build_graph", "load_config"]


def __getattr__(name: str) -> Any:
    if name == "build_graph":
        from switchgen.graph.builder import build_graph

        return build_graph
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
