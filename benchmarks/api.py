"""Throughput of `switchgen api` driven by the `openai` client, by concurrency.

    python benchmarks/api.py [--queries 16] [--concurrency 1,4,8] [--max-tokens 128]

Serves the toy preset in this process (`switchgen api`'s app on a thread), then sends the same
chat requests at each concurrency through the official client and prints a markdown table of
completion tokens per second (wall clock: HTTP, the graph, switcher calls and all). A script,
not a test: its numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=16)
    parser.add_argument("--concurrency", default="1,4,8")
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

    import openai

    from switchgen.api import BackgroundAPI, create_api_app
    from switchgen.graph import load_config
    from switchgen.servers.serve.settings import ServiceSettings

    config = load_config("toy", seed=0, sampling={"ignore_eos": True})
    questions = [f"Question {i}: why is the sky blue?" for i in range(args.queries)]
    settings = ServiceSettings(max_concurrent_requests=64, access_log=False)
    with BackgroundAPI(create_api_app(config, "toy", settings=settings)) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)

        def ask(q: str) -> int:
            reply = client.chat.completions.create(
                model="toy", messages=[{"role": "user", "content": q}], max_tokens=args.max_tokens
            )
            return reply.usage.completion_tokens

        ask("warm-up")
        print("| concurrency | requests | tokens | seconds | tokens/s |\n|---:|---:|---:|---:|---:|")
        for n in (int(x) for x in args.concurrency.split(",")):
            start = time.perf_counter()
            with ThreadPoolExecutor(max_workers=n) as pool:
                tokens = sum(pool.map(ask, questions))
            seconds = time.perf_counter() - start
            print(f"| {n} | {len(questions)} | {tokens} | {seconds:.1f} | {tokens / seconds:.0f} |")


if __name__ == "__main__":
    main()
