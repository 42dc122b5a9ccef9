"""Model soup: the element-wise mean of same-architecture checkpoints' weights, written once.

Plain state-dict averaging (mergekit's `linear` merge with equal weights), done in process from the
weights the engine already holds; the result is saved under `$SWITCHGEN_HOME/soups/<key>/` and
reused by later runs, then loaded by the engine like any checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

from switchgen.core.errors import ConfigError
from switchgen.core.files import switchgen_home
from switchgen.servers.engine.local import LocalBackend


def _fingerprint(location: str) -> list:
    """A checkpoint's identity: its location, and its files' sizes and times when it is a folder."""
    path = Path(location)
    if not path.is_dir():
        return [location]
    return [location, *sorted((p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in path.iterdir() if p.is_file())]


def _weights(backend: LocalBackend) -> torch.nn.Module:
    model = backend.loaded.model
    if hasattr(model, "peft_config"):  # a LoRA switcher is attached: average the checkpoint on disk instead
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(backend.loaded.location, dtype=torch.float32)
    return model


def soup_checkpoint(backends: Sequence[LocalBackend], root: Path | None = None) -> Path:
    """The folder of the averaged checkpoint of `backends` (built on first use)."""
    if len(backends) < 2:
        raise ConfigError("soup needs at least two in-process candidates")
    key = hashlib.sha256(json.dumps([_fingerprint(b.loaded.location) for b in backends]).encode()).hexdigest()[:16]
    folder = (root or switchgen_home() / "soups") / key
    if (folder / ".complete").is_file():
        return folder
    models = [_weights(b) for b in backends]
    first = models[0]
    states = [m.state_dict() for m in models]
    for b, m, state in zip(backends, models, states, strict=True):
        if type(m) is not type(first) or state.keys() != states[0].keys() or any(
            state[k].shape != states[0][k].shape for k in state
        ):
            raise ConfigError(
                f"soup needs one architecture: {b.loaded.location} ({type(m).__name__}) differs from "
                f"{backends[0].loaded.location} ({type(first).__name__})"
            )
    averaged = {
        k: torch.stack([s[k].detach().float().cpu() for s in states]).mean(dim=0).to(states[0][k].dtype)
        if states[0][k].is_floating_point()
        else states[0][k].detach().cpu()
        for k in states[0]
    }
    from transformers import AutoModelForCausalLM

    soup = AutoModelForCausalLM.from_config(first.config)
    soup.load_state_dict(averaged)
    if getattr(first, "generation_config", None) is not None:
        soup.generation_config = first.generation_config
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    soup.save_pretrained(tmp)
    backends[0].tokenizer.save_pretrained(tmp)
    (tmp / ".complete").write_text(json.dumps([b.loaded.location for b in backends]))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder
