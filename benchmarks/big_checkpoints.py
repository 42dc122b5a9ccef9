"""Random-weight Llama checkpoints of real sizes with the toy kit's tokenizer, and a configuration for them.

No hub is needed: the checkpoints are built here (bf16; on the GPU when there is one), so anyone with a
GPU can time the engine at real size (benchmarks/gpu.sh). Random weights rarely emit EOS with this
vocabulary, and the configuration ignores EOS anyway: every run writes its full budget.

    python benchmarks/big_checkpoints.py OUT 1b            # OUT/1b-{P,F,A}, OUT/1b.yaml (device cuda)
    python benchmarks/big_checkpoints.py OUT 8b --models A # one 8B checkpoint: P, F, A and the switcher share it
    python benchmarks/big_checkpoints.py OUT tiny --device cpu   # the script itself, checked on CPU

Shapes: 1b is Llama 3.2 1B's (hidden 2048, 16 layers, 32 heads, 8 KV heads, MLP 8192); 8b is Llama 3
8B's (hidden 4096, 32 layers, 32 heads, 8 KV heads, MLP 14336); both with the toy kit's ~700-token
vocabulary, so the embedding and LM head are small and the layers carry the weight.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import yaml
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8),
}
ROLES = {"P": "pretrained", "F": "finetuned", "A": "aligned"}


def build(out: Path, shape: str, name: str, seed: int, tokenizer, device: str) -> Path:
    """One checkpoint OUT/SHAPE-NAME (skipped when it is already there)."""
    folder = out / f"{shape}-{name}"
    if (folder / "config.json").is_file():
        return folder
    start = time.perf_counter()
    config = LlamaConfig(
        vocab_size=len(tokenizer), max_position_embeddings=4096, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        **SHAPES[shape],
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    params = sum(p.numel() for p in model.parameters()) / 1e9
    print(f"{folder}: {params:.2f}B parameters in {time.perf_counter() - start:.0f} s", flush=True)
    return folder


def configuration(folders: dict[str, Path], device: str) -> dict:
    """Candidates P, F, A (the given folders; a missing role reuses the aligned one) and A as the switcher."""
    aligned = str(folders["A"])
    where = {"device": device, "dtype": "bfloat16" if device != "cpu" else "float32"}
    candidates = [{"name": n, "role": role, "model": str(folders.get(n, aligned)), **where} for n, role in ROLES.items()]
    return {
        "candidates": candidates,
        "switcher": {"strategy": "learned", "model": aligned, "top_p": 0.7, **where},
        "patch_size": 50,
        "max_new_tokens": 512,
        "sampling": {"ignore_eos": True},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("shape", choices=sorted(SHAPES))
    parser.add_argument("--models", default="PFA", help="which of P, F, A to build (default all)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    from switchgen.kits.toy import ensure_toy_models

    tokenizer = AutoTokenizer.from_pretrained(ensure_toy_models()["A"])
    args.out.mkdir(parents=True, exist_ok=True)
    names = [n for n in "PFA" if n in args.models.upper()]
    if "A" not in names:
        parser.error("--models must include A (the aligned model, also the switcher)")
    folders = {n: build(args.out, args.shape, n, i, tokenizer, args.device) for i, n in enumerate(names)}
    path = args.out / f"{args.shape}.yaml"
    path.write_text(yaml.safe_dump(configuration(folders, args.device), sort_keys=False))
    print(f"configuration: {path}", flush=True)


if __name__ == "__main__":
    main()
