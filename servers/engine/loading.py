"""Finding and loading checkpoints: hub ids, local folders, GGUF files, the toy kit, LoRA adapters.

A GGUF file (`model: path/to/model.gguf`, or `org/repo/model.gguf` on the hub) loads through
transformers' GGUF support (the `gguf` package): the weights are dequantised to the dtype asked
for, and the tokenizer and chat template come from the file's metadata.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from switchgen.errors import ModelLoadError

TOY_PREFIX = "toy:"
GGUF_SUFFIX = ".gguf"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model(spec: str) -> str:
    """A loadable location for `spec`: toy:NAME builds the toy kit on first use; a path must exist."""
    if spec.startswith(TOY_PREFIX):
        from switchgen.kits.toy import ensure_toy_models

        kit = ensure_toy_models()
        name = spec.removeprefix(TOY_PREFIX)
        if name not in kit:
            raise ModelLoadError(f"unknown toy model {spec!r}; the kit has {', '.join('toy:' + k for k in kit)}")
        return str(kit[name])
    path = Path(spec).expanduser()
    if path.exists():
        return str(path)
    if spec.endswith(GGUF_SUFFIX) and not spec.startswith((".", "/", "~")) and spec.count("/") >= 2:
        return spec  # a GGUF file in a hub repository: org/repo/file.gguf
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec:
        raise ModelLoadError(f"model path {spec} does not exist")
    return spec  # a hub id


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise ModelLoadError(f"unknown device {device!r}: {err}") from None


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


def load_tokenizer(location: str) -> PreTrainedTokenizerBase:
    where, extra = from_pretrained_args(location)
    try:
        return AutoTokenizer.from_pretrained(where, **extra)
    except (OSError, ValueError, ImportError) as err:
        raise ModelLoadError(_explain(location, err)) from None


def load_model(location: str, device: torch.device, dtype: torch.dtype | str) -> PreTrainedModel:
    where, extra = from_pretrained_args(location)
    if extra and dtype == "auto":
        dtype = torch.bfloat16 if device.type != "cpu" else torch.float32  # GGUF weights are dequantised
    try:
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
    return (
        f"cannot load {location!r}: {first} "
        "(for a hub id, download it first with `hf download ID` or check the spelling)"
    )
