"""JSONL read and written by one pair of functions, so every record written reads back as it was.

`dumps_record` writes one record as one line of strict JSON; `loads_record` reads one line back.
Between them every record round-trips, whatever its strings hold:

* Line separators that are not "\\n" (U+2028, U+2029, U+0085) are escaped: raw, they split a
  line for `str.splitlines` and for many JSONL readers. Lines are split on b"\\n" only
  (`split_lines`).
* Lone surrogates (``"\\ud800"`` is legal JSON, and Python keeps it in a str) are escaped too:
  raw, they cannot be encoded as UTF-8 at all.
* NaN and Infinity are not JSON: refused on both sides with a one-line InputError (Python's
  json module would write them as the non-standard tokens NaN/Infinity and read them back).

Text a model must read is checked separately (`invalid_text`): a lone surrogate round-trips
here but cannot be tokenised.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from switchgen.core.errors import InputError

# Escaped on output: line breaks other than "\n" that json.dumps(ensure_ascii=False) leaves raw,
# and lone surrogates (unencodable as UTF-8).
_UNSAFE = re.compile("[\u0085\u2028\u2029\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (use null or a string)")


def dumps_record(record: Any) -> str:
    """`record` as one line of strict JSON (no newline at the end); InputError if it holds NaN or inf."""
    try:
        text = json.dumps(record, ensure_ascii=False, allow_nan=False)
    except ValueError as err:
        raise InputError(f"cannot write the record as JSON: {err} (NaN and Infinity are not JSON)") from None
    except TypeError as err:
        raise InputError(f"cannot write the record as JSON: {err}") from None
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def loads_record(line: bytes | str, where: str = "line") -> Any:
    """One JSONL line (strict UTF-8, strict JSON: no NaN/Infinity) back to its value; InputError otherwise."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{where}: not UTF-8 text") from None
    try:
        return json.loads(line, parse_constant=_refuse_constant)
    except json.JSONDecodeError as err:
        raise InputError(f"{where}: not valid JSON ({err.msg})") from None
    except ValueError as err:
        raise InputError(f"{where}: not valid JSON ({err})") from None
    except RecursionError:
        raise InputError(f"{where}: not valid JSON (nested too deeply)") from None


def split_lines(data: bytes) -> list[bytes]:
    """The lines of a JSONL file's bytes, split on b"\\n" only (a final line without one included)."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


def append_record(fd: int, record: Any) -> None:
    """Append `record` as one line to the file open (O_APPEND, unbuffered) at `fd`, then fsync it.

    All or nothing: when the disk is full (or any write fails) the part already written is cut
    off again before the error is raised, so the file never ends in a torn line.
    """
    data = (dumps_record(record) + "\n").encode("utf-8")
    start = os.lseek(fd, 0, os.SEEK_END)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError:
        try:
            os.ftruncate(fd, start)
        except OSError:
            pass
        raise


def invalid_text(text: str) -> str | None:
    """Why `text` cannot be given to a tokenizer (a lone surrogate is not Unicode text), or None."""
    match = _SURROGATE.search(text)
    if match is None:
        return None
    return f"holds a lone surrogate (\\u{ord(match.group()):04x} at character {match.start()}), which is not valid Unicode text"
