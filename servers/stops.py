"""Stop strings: where one cuts a patch, and how much of a growing text is safe to stream.

Every token source (the in-process engine, `switchgen serve`, the TGI, OpenAI and LangChain
backends) cuts and streams by these rules, so a patch ends at the same place whichever wrote it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


def first_stop(text: str, stop: Sequence[str]) -> tuple[int, str] | None:
    """Where the earliest stop string in `text` begins, and which one (empty strings never match)."""
    found = [(text.find(s), s) for s in stop if s and s in text]
    return min(found) if found else None


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """`text` up to the first stop string, and whether one was found."""
    hit = first_stop(text, stop)
    return (text[: hit[0]], True) if hit else (text, False)


def streamable(text: str, stop: Sequence[str]) -> str:
    """The part of an unfinished text that may be shown: without a trailing partial UTF-8
    character, nor a tail that could still grow into a stop string (and be cut)."""
    text = text.rstrip("\ufffd")
    held = max((k for s in stop if s for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
    return text[: len(text) - held]


class StopHoldback:
    """Streams a growing text to `emit`, cut at the first stop string, never showing what a stop
    string may still claim. `text` is everything added; `sent` what `emit` has received."""

    def __init__(self, emit: Callable[[str], None] | None, stop: Sequence[str]) -> None:
        self.emit = emit
        self.stop = [s for s in stop if s]
        self.text = ""
        self.sent = ""
        self.stopped = False

    def add(self, piece: str) -> None:
        self.text += piece
        visible, self.stopped = cut_at_stop(self.text, self.stop)
        self._send(visible if self.stopped else streamable(visible, self.stop))

    def finish(self, final: str | None = None) -> str:
        """The finished text (`final`, e.g. the server's own decoding, else what was added), cut at
        a stop string; whatever of it was not streamed yet is sent now."""
        text, stopped = cut_at_stop(self.text if final is None else final, self.stop)
        self.stopped = self.stopped or stopped
        self._send(text)
        return text

    def _send(self, visible: str) -> None:
        if len(visible) > len(self.sent) and visible.startswith(self.sent):
            if self.emit is not None:
                self.emit(visible[len(self.sent) :])
            self.sent = visible
