"""`switchgen merge-switcher`: a LoRA switcher merged into its base model, for servers that lose
prefix caching with adapters (TGI turns it off when started with --lora-adapters)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from switchgen.core.config import SwitchConfig
from switchgen.core.errors import ConfigError
from switchgen.servers.engine.loading import attach_adapter, load_model, load_tokenizer, resolve_dtype, resolve_model


def merge_switcher(config: SwitchConfig, output: Path) -> Path:
    """The configuration's switcher (base + adapter) merged into `output`."""
    sw = config.switcher
    if sw.strategy != "learned" or not sw.adapter:
        raise ConfigError("the configuration's switcher has no adapter (switcher.adapter): nothing to merge")
    return merge_adapter(config.switcher_model, sw.adapter, output, config.switcher_dtype)


def merge_adapter(model: str, adapter: str, output: Path, dtype: str = "auto") -> Path:
    """Write `model` + `adapter`, merged (peft's merge_and_unload), with the base's tokenizer, to `output`."""
    if output.exists() and any(output.iterdir()):
        raise ConfigError(f"{output} exists and is not empty; choose another --output")
    location = resolve_model(model)
    # The checkpoint's own dtype unless the config names one (a CPU-only host must not widen it).
    torch_dtype = resolve_dtype(dtype, torch.device("cuda"))
    merged = attach_adapter(load_model(location, torch.device("cpu"), torch_dtype), adapter, "switcher").merge_and_unload()
    tmp = output.with_name(output.name + ".partial")  # no half-written model under `output`
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp)
    load_tokenizer(location).save_pretrained(tmp)
    if output.exists():
        output.rmdir()
    tmp.replace(output)
    return output
