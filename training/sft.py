"""LoRA SFT with TRL, as switcher training and distillation both run it.

One model, one trainer, completion-only loss on pre-tokenised examples (`input_ids` +
`completion_mask`: the trained tokens are the ones inference scores or writes), and the result
written beside `out` first and renamed into place, so nothing half-written is ever under `out`.
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from switchgen.core.errors import ConfigError
from switchgen.servers.engine.loading import load_model, load_tokenizer, resolve_device, resolve_dtype, resolve_model


@dataclass(frozen=True)
class SFTJob:
    """What one fine-tuning run needs besides its data."""

    base: str  # the model to fine-tune (id, folder or kit spec)
    epochs: float
    batch_size: int
    lr: float
    lora_r: int
    seed: int
    progress: bool = True
    trainable_tokens: tuple[int, ...] = ()  # embedding rows that train too (the switcher's digits)
    merge: bool = False  # save base + adapter merged (a checkpoint for inference), else the adapter


def require_trl(command: str) -> None:
    """A one-line error naming the install when TRL is missing."""
    try:
        import trl  # noqa: F401
    except ImportError as err:
        raise ConfigError(f"switchgen {command} needs TRL ({err.name} is missing): pip install 'switchgen[train]'") from None


def check_out(out: Path) -> None:
    """Refuse an output folder that holds anything (or is a file): training never overwrites."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not an empty folder; choose another --out")


def is_first_process() -> bool:
    """Under `accelerate launch` every process trains; the first one alone measures and writes."""
    return int(os.environ.get("RANK", "0")) == 0


def fine_tune(job: SFTJob, examples: list[dict[str, list[int]]], out: Path) -> float | None:
    """LoRA SFT of `job.base` on `examples`, saved into `out`; the train loss (None on processes other than the first)."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig

    location = resolve_model(job.base)
    tokenizer = load_tokenizer(location)
    device = resolve_device("auto")
    on_gpu = device.type == "cuda"
    model = load_model(location, torch.device("cpu"), resolve_dtype("auto", device))  # the trainer places it
    model.train()
    work = Path(tempfile.mkdtemp(prefix="switchgen-sft-"))
    try:
        args = SFTConfig(
            output_dir=str(work), num_train_epochs=job.epochs, per_device_train_batch_size=job.batch_size,
            learning_rate=job.lr, seed=job.seed, data_seed=job.seed,
            completion_only_loss=True, max_length=None,  # never truncate: the trained tokens come last
            use_cpu=not on_gpu, bf16=on_gpu and torch.cuda.is_bf16_supported(), activation_checkpointing=on_gpu,
            save_strategy="no", report_to="none", logging_steps=10, disable_tqdm=not job.progress,
        )
        lora = LoraConfig(r=job.lora_r, lora_alpha=2 * job.lora_r, lora_dropout=0.0, target_modules="all-linear",
                          trainable_token_indices=list(job.trainable_tokens) or None, task_type="CAUSAL_LM")
        trainer = _trainer_class(bool(job.trainable_tokens))(
            model=model, args=args, train_dataset=Dataset.from_list(examples), processing_class=tokenizer, peft_config=lora)
        quiet_when_asked(trainer, job.progress)
        loss = float(trainer.train().training_loss)
        if not trainer.is_world_process_zero():
            return None
        partial = _save(trainer.model, tokenizer, out, job.merge)
        del trainer, model
    finally:
        shutil.rmtree(work, ignore_errors=True)
    gc.collect()
    if on_gpu:
        torch.cuda.empty_cache()
    if out.exists():
        out.rmdir()  # empty (check_out): anything in it now is someone else's, and rmdir refuses it
    partial.replace(out)
    return loss


def _save(model: Any, tokenizer: Any, out: Path, merge: bool) -> Path:
    """The adapter (or the merged model) and the tokenizer, in a folder beside `out`."""
    partial = out.with_name(out.name + ".partial")  # nothing half-written under `out`
    shutil.rmtree(partial, ignore_errors=True)
    if merge:
        model = model.merge_and_unload()
        model.config.use_cache = True  # training switched the KV cache off; the checkpoint is for inference
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    return partial


def _trainer_class(own_loss: bool) -> type:
    from trl import SFTTrainer

    if not own_loss:
        return SFTTrainer

    class SwitcherTrainer(SFTTrainer):
        """The loss from the model's own forward: TRL's fused LM-head loss reads the head's base
        weight, which would leave out the trained digit rows (peft's trainable tokens)."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            outputs = model(**inputs)
            return (outputs.loss, outputs) if return_outputs else outputs.loss

    return SwitcherTrainer


def quiet_when_asked(trainer: Any, progress: bool) -> None:
    """With progress off (`--no-progress`, a notebook) the trainer prints nothing per step: transformers
    swaps its bar for a printer of every log dict. The final loss is in the command's summary."""
    if not progress:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
