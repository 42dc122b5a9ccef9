"""Where switchgen keeps its files, and how it writes them so that no reader sees half a file."""

from __future__ import annotations

import os
from pathlib import Path


def switchgen_home() -> Path:
    """$SWITCHGEN_HOME, default ~/.cache/switchgen: the kits, the chat threads, other caches."""
    home = os.environ.get("SWITCHGEN_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "switchgen"


def atomic_write_text(path: Path, text: str) -> None:
    """Replace `path` by `text` atomically: the old file stays whole until the new one is complete."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
