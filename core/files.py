"""Where switchgen keeps its files, and how it writes them so that no reader sees half a file."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from switchgen.core.errors import OutputError


def switchgen_home() -> Path:
    """$SWITCHGEN_HOME, default ~/.cache/switchgen: the kits, the chat threads, other caches."""
    home = os.environ.get("SWITCHGEN_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "switchgen"


def atomic_write_text(path: Path, text: str) -> None:
    """Replace `path` by `text` atomically: the old file stays whole until the new one is complete.

    A write that fails (a full disk, no permission) leaves the old file and no temporary one, and
    is an OutputError naming the path.
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path} ({err.strerror or err}); the previous file, if any, is unchanged") from None


def check_writable(path: Path, flag: str) -> None:
    """Refuse (OutputError naming `flag`) a file path this process cannot write, before any work is done.

    Tested by the calls a write makes, not guessed from permission bits: missing folders are
    created, an existing file is opened for appending, a new one created and removed again.
    """
    fix = f"choose another {flag}"
    if path.is_dir():
        raise OutputError(f"{flag} {path} is a folder; {fix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
        else:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
            os.unlink(path)
    except OSError as err:
        raise OutputError(f"cannot write {flag} {path} ({err.strerror or err}); {fix}") from None
