"""What shaped a resumable output, recorded beside it, so that a rerun never mixes two runs.

A rerun of `switchgen generate`, `eval`, `rollouts` or `distill` into an existing output resumes
it, which is only right when the same settings made the records already there. So every such
output gets a fingerprint: a JSON object of everything that shapes its records (the configuration
without where tokens come from, model revisions where known, seed, patch size, budget, adapter,
task, method...). It lives in a sidecar file written atomically before the first record
(`fingerprint_path`: FILE.fingerprint.json beside a records file; a folder output names its own),
so the records keep their format and one `json.load` shows what made them. A rerun compares its
own fingerprint with the recorded one and refuses a difference, naming it; an output with records
and no fingerprint (written before switchgen recorded them) is refused too, since nothing says
what made it. The ways out are in every message: the same settings, `--overwrite`, or a new output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from switchgen.core.config import SwitchConfig
from switchgen.core.errors import OutputError
from switchgen.core.files import atomic_write_text

SUFFIX = ".fingerprint.json"
FORMAT = 1
UNKNOWN = None  # a model revision nobody knows (a local folder, a server): matches any
# Where tokens come from and how long to wait for them: they do not shape the text, and a run may
# move between machines or servers and still resume.
OPERATIONAL = ("backend", "url", "api_key", "headers", "timeout", "connect_timeout", "retries", "device")
SHOWN = 3  # differences named in a message
_MISSING = object()


def fingerprint_path(records: Path) -> Path:
    """The sidecar of a records file: FILE.fingerprint.json beside it."""
    return records.with_name(records.name + SUFFIX)


def location(spec: str | None) -> str | None:
    """A model or adapter as a fingerprint names it: a local path resolved (`./a` and `a` are one
    folder), anything else (a hub id, `toy:A`) as written."""
    if spec is None or not Path(spec).expanduser().exists():
        return spec
    return str(Path(spec).expanduser().resolve())


def config_fingerprint(config: SwitchConfig) -> dict[str, Any]:
    """The configuration's settings that shape an answer (the operational ones dropped)."""
    data = config.model_dump(mode="json")
    for server in [*data["candidates"], data["switcher"]]:
        for key in OPERATIONAL:
            server.pop(key, None)
    return data


def read_fingerprint(path: Path) -> dict[str, Any] | None:
    """The fingerprint recorded in `path`; None when there is none (or it is not one)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("fingerprint"), dict):
        return None
    return data["fingerprint"]


def write_fingerprint(path: Path, fingerprint: dict[str, Any]) -> None:
    """Record `fingerprint` in `path`, atomically (a reader sees the old sidecar or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"switchgen_fingerprint": FORMAT, "fingerprint": fingerprint}
    atomic_write_text(path, json.dumps(payload, indent=1, sort_keys=True, ensure_ascii=False) + "\n")


def differences(old: Any, new: Any, where: str = "") -> list[str]:
    """Each setting that differs, as `path was OLD, now NEW` (a revision unknown on either side matches)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(old.keys() | new.keys()):
            path = f"{where}.{key}" if where else str(key)
            if key not in old or key not in new:
                out.append(f"{path} was {_show(old.get(key, _MISSING))}, now {_show(new.get(key, _MISSING))}")
            else:
                out += differences(old[key], new[key], path)
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new, strict=True)) for d in differences(a, b, f"{where}[{i}]")]
    if old == new or (".revisions." in f".{where}" and UNKNOWN in (old, new)):
        return []
    return [f"{where} was {_show(old)}, now {_show(new)}"]


def _show(value: Any) -> str:
    if value is _MISSING:
        return "(not set)"
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def ways_out(flag: str) -> str:
    return f"rerun with the settings it was made with to resume it, pass --overwrite to start over, or choose another {flag}"


def check_fingerprint(sidecar: Path, fingerprint: dict[str, Any], *, output: Path, flag: str) -> None:
    """Refuse (OutputError, one line) to add to `output`, which holds records, unless `sidecar`
    records this very fingerprint. The caller checks first that `output` holds something."""
    recorded = read_fingerprint(sidecar)
    if recorded is None:
        raise OutputError(
            f"{output} has no record of the settings that made it ({sidecar.name} is missing or unreadable: written "
            f"by an older switchgen, or by hand), so a rerun could mix two runs; {ways_out(flag)}"
        )
    diff = differences(recorded, fingerprint)
    if diff:
        more = f"; {len(diff) - SHOWN} more in {sidecar.name}" if len(diff) > SHOWN else ""
        raise OutputError(f"{output} was made with other settings ({'; '.join(diff[:SHOWN])}{more}); {ways_out(flag)}")
