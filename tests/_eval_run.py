"""A real `switchgen eval` output folder on the toy kit, for the analysis and distillation tests.

The task is a real task definition over a local file, scored by a real metric (`contains`); its
references are words the toy models' vocabulary writes often enough that some answers score 1 and
others 0 (toy text is noise). No number in the folder is written by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

# Each reference is a few aliases (the metric: contains any), words the toy models' vocabulary writes
# often enough that some answers score 1 and others 0.
QUESTIONS = [
    ("What is 2 plus 3?", ["to", "is", "plus"]), ("Name a colour.", ["it", "by", "red"]),
    ("Why is the sky blue?", ["with", "or", "sky"]), ("Write about the moon.", ["moon", "you", "he"]),
    ("What is the capital of France?", ["to", "it", "is"]),
]
METHODS = "single:P,single:F,single:A,switch,random"


def toy_task(folder: Path):
    from switchgen.tasks import load_task

    data = folder / "toy-words.jsonl"
    data.write_text("".join(json.dumps({"question": q, "word": w}) + "\n" for q, w in QUESTIONS))
    return load_task({"name": "toy-words", "test": {"path": str(data)}, "train": {"path": str(data)},
                      "query": "{question}", "reference": "word", "metric": "contains"})


def write_eval_dir(root: Path, engine, config_dict, methods: str = METHODS, **overrides) -> Path:
    """`switchgen eval` (its Python entry point) of `methods` on the toy task; returns its --out folder."""
    from switchgen.evaluation import prepare, run_eval
    from switchgen.graph import load_config

    root.mkdir(parents=True, exist_ok=True)
    config = load_config(config_dict(**{"patch_size": 6, "max_new_tokens": 30, **overrides}))
    prepared = prepare([toy_task(root)], methods.split(","), config, None)
    run_eval(config, prepared, root / "eval", seed=0, progress=False, engine=engine)
    return root / "eval"
