"""transformers' continuous batching against switchgen's engine, same model, same prompts, side by side.

Before writing our own GPU decode path (issue 22) we measured what transformers 5.x ships:
`model.generate_batch` over its ContinuousBatchingManager (paged KV cache, block sharing, CUDA
graphs, chunked prefill). Both sides write `--budget` greedy tokens (EOS ignored) for each of
`--prompts` chat prompts, interleaved after a warm-up; the greedy tokens are compared too.

    python benchmarks/continuous_batching.py                                  # toy kit, CPU
    python benchmarks/continuous_batching.py --config big/1b.yaml --device cuda --prompts 32 --budget 256

The aligned candidate of the configuration is the model; transformers gets its own copy (its manager
switches the attention implementation of the model it runs).
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import torch
from transformers import AutoModelForCausalLM, ContinuousBatchingConfig, GenerationConfig

from switchgen.bench_runs import queries_for
from switchgen.core.config import load_config
from switchgen.core.prompts import chat_prefix
from switchgen.servers.base import GenerationParams
from switchgen.servers.engine.local import LocalEngine
from switchgen.servers.engine.requests import Request


def ours(backend, ids: list[list[int]], budget: int) -> tuple[float, list[list[int]]]:
    params = GenerationParams(max_new_tokens=budget, greedy=True, ignore_eos=True)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(ids)) as pool:
        done = list(pool.map(lambda i: backend.worker.run(backend, Request(list(i), params)), ids))
    return time.perf_counter() - start, [r.out for r in done]


def theirs(model, ids: list[list[int]], budget: int, device: str) -> tuple[float, list[list[int]]]:
    config = GenerationConfig(max_new_tokens=budget, do_sample=False, eos_token_id=-1, pad_token_id=0)
    cb = ContinuousBatchingConfig(use_cuda_graph=True if device.startswith("cuda") else False)
    start = time.perf_counter()
    out = model.generate_batch(ids, generation_config=config, continuous_batching_config=cb, progress_bar=False)
    seconds = time.perf_counter() - start
    return seconds, [list(r.generated_tokens) for r in out.values()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="toy")
    parser.add_argument("--config")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--budget", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    cfg = load_config(args.config or args.preset)
    cand = cfg.candidates[cfg.aligned_index]
    engine = LocalEngine(reuse_cache=False)  # every call prefills its prompt, as generate_batch does
    backend = engine.backend(cand.model, device=args.device, dtype=cand.dtype)
    ids = [backend.encode(chat_prefix(backend.tokenizer, q)) for q in queries_for(args.prompts)]
    model = AutoModelForCausalLM.from_pretrained(
        backend.loaded.location, dtype=backend.loaded.model.dtype, attn_implementation="sdpa"
    ).to(args.device).eval()
    runs: dict[str, list[float]] = {"switchgen": [], "transformers": []}
    tokens: dict[str, list[list[int]]] = {}
    for rep in range(args.reps + 1):  # the first is the warm-up
        for name in (["switchgen", "transformers"] if rep % 2 else ["transformers", "switchgen"]):
            with torch.inference_mode():
                seconds, tokens[name] = (ours(backend, ids, args.budget) if name == "switchgen"
                                         else theirs(model, ids, args.budget, args.device))
            if rep:
                runs[name].append(seconds)
        print(f"rep {rep}/{args.reps}", {n: [round(s, 2) for s in r] for n, r in runs.items()}, flush=True)
    total = args.prompts * args.budget
    print(f"\n{args.prompts} prompts x {args.budget} greedy tokens on {args.device} ({cand.model}), "
          f"median of {args.reps} interleaved reps after a warm-up")
    print("| engine | median s | tokens/s |\n|---|---:|---:|")
    for name, secs in runs.items():
        print(f"| {name} | {statistics.median(secs):.3f} | {total / statistics.median(secs):.0f} |")
    ratio = statistics.median(runs["transformers"]) / statistics.median(runs["switchgen"])
    same = sum(a == b for a, b in zip(tokens["switchgen"], tokens["transformers"], strict=True))
    print(f"\ntransformers' time / switchgen's: {ratio:.2f}; prompts with identical greedy tokens: {same}/{args.prompts}")


if __name__ == "__main__":
    main()
