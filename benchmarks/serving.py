"""Throughput of `switchgen generate` through TGI-protocol servers and in process, by concurrency.

    python benchmarks/serving.py [--queries 32] [--concurrency 1,4,16] [--max-new-tokens 256]

Starts `switchgen serve --preset toy` in a subprocess (the servers get their own process, as a
deployment would), then runs the same toy queries through the tgi backend and through the
in-process engine at each concurrency, and prints a markdown table of generated tokens per
second (wall clock of the whole job: switcher calls, prompts, HTTP and all). A script, not a
test: its numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUESTIONS = [
    "Why is the sky blue?",
    "Write a short poem about a lighthouse keeper.",
    "What happens if you crack your knuckles a lot?",
    "Natalia sold 48 clips in April and half as many in May. How many in total?",
    "Explain photosynthesis to a child.",
    "Name three rivers in Africa.",
    "What is 12 times 7?",
    "Give me a recipe for pancakes.",
]


def start_servers() -> tuple[subprocess.Popen, dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "switchgen.cli", "serve", "--preset", "toy", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, start_new_session=True,
    )
    urls: dict[str, str] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        found = re.match(r"\s+(http://127\.0\.0\.1:\d+)\s+\S+\s+(.+)$", line)
        if found:
            urls[found.group(2).strip()] = found.group(1)
        if line.strip() == "ready":
            return proc, urls
    raise SystemExit("switchgen serve did not start")


def run(config_dict: dict, inputs: list[dict], concurrency: int, workdir: Path) -> tuple[int, float]:
    """(tokens generated, seconds) for one `switchgen generate` job; models are loaded before timing."""
    from switchgen.generate import run_file
    from switchgen.graph import build_graph, load_config
    from switchgen.servers.engine.local import LocalEngine

    config = load_config(config_dict)
    graph = build_graph(config, engine=LocalEngine())
    out = workdir / f"out-{time.monotonic_ns()}.jsonl"
    t0 = time.perf_counter()
    result = run_file(graph, config, inputs, out, progress=False, concurrency=concurrency)
    seconds = time.perf_counter() - t0
    assert result.failed == 0, f"{result.failed} queries failed"
    tokens = sum(json.loads(line)["generation_log"]["tokens_used"] for line in out.read_text().splitlines())
    return tokens, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=32)
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--patch-size", type=int, default=50)
    args = parser.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from switchgen.graph import load_config

    base = load_config("toy", seed=0, max_new_tokens=args.max_new_tokens, patch_size=args.patch_size).model_dump()
    inputs = [{"input": f"{QUESTIONS[i % len(QUESTIONS)]} ({i})"} for i in range(args.queries)]
    proc, urls = start_servers()
    rows = []
    try:
        served = json.loads(json.dumps(base))
        for cand in served["candidates"]:
            cand.update(backend="tgi", url=urls[cand["name"]])
        served["switcher"].update(backend="tgi", url=urls["switcher"], top_n_tokens=1024)
        with tempfile.TemporaryDirectory() as tmp:
            for name, config in (("TGI-protocol servers (`switchgen serve`)", served), ("in process", base)):
                run(config, inputs[:2], 1, Path(tmp))  # warm-up: imports, tokenizers, weights
                for level in levels:
                    tokens, seconds = run(config, inputs, level, Path(tmp))
                    rows.append((name, level, tokens, seconds))
                    print(f"{name}, concurrency {level}: {tokens} tokens in {seconds:.1f} s", file=sys.stderr)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)

    import torch

    print(f"\n{args.queries} toy queries, budget {args.max_new_tokens} tokens, patches of {args.patch_size}; "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs\n")
    print("| token source | concurrency | tokens | seconds | tokens/s |")
    print("|---|---:|---:|---:|---:|")
    for name, level, tokens, seconds in rows:
        print(f"| {name} | {level} | {tokens} | {seconds:.1f} | {tokens / seconds:.0f} |")


if __name__ == "__main__":
    main()
