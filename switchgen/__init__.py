"""switchgen: Switch Generation as a LangGraph graph.

Pretrained, finetuned and aligned checkpoints of one model family take turns writing one
response, a patch at a time; a switcher LM picks who writes next (arXiv 2510.09913).
"""

import os

# OpenMP reads its wait policy once, when torch loads (env only, no API): with the default, pool
# threads that finish a parallel region spin for a while, taking the cores the decode thread and
# other processes need on a busy machine. Passive threads sleep. A user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

__all__ = ["ChatSwitchGeneration", "LangChainLLMBackend", "__version__"]


def __getattr__(name: str):
    """Heavy exports load on first use: importing any switchgen module (switchgen.core.errors, the
    CLI) runs this file first, and must not load LangChain, the graph and torch with it."""
    if name == "ChatSwitchGeneration":
        from switchgen.chat_model import ChatSwitchGeneration

        return ChatSwitchGeneration
    if name == "LangChainLLMBackend":
        from switchgen.servers.clients.langchain import LangChainLLMBackend

        return LangChainLLMBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
