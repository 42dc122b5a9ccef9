"""A `switchgen eval`-shaped output folder made by real graph runs on the toy kit.

Stand-in until the eval branch's engine lands: each method is a real graph run (the switcher, random
switching, each candidate alone), scored by a real task's metric (switchgen.tasks), written in the
layout of CONTRACTS.md: DIR/<task>/<method>.jsonl. No number in it is written by hand.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

# Each reference is a few aliases (the metric: contains any), words the toy models' vocabulary writes
# often enough that some answers score 1 and others 0.
QUESTIONS = [
    ("What is 2 plus 3?", ["to", "is", "plus"]), ("Name a colour.", ["it", "by", "red"]),
    ("Why is the sky blue?", ["with", "or", "sky"]), ("Write about the moon.", ["moon", "you", "he"]),
    ("What is the capital of France?", ["to", "it", "is"]),
]
METHODS = {
    "single:P": {"strategy": "single", "candidate": "P"},
    "single:F": {"strategy": "single", "candidate": "F"},
    "single:A": {"strategy": "single", "candidate": "A"},
    "switch": {"strategy": "learned", "model": "toy:switcher", "top_p": 0.9},
    "random": {"strategy": "random"},
}


def toy_task(folder: Path):
    from switchgen.tasks import load_task

    data = folder / "toy-words.jsonl"
    data.write_text("".join(json.dumps({"question": q, "word": w}) + "\n" for q, w in QUESTIONS))
    return load_task({"name": "toy-words", "test": {"path": str(data)}, "train": {"path": str(data)},
                      "query": "{question}", "reference": "word", "metric": "contains"})


def write_eval_dir(root: Path, engine, config_dict) -> Path:
    """Run every method on the toy task and write DIR/toy-words/<method>.jsonl; returns DIR."""
    from switchgen.graph import build_graph, load_config

    root.mkdir(parents=True, exist_ok=True)
    task = toy_task(root)
    records = task.records("test")
    metric = task.metric()
    (root / task.name).mkdir(exist_ok=True)
    for method, switcher in METHODS.items():
        graph = build_graph(load_config(config_dict(switcher=switcher, patch_size=6, max_new_tokens=30)), engine=engine)
        results, seconds = [], []
        for i, record in enumerate(records):
            start = time.perf_counter()
            results.append(graph.invoke({"query": record["query"]}, context={"seed": i}))
            seconds.append(time.perf_counter() - start)
        scores = metric.score([r["output"] for r in results], records)
        lines = [
            json.dumps({"id": rec["id"], "query": rec["query"], "output": r["output"], "score": s,
                        "segments": r["segments"], "decisions": r["decisions"], "tokens_used": r["tokens_used"],
                        "seconds": sec})
            for rec, r, s, sec in zip(records, results, scores, seconds, strict=True)
        ]
        (root / task.name / f"{method}.jsonl").write_text("\n".join(lines) + "\n")
    return root
