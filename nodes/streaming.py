"""Tokens with their author: custom stream events {candidate, text, patch} from the generator nodes.

`graph.stream(..., stream_mode="custom")` yields one event per piece of decoded text, tagged with
the candidate writing it and the patch (the segment's position in the trace). Joined, a patch's
events are exactly its segment's text, even for a backend that does not stream (one event then).
The same pieces go to the patch's run in LangChain's callbacks (nodes/tracing.py), which is what
`stream_mode="messages"` streams.
"""

from __future__ import annotations

from typing import TypedDict

from langgraph.config import get_config, get_stream_writer
from langgraph.types import StreamWriter

from switchgen.nodes.tracing import PatchRun


class TokenEvent(TypedDict):
    candidate: str
    text: str
    patch: int


# Set by the graph (graph/compiled.py) to whether the run's custom stream is read: outside `custom`
# mode LangGraph hands nodes a writer that does nothing, and says nowhere else that nobody reads.
# Absent (the nodes in a graph of one's own): a patch is streamed.
WATCHED_KEY = "switchgen_tokens_watched"


def _writer() -> StreamWriter | None:
    """The run's custom-stream writer, or None outside a graph run (a node used on its own) or when
    the run's custom stream is not read."""
    try:
        writer = get_stream_writer()
        watched = (get_config().get("configurable") or {}).get(WATCHED_KEY, True)
    except RuntimeError:
        return None
    return writer if watched else None


class PatchStream:
    """Sends one patch's text as it is written; `complete` sends whatever the backend did not."""

    def __init__(self, candidate: str, patch: int, run: PatchRun | None = None) -> None:
        self.candidate = candidate
        self.patch = patch
        self.sent = ""
        self.run = run
        self._write = _writer()

    @property
    def listening(self) -> bool:
        """Whether anyone receives the patch's text as it is written: the custom stream, a callback run
        (LangGraph's `messages` mode, a tracer). Nobody: the backend need not stream (no detokenising
        per token, no events across threads)."""
        return self._write is not None or (self.run is not None and self.run.run is not None)

    def emit(self, text: str) -> None:
        if not text:
            return
        self.sent += text
        if self._write is not None:
            self._write(TokenEvent(candidate=self.candidate, text=text, patch=self.patch))
        if self.run is not None:
            self.run.token(text)

    def complete(self, text: str) -> None:
        """Send the rest of the patch's final `text` (a backend that streamed nothing sends it all here)."""
        if text.startswith(self.sent):
            self.emit(text[len(self.sent):])
