"""A real `switchgen eval` output folder on the toy kit, for the analysis and distillation tests.

The task is a real task definition over a local file, scored by a real metric (`contains`); its
references are words the toy models' vocabulary writes often enough that some answers score 1 and
others 0 (toy text is noise). No number in the folder is written by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

# Each reference is a few aliases (the metric: contains any): words and one-letter "words" that the
# toy models' noise writes often enough that some answers score 1 and others 0.
QUESTIONS = [
    ("What is 2 plus 3?", ["y", "plus"]), ("Name a colour.", ["c", "red"]),
    ("Why is the sky blue?", ["e", "p", "sky"]), ("Write about the moon.", ["y", "question", "moon"]),
    ("What is the capital of France?", ["c", "o", "paris"]),
]
METHODS = "single:P,single:F,single:A,switch,random"


def toy_task(folder: Path) -> Path:
    """The task's YAML (and its data file) in `folder`; `switchgen eval --task PATH` takes it."""
    import yaml

    data = folder / "toy-words.jsonl"
    data.write_text("".join(json.dumps({"question": q, "word": w}) + "\n" for q, w in QUESTIONS))
    spec = {"name": "toy-words", "test": {"path": data.name}, "train": {"path": data.name},
            "query": "{question}", "reference": "word", "metric": "contains"}
    path = folder / "toy-words.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def toy_config_file(folder: Path, config_dict, **overrides) -> Path:
    import yaml

    path = folder / "toy.yaml"
    path.write_text(yaml.safe_dump(config_dict(**{"patch_size": 8, "max_new_tokens": 24, **overrides})))
    return path


def write_eval_dir(root: Path, config_dict, methods: str = METHODS, *extra: str, **overrides) -> Path:
    """`switchgen eval` (the command, in process) of `methods` on the toy task; returns its --out folder."""
    from switchgen.cli import main

    root.mkdir(parents=True, exist_ok=True)
    out = root / "eval"
    argv = ["eval", "--config", str(toy_config_file(root, config_dict, **overrides)), "--task", str(toy_task(root)),
            "--methods", methods, "--out", str(out), "--no-progress", *extra]
    assert main(argv) == 0
    return out
