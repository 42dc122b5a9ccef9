"""Finding and loading checkpoints: hub ids, local folders, GGUF files, the toy kit, LoRA adapters.

A GGUF file (`model: path/to/model.gguf`, or `org/repo/model.gguf` on the hub) loads through
transformers' GGUF support (the `gguf` package): the weights are dequantised to the dtype asked
for, and the tokenizer and chat template come from the file's metadata.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from switchgen.core.config import SwitchConfig
from switchgen.core.errors import ModelLoadError
from switchgen.kits.registry import KITS, kit_models

GGUF_SUFFIX = ".gguf"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model(spec: str) -> str:
    """A loadable location for `spec`: toy:NAME / skills:NAME build that kit on first use; a path must exist."""
    prefix, _, name = spec.partition(":")
    if name and prefix in KITS:
        kit = kit_models(prefix)
        if name not in kit:
            raise ModelLoadError(f"unknown {prefix} model {spec!r}; the kit has {', '.join(f'{prefix}:{k}' for k in kit)}")
        return str(kit[name])
    path = Path(spec).expanduser()
    if path.exists():
        return str(path)
    if spec.endswith(GGUF_SUFFIX) and not spec.startswith((".", "/", "~")) and spec.count("/") >= 2:
        return spec  # a GGUF file in a hub repository: org/repo/file.gguf
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec:
        raise ModelLoadError(f"model path {spec} does not exist")
    return spec  # a hub id


def model_revision(spec: str) -> str | None:
    """The version of `spec` a run would read, where known without loading it: a kit's version, the
    commit of a hub id in the local cache. None for a local folder or file, or a hub id not cached yet."""
    prefix, _, name = spec.partition(":")
    if name and prefix in KITS:
        return KITS[prefix].version
    if Path(spec).expanduser().exists():
        return None
    from huggingface_hub import try_to_load_from_cache

    repo, extra = from_pretrained_args(spec)
    try:
        found = try_to_load_from_cache(repo, extra.get("gguf_file", "config.json"))
    except ValueError:  # not a valid repo id: the load will say so
        return None
    parts = Path(found).parts if isinstance(found, str) else ()
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else None


def model_revisions(config: SwitchConfig, adapters: tuple[str | None, ...] = ()) -> dict[str, str | None]:
    """`model_revision` of every checkpoint and adapter a run of `config` reads in this process (a
    server's model is the server's business: unknown), for a run's fingerprint (core/fingerprint.py)."""
    specs = [c.model for c in config.candidates if c.backend == "local"]
    if config.switcher.strategy == "learned" and config.switcher_server().backend in (None, "local"):
        specs += [config.switcher_model, config.switcher.adapter]
    return {spec: model_revision(spec) for spec in [*specs, *adapters] if spec}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ModelLoadError(f"unknown device {device!r}: {err}") from None
    _check_available(dev, device)
    return dev


def _check_available(dev: torch.device, spec: str) -> None:
    """A device this machine has (`cuda:7` on a CPU-only torch fails here, not deep inside `.to()`)."""
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise ModelLoadError(f"device {spec!r}: this torch has no CUDA device; use device: cpu or auto")
        if dev.index is not None and dev.index >= count:
            raise ModelLoadError(f"device {spec!r}: there are {count} CUDA devices (cuda:0..cuda:{count - 1}); use one of them")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelLoadError(f"device {spec!r}: MPS is not available here; use device: cpu or auto")


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype | str:
    """`auto` keeps the checkpoint's dtype on accelerators and uses float32 on CPU (bf16 is slow there)."""
    if dtype == "auto":
        return torch.float32 if device.type == "cpu" else "auto"
    return _DTYPES[dtype]


def from_pretrained_args(location: str) -> tuple[str, dict[str, str]]:
    """(folder or repo, extra from_pretrained arguments): a GGUF file is its folder plus `gguf_file`."""
    if not location.endswith(GGUF_SUFFIX):
        return location, {}
    path = Path(location)
    if path.is_file():
        return str(path.parent), {"gguf_file": path.name}
    org, repo, rest = location.split("/", 2)
    return f"{org}/{repo}", {"gguf_file": rest}


@functools.cache
def hub_reachable() -> bool:
    """Whether the Hugging Face Hub answers a TCP connection (checked once per process, 3 s at most).

    Without it, loading a hub id that is not cached makes huggingface_hub retry for ~50 s before
    failing; with it, such a load goes to the local cache only and fails at once.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlsplit(os.environ.get("HF_ENDPOINT") or constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=3):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_or_cache(location: str) -> Iterator[None]:
    """Load `location` as usual; a hub id while the hub is unreachable from the local cache only.

    huggingface_hub's offline switch is what every transformers lookup honours (`local_files_only`
    is not passed on to all of them, e.g. the adapter-config probe); it is on only during the load:
    the TGI client refuses even local servers while it is set.
    """
    if Path(location).exists() or hub_reachable():
        yield
        return
    from huggingface_hub import constants

    with _OFFLINE_LOCK:
        previous, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, True
        try:
            yield
        finally:
            constants.HF_HUB_OFFLINE = previous


_OFFLINE_LOCK = threading.Lock()


def load_tokenizer(location: str) -> PreTrainedTokenizerBase:
    where, extra = from_pretrained_args(location)
    try:
        with _hub_or_cache(where):
            return AutoTokenizer.from_pretrained(where, **extra)
    except (OSError, ValueError, ImportError) as err:
        raise ModelLoadError(_explain(location, err)) from None


def load_model(location: str, device: torch.device, dtype: torch.dtype | str) -> PreTrainedModel:
    where, extra = from_pretrained_args(location)
    if extra and dtype == "auto":
        dtype = torch.bfloat16 if device.type != "cpu" else torch.float32  # GGUF weights are dequantised
    try:
        with _hub_or_cache(where):
            model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **extra)
    except (OSError, ValueError, ImportError) as err:
        raise ModelLoadError(_explain(location, err)) from None
    return model.to(device).eval()


def attach_adapter(model: torch.nn.Module, adapter: str, name: str) -> torch.nn.Module:
    """Add a LoRA adapter to `model` (wrapping it in a PeftModel once); the base weights stay shared."""
    from peft import PeftModel

    location = resolve_model(adapter)
    try:
        if isinstance(model, PeftModel):
            if name not in model.peft_config:
                model.load_adapter(location, adapter_name=name)
            return model
        return PeftModel.from_pretrained(model, location, adapter_name=name).eval()
    except (OSError, ValueError) as err:
        raise ModelLoadError(_explain(adapter, err)) from None


def _explain(location: str, err: Exception) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    offline = "" if Path(location).exists() or hub_reachable() else "; the Hugging Face Hub cannot be reached from here"
    return (
        f"cannot load {location!r}: {first}{offline} "
        "(for a hub id, download it first with `hf download ID` or check the spelling)"
    )
