"""Switcher training on the toy kit: rollouts (structure, determinism, a kill and resume), the
one-token tokenisation boundary, and an adapter trained by `switchgen train` that `switchgen
generate` and `switchgen serve` use. The toy models' text is noise, so the labels are too; every
code path still runs real forward passes (the skills kit's fidelity test is the train_and_evaluate notebook's, tests/test_notebook.py).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _serving import hub_online, served_dict, start_toy_servers  # noqa: F401 - fixture
from conftest import toy_config_dict

from switchgen.cli import main
from switchgen.core.prompts import switcher_prompt, user_turn
from switchgen.graph import build_graph, load_config
from switchgen.servers.choices import choice_token_ids
from switchgen.servers.engine.local import LocalEngine
from switchgen.tasks import load_task
from switchgen.training.examples import make_example, read_rollouts
from switchgen.training.rollouts import Rollouts, pick_label, rollout_config, run_rollouts, task_scorer
from switchgen.training.settings import RolloutSettings

WORDS = "the weather people sea hour robot question times".split()
SIZE = {"max_new_tokens": 40, "patch_size": 10}  # as the CLI's --max-new-tokens 40 --patch-size 10
K = 2
GREEDY = {"anchor": False, "sampling": {"greedy": True}, "seed": 1}


@pytest.fixture(scope="module")
def task_file(tmp_path_factory) -> Path:
    """A local task over toy questions, scored by token F1 (the toy text sometimes shares a word)."""
    root = tmp_path_factory.mktemp("task")
    for split, n in (("train", 6), ("test", 3)):
        rows = [{"id": f"{split}{i}", "question": f"Tell me about the {WORDS[i % 8]}.", "answer": f"the {WORDS[i % 8]}"}
                for i in range(n)]
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = root / "toy-qa.yaml"
    path.write_text(
        "name: toy-qa\ntrain: {path: train.jsonl}\ntest: {path: test.jsonl}\nid_field: id\n"
        'query: "{question}"\nreference: answer\nmetric: f1\n'
    )
    return path


def rollouts_file(engine, task_file: Path, out: Path, *, instances: int = 4, concurrency: int = 1) -> Path:
    from concurrent.futures import ThreadPoolExecutor

    config = load_config("toy", **SIZE)
    task = load_task(task_file)
    graph = build_graph(rollout_config(config), engine=engine)
    pool = ThreadPoolExecutor(concurrency) if concurrency > 1 else None
    rollouts = Rollouts(graph, config, task_scorer(task.metric()), RolloutSettings(k=K, seed=0), task=task,
                        pool=pool)
    run_rollouts(rollouts, task.records("train", limit=instances), out, concurrency=concurrency, progress=False)
    return out


@pytest.fixture(scope="module")
def rollouts(engine, task_file, tmp_path_factory) -> Path:
    return rollouts_file(engine, task_file, tmp_path_factory.mktemp("rollouts") / "toy.jsonl")


def test_rollouts_records_follow_the_recipe(rollouts, task_file):
    records = [json.loads(line) for line in rollouts.read_text().splitlines()]
    assert [r["id"] for r in records] == ["train0", "train1", "train2", "train3"]
    metric = load_task(task_file).metric()
    for rec in records:
        assert rec["candidates"] == ["P", "F", "A"] and rec["base"] == "toy:A" and rec["task"] == "toy-qa"
        assert rec["cut"] in (0, 10, 20, 30)  # 10-90% of 40 tokens, down to a patch boundary
        assert rec["trace_tokens"] == sum(s["tokens"] for s in rec["trace"]) <= rec["cut"]
        assert all(s["candidate"] == ["P", "F", "A"][s["index"]] for s in rec["trace"])
        assert [p["candidate"] for p in rec["patches"]] == ["P", "F", "A"]  # the divergent step: each one writes
        trace_text = "".join(s["text"] for s in rec["trace"])
        for p in rec["patches"]:
            assert 1 <= p["tokens"] <= SIZE["patch_size"]
            assert len(p["scores"]) == K and p["mean"] == pytest.approx(statistics.fmean(p["scores"]))
            if p["finish_reason"] in ("eos", "stop", "budget"):  # nothing to continue: the finished answer's score
                assert p["continuation_tokens"] == []
                assert p["scores"] == metric.score([trace_text + p["text"]], [rec]) * K
            else:
                assert len(p["continuation_tokens"]) == K
                assert all(rec["trace_tokens"] + p["tokens"] + t <= SIZE["max_new_tokens"] for t in p["continuation_tokens"])
        means = [p["mean"] for p in rec["patches"]]
        assert (rec["label"], rec["margin"], rec["tie"]) == pick_label(means, 2)
        assert rec["label_name"] == rec["candidates"][rec["label"]]
        assert means[rec["label"]] == max(means)


def test_pick_label_ties_go_to_the_aligned_candidate_then_the_lowest_index():
    assert pick_label([0.5, 0.2, 0.1], 2) == (0, pytest.approx(0.3), False)
    assert pick_label([0.5, 0.2, 0.5], 2) == (2, 0.0, True)
    assert pick_label([0.4, 0.4, 0.1], 2) == (0, 0.0, True)


def test_same_seed_same_file_also_at_concurrency(engine, rollouts, task_file, tmp_path):
    first_two = b"".join(rollouts.read_bytes().splitlines(keepends=True)[:2])
    again = rollouts_file(LocalEngine(), task_file, tmp_path / "again.jsonl", instances=2)  # cold: no shared caches
    assert again.read_bytes() == first_two
    parallel = rollouts_file(engine, task_file, tmp_path / "parallel.jsonl", instances=2, concurrency=3)
    assert parallel.read_bytes() == first_two


def test_sigkill_mid_rollouts_then_rerun_loses_and_duplicates_nothing(rollouts, task_file, tmp_path):
    """`switchgen rollouts` killed after its first record, rerun: the file is the uninterrupted run's."""
    out = tmp_path / "killed.jsonl"
    args = ["rollouts", "--task", str(task_file), "--preset", "toy", "--out", str(out), "--instances", "4",
            "--k", str(K), "--seed", "0", "--no-progress",
            "--max-new-tokens", str(SIZE["max_new_tokens"]), "--patch-size", str(SIZE["patch_size"])]
    proc = subprocess.Popen([sys.executable, "-m", "switchgen.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= 1:
                break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    kept = out.read_bytes().count(b"\n")
    assert 1 <= kept < 4, "the run must be killed midway"
    with out.open("ab") as f:
        f.write(b'{"id": "train')  # a record torn by the kill
    assert main(args) == 0  # the rerun (in process: a fresh engine and graph all the same)
    assert out.read_bytes() == rollouts.read_bytes()


def test_a_rerun_with_other_settings_is_refused(rollouts, task_file, tmp_path, capsys):
    """The shared fingerprint check (core/fingerprint.py) names what differs; the file is untouched."""
    from switchgen.core.fingerprint import fingerprint_path

    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(rollouts.read_bytes())
    fingerprint_path(copy).write_bytes(fingerprint_path(rollouts).read_bytes())
    code = main(["rollouts", "--task", str(task_file), "--preset", "toy", "--out", str(copy), "--instances", "4",
                 "--k", "3", "--max-new-tokens", "40", "--patch-size", "10", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "made with other settings (settings.k was 2, now 3)" in err and "--overwrite" in err, err
    assert len(err.strip().splitlines()) == 1
    assert copy.read_bytes() == rollouts.read_bytes()


def test_training_tokens_are_the_tokens_the_switcher_scores(rollouts, engine):
    """The example's prompt ids are exactly the engine's ids for the rendered switcher prompt, the
    completion is one digit token the switcher's choice reads, and TRL keeps both as given."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    record = read_rollouts([rollouts])[0]
    backend = engine.backend("toy:A", device="cpu")
    tok = backend.tokenizer
    example = make_example(tok, record)
    prompt = user_turn(tok, switcher_prompt(record["query"], [s["text"] for s in record["trace"]],
                                            [s["index"] for s in record["trace"]], 3))
    assert example.prompt == prompt and prompt.endswith("The answer is model <|end|>\n<|assistant|>\n")
    assert example.input_ids[:-1] == backend.encode(prompt)
    assert example.input_ids[-1] in choice_token_ids(tok, [str(record["label"])])[0]
    assert example.completion_mask == [0] * (len(example.input_ids) - 1) + [1]

    # The position trained is the position scored: the digits' mass there is choice_distribution's.
    model = backend.loaded.model
    with torch.no_grad():
        logits = model(torch.tensor([example.input_ids[:-1]])).logits[0, -1]
    probs = torch.softmax(logits.float(), -1)
    ids = choice_token_ids(tok, ["0", "1", "2"])
    mass = sum(float(probs[i].sum()) for i in ids)
    assert mass == pytest.approx(backend.choice_distribution(prompt, ["0", "1", "2"]).mass, rel=1e-4)

    data = Dataset.from_dict({"input_ids": [example.input_ids], "completion_mask": [example.completion_mask]})
    args = SFTConfig(output_dir="/tmp/unused", completion_only_loss=True, max_length=None, use_cpu=True,
                     report_to="none", activation_checkpointing=False)
    from transformers import AutoModelForCausalLM

    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(backend.loaded.location), args=args,
                         train_dataset=data, processing_class=tok)
    row = trainer.train_dataset[0]
    assert row["input_ids"] == example.input_ids  # no EOS appended, nothing re-tokenised
    assert row["labels"] == [-100] * (len(example.input_ids) - 1) + [example.input_ids[-1]]


@pytest.fixture(scope="module")
def adapter(rollouts, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "adapter"
    code = main(["train", "--data", str(rollouts), "--out", str(out), "--epochs", "2", "--batch-size", "2",
                 "--lr", "5e-3", "--lora-r", "4", "--eval-fraction", "0.25", "--no-progress",
                 "--keep-uninformative", "--merge"])  # the toy's labels are noise: keep them all
    assert code == 0
    return out


def test_train_writes_an_adapter_and_a_report(adapter, capsys):
    report = json.loads((adapter / "switchgen-training.json").read_text())
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    assert report["base"] == "toy:A" and report["train_examples"] == 3 and report["eval_examples"] == 1
    for when in ("before", "after"):
        assert report[when]["n"] == 1 and 0 <= report[when]["accuracy"] <= 1 and 0 < report[when]["digit_mass"] <= 1
    assert report["after"]["digit_mass"] != pytest.approx(report["before"]["digit_mass"], rel=1e-3)  # it trained

    # --merge: base + adapter in one checkpoint, scoring as the adapter does; the base stays the base
    # for the candidate sharing its weights (the adapter's LoRA and digit rows off).
    from switchgen.servers.base import GenerationParams

    engine = LocalEngine()
    tuned = engine.backend("toy:A", device="cpu", adapter=str(adapter))
    merged = engine.backend(report["merged"], device="cpu")
    prompt = user_turn(tuned.tokenizer, switcher_prompt("Tell me about the sea.", ["The"], [2], 3))
    want = tuned.choice_distribution(prompt, ["0", "1", "2"])
    got = merged.choice_distribution(prompt, ["0", "1", "2"])
    assert got.probs == pytest.approx(want.probs, abs=1e-4) and got.mass == pytest.approx(want.mass, rel=1e-3)
    params = GenerationParams(max_new_tokens=20, greedy=True)
    plain = engine.backend("toy:A", device="cpu").generate(prompt, params).text
    assert plain == LocalEngine().backend("toy:A", device="cpu").generate(prompt, params).text


def test_trained_adapter_in_generate_and_behind_serve(adapter, tmp_path, hub_online):  # noqa: F811
    switcher = {"model": "toy:A", "adapter": str(adapter), "device": "cpu"}
    config = tmp_path / "trained.yaml"
    import yaml

    config.write_text(yaml.safe_dump(toy_config_dict(switcher=switcher, **GREEDY)))
    inputs = tmp_path / "in.jsonl"
    inputs.write_text(json.dumps({"input": "Tell me about the sea."}) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["generate", "--input", str(inputs), "--config", str(config), "--output", str(out), "--no-progress"]) == 0
    local = json.loads(out.read_text())["generation_log"]["decisions"]
    asked = [d for d in local if d["how"] == "switcher"]
    assert asked and all(d["probabilities"] for d in asked)

    served_engine = LocalEngine()
    with start_toy_servers(served_engine, toy_config_dict(switcher=switcher)) as servers:
        remote = served_dict(servers.urls, "tgi", switcher="tgi", **GREEDY)
        remote["switcher"].update(model="toy:A", adapter=str(adapter))
        result = build_graph(load_config(remote), engine=LocalEngine()).invoke({"query": "Tell me about the sea."})

    def local_run(sw: dict) -> list[dict]:
        config = load_config(toy_config_dict(switcher=sw, **GREEDY))
        out = build_graph(config, engine=LocalEngine()).invoke({"query": "Tell me about the sea."})
        return [d["probabilities"] for d in out["decisions"] if d["how"] == "switcher"]

    got = [d["probabilities"] for d in result["decisions"] if d["how"] == "switcher"]
    want = local_run(switcher)
    assert got and len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g == pytest.approx(w, abs=1e-4)  # served as an adapter id: the trained switcher's scores
    untuned = local_run({"model": "toy:A", "device": "cpu"})
    assert got[0] != pytest.approx(untuned[0], abs=1e-4)  # ... not the base model's


def test_bench_rollouts_shared_prefix_prefills_less_for_the_same_tokens(toy_kit, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--rollouts", "--preset", "toy", "--budget", "60", "--instances", "1", "--k", "2",
                 "--reps", "1", "--concurrency", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())["rollouts"]["1"]
    shared, independent = report["shared"], report["independent"]
    assert shared["tokens"] == independent["tokens"] > 0 and shared["rollouts"] == independent["rollouts"]
    assert shared["prefilled_tokens"] < independent["prefilled_tokens"]
    assert "shared-prefix speedup" in capsys.readouterr().out


def test_several_data_files_mix_into_one_switch_global_set(rollouts, tmp_path):
    from switchgen.core.errors import InputError

    other = tmp_path / "other-task.jsonl"
    other.write_text("".join(json.dumps({**json.loads(line), "task": "other"}) + "\n"
                             for line in rollouts.read_text().splitlines()))
    mixed = read_rollouts([rollouts, other])
    assert len(mixed) == 8 and {r["task"] for r in mixed} == {"toy-qa", "other"}
    chain = tmp_path / "other-chain.jsonl"
    chain.write_text(json.dumps({**json.loads(rollouts.read_text().splitlines()[0]), "candidates": ["X", "Y", "Z"]}) + "\n")
    with pytest.raises(InputError, match="differ"):
        read_rollouts([rollouts, chain])


def test_summary_names_the_label_split_and_warns_when_one_candidate_dominates():
    """The skills kit at a 32-token budget gave 57 of 61 labels to A and a switcher that always picked A:
    the summary says so before anyone trusts the adapter."""
    from switchgen.training.train import label_line

    balanced = label_line({"candidates": ["P", "F", "A"], "label_counts": {"0": 18, "1": 7, "2": 75}})
    assert balanced == "labels: P 18, F 7, A 75"
    skewed = label_line({"candidates": ["P", "F", "A"], "label_counts": {"0": 3, "1": 1, "2": 57}})
    assert skewed.startswith("labels: P 3, F 1, A 57 (warning: 93% are one candidate")
