"""Finding and loading checkpoints: hub ids, local folders, the toy kit, LoRA adapters."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from switchgen.errors import ModelLoadError

TOY_PREFIX = "toy:"
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


def load_tokenizer(location: str) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(location)
    except (OSError, ValueError) as err:
        raise ModelLoadError(_explain(location, err)) from None


def load_model(location: str, device: torch.device, dtype: torch.dtype | str) -> PreTrainedModel:
    try:
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype)
    except (OSError, ValueError) as err:
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
