"""Building a kit into its cache folder so that no reader ever sees half of one.

A kit is written into a temporary sibling folder, its version marker last, and renamed into
place; of two processes building at once, the loser of the rename uses the winner's kit.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from switchgen.core.errors import OutputError

MARKER = ".complete"


def is_complete(directory: Path, version: str) -> bool:
    """A kit counts only once its marker, written last, names the current version."""
    try:
        return (directory / MARKER).read_text().strip() == version
    except OSError:
        return False


def build_atomically(directory: Path, version: str, write: Callable[[Path], None], *, overwrite: bool = False) -> None:
    """Make `directory` a complete kit of `version` (`write(staging)` fills a folder), unless it is one already.

    Only a kit (a folder holding our marker, of any version) is ever replaced: a file, or a folder
    with anything in it and no marker, is refused (OutputError), so a mistyped path never deletes a
    user's files.
    """
    if not overwrite and is_complete(directory, version):
        return
    _check_replaceable(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-build-", dir=directory.parent))
    try:
        write(staging)
        (staging / MARKER).write_text(version + "\n")
        staging.chmod(0o755)  # mkdtemp made it private
        if directory.exists() and (overwrite or not is_complete(directory, version)):
            _discard(directory)
        try:
            os.rename(staging, directory)
        except OSError:
            # Someone else renamed a kit into place between our check and our rename.
            if not is_complete(directory, version):
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _check_replaceable(directory: Path) -> None:
    """Refuse a target that is not ours to replace: a file, or a non-empty folder that is not a kit."""
    if directory.is_symlink() or (directory.exists() and not directory.is_dir()):
        raise OutputError(f"{directory} is a file, not a kit folder: choose a new or empty folder")
    if directory.is_dir() and not (directory / MARKER).is_file() and any(directory.iterdir()):
        raise OutputError(
            f"{directory} is not empty and holds no switchgen kit: nothing in it was touched; "
            "choose a new or empty folder"
        )


def _discard(directory: Path) -> None:
    """Move a stale kit aside first (atomic), then delete it; tolerate a racing deleter."""
    trash = Path(tempfile.mkdtemp(prefix=f".{directory.name}-stale-", dir=directory.parent))
    try:
        os.rename(directory, trash / "kit")
    except FileNotFoundError:
        pass
    shutil.rmtree(trash, ignore_errors=True)
