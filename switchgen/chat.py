"""`switchgen chat`: an interactive conversation, each answer streamed in its authors' colours.

Threads persist in SQLite (langgraph-checkpoint-sqlite): `--thread ID` resumes one, its earlier
turns shown first. `--review` pauses before each patch to let you pick its author.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import uuid
from collections.abc import Callable, Iterable
from contextlib import closing
from pathlib import Path
from typing import Any, TextIO

from switchgen.core.errors import InputError, SwitchgenError
from switchgen.core.files import switchgen_home

RESET = "\033[0m"
DIM = "\033[2m"
PALETTE = ("\033[36m", "\033[33m", "\033[35m", "\033[32m", "\033[34m", "\033[31m")  # cyan yellow magenta ...
EXIT_WORDS = {"/exit", "/quit", "/bye"}


def default_db() -> Path:
    """$SWITCHGEN_HOME/chat.sqlite (default ~/.cache/switchgen/chat.sqlite)."""
    return switchgen_home() / "chat.sqlite"


def use_color(mode: str, stream: TextIO) -> bool:
    if mode == "always":
        return True
    if mode == "never":
        return False
    return stream.isatty() and not os.environ.get("NO_COLOR")


class Painter:
    """Text coloured by candidate (ANSI), or plain."""

    def __init__(self, names: list[str], color: bool) -> None:
        self.color = color
        self.codes = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}

    def paint(self, candidate: str, text: str) -> str:
        return f"{self.codes.get(candidate, '')}{text}{RESET}" if self.color else text

    def dim(self, text: str) -> str:
        return f"{DIM}{text}{RESET}" if self.color else text


class ChatSession:
    """One thread of conversation with a compiled graph (with a checkpointer)."""

    def __init__(self, graph: Any, config: Any, thread: str, painter: Painter, out: TextIO, context: dict) -> None:
        self.graph = graph
        self.config = config
        self.run_config = {"configurable": {"thread_id": thread}}
        self.painter = painter
        self.out = out
        self.context = context

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def legend(self) -> str:
        parts = [self.painter.paint(c.name, f"■ {c.name} ({c.role})") for c in self.config.candidates]
        return "authors: " + "  ".join(parts)

    def history(self) -> list[Any]:
        return list(self.graph.get_state(self.run_config).values.get("messages") or [])

    def show_history(self, messages: Iterable[Any]) -> None:
        for message in messages:
            if message.type == "human":
                self.write(f"you> {message.text}\n")
            elif message.type == "ai":
                segments = message.response_metadata.get("segments") or []
                body = "".join(self.painter.paint(s["candidate"], s["text"]) for s in segments) or message.text
                self.write(f"switchgen> {body}\n")

    def turn(self, query: str, ask: Callable[[str], str]) -> None:
        """Answer one question, streaming; in review mode ask for each patch's author."""
        from langgraph.types import Command

        self.write("switchgen> ")
        run_input: Any = {"query": query}
        while True:
            final = self._stream(run_input)
            pending = self.graph.get_state(self.run_config).interrupts
            if not pending:
                break
            run_input = Command(resume=self._review(pending[0].value, ask))
        self.write("\n" + self.painter.dim(self._summary(final)) + "\n")

    def _stream(self, run_input: Any) -> dict:
        final: dict = {}
        for mode, data in self.graph.stream(
            run_input, self.run_config, context=self.context or None, stream_mode=["custom", "values"]
        ):
            if mode == "custom" and isinstance(data, dict) and "candidate" in data:
                self.write(self.painter.paint(data["candidate"], data["text"]))
            elif mode == "values":
                final = data
        return final

    def _review(self, payload: dict, ask: Callable[[str], str]) -> str:
        if payload.get("error"):
            self.write("\n" + payload["error"])
        probs = payload.get("probabilities")
        shown = " ".join(f"{name}={p:.2f}" for name, p in probs.items()) if probs else "(no distribution: " + payload["how"] + ")"
        self.write(f"\n[patch {payload['step']}] switcher proposes {payload['proposed']}  {shown}\n")
        answer = ask(f"author [{'/'.join(payload['candidates'])}] (Enter: {payload['proposed']})> ").strip()
        return answer or payload["proposed"]

    @staticmethod
    def _summary(final: dict) -> str:
        decisions = final.get("decisions") or []
        authors = " ".join(d["chosen"] + ("*" if d["how"] == "review" else "") for d in decisions)
        segments = final.get("segments") or []
        finish = segments[-1].get("finish_reason") if segments else "-"
        return f"[{authors} | {final.get('tokens_used', 0)}/{final.get('max_new_tokens', 0)} tokens | {finish}]"


_TABLES = {  # langgraph-checkpoint-sqlite's tables and the columns it reads
    "checkpoints": {"thread_id", "checkpoint_ns", "checkpoint_id", "parent_checkpoint_id", "type", "checkpoint", "metadata"},
    "writes": {"thread_id", "checkpoint_ns", "checkpoint_id", "task_id", "idx", "channel", "type", "value"},
}


def open_threads(path: Path, saver_class: Any) -> tuple[sqlite3.Connection, Any]:
    """The chat database at `path` and its checkpointer, checked first, read-only: a file that is not
    SQLite, or a SQLite file of something else, is an InputError naming it (and is left as it was),
    not a traceback at the first question."""
    fix = "choose another --db (a new file is created)"
    if path.is_dir():
        raise InputError(f"--db {path} is a folder; {fix}")
    if path.exists():
        try:
            with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)) as probe:
                tables = {
                    name: {row[1] for row in probe.execute(f"PRAGMA table_info('{name}')")}
                    for (name,) in probe.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                }
        except sqlite3.Error as err:
            what = "is in use by another process" if "locked" in str(err) else "is not a SQLite database"
            raise InputError(f"--db {path} {what} ({err}); {fix}") from None
        ours = {name: cols for name, cols in tables.items() if name in _TABLES}
        if tables and (set(ours) != set(_TABLES) or any(not _TABLES[n] <= cols for n, cols in ours.items())):
            raise InputError(f"--db {path} is a SQLite database of something else (tables: {sorted(tables)}); {fix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _check_writable(path)
        conn = sqlite3.connect(str(path), check_same_thread=False)
    except (sqlite3.Error, OSError) as err:
        raise InputError(f"--db {path}: cannot open the chat database for writing ({err}); {fix}") from None
    return conn, saver_class(conn)


def _check_writable(path: Path) -> None:
    """A write that is rolled back, within a second: a read-only or locked database fails now, not at the first answer."""
    with closing(sqlite3.connect(str(path), timeout=1.0)) as probe:
        probe.execute("BEGIN IMMEDIATE")
        probe.execute("CREATE TABLE IF NOT EXISTS switchgen_write_probe (x)")
        probe.rollback()


def run_chat(
    config: Any,
    *,
    db: Path | None,
    thread: str | None,
    color: str,
    review: bool,
    ask: Callable[[str], str] | None = None,
    out: TextIO | None = None,
) -> int:
    """The interactive loop: read a line (`ask`, default input()), answer it; EOF or /exit ends it."""
    ask = ask or input
    out = out or sys.stdout
    from langgraph.checkpoint.sqlite import SqliteSaver

    from switchgen.graph import build_graph

    path = db or default_db()
    conn, saver = open_threads(path, SqliteSaver)  # before any model loads
    with closing(conn):
        graph = build_graph(config, checkpointer=saver)
        thread = thread or uuid.uuid4().hex[:8]
        painter = Painter(config.names, use_color(color, out))
        session = ChatSession(graph, config, thread, painter, out, {"review": True} if review else {})
        earlier = session.history()
        session.write(session.legend() + "\n")
        if earlier:
            session.write(session.painter.dim(f"thread {thread}: {len(earlier)} earlier messages") + "\n")
            session.show_history(earlier)
        else:
            session.write(session.painter.dim(f"thread {thread} (resume it with --thread {thread}); /exit ends") + "\n")
        while True:
            try:
                line = ask("you> ")
            except EOFError:
                session.write("\n")
                break
            except KeyboardInterrupt:
                session.write("\n")
                break
            query = line.strip()
            if not query:
                continue
            if query in EXIT_WORDS:
                break
            try:
                session.turn(query, ask)
            except SwitchgenError as err:  # this question (too long, a server down): say so, keep the thread
                session.write("\n" + session.painter.dim(f"(not answered: {err})") + "\n")
            except EOFError:  # input ended while a review waited for an answer
                session.write("\n")
                break
            except KeyboardInterrupt:
                session.write("\n" + session.painter.dim("(stopped; the next question starts a new turn)") + "\n")
        session.write(session.painter.dim(f"thread {thread} saved in {path}") + "\n")
    return 0
