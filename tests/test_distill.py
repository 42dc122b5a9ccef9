"""switchgen distill end to end at a tiny size: real switch-generation answers on the train split,
a real LoRA fine-tune (TRL) of toy A, merged, evaluated through switchgen eval; the report's
numbers recomputed from the eval records."""

from __future__ import annotations

import json

import pytest


def answer_logprob(model_dir: str, example: dict) -> float:
    """Mean log-probability of the completion tokens (plain transformers, independent of switchgen)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.tensor([example["input_ids"]])
    with torch.inference_mode():
        logp = model(ids).logits[0, :-1].log_softmax(-1)
    targets = ids[0, 1:]
    mask = torch.tensor(example["completion_mask"][1:], dtype=torch.bool)
    return float(logp[torch.arange(len(targets)), targets][mask].mean())


@pytest.fixture(scope="module")
def distilled(toy_kit, tmp_path_factory):
    from _eval_run import write_eval_dir
    from conftest import toy_config_dict

    from switchgen.cli import main

    root = tmp_path_factory.mktemp("distill")
    train_out = write_eval_dir(root, toy_config_dict, "switch", "--split", "train")
    out = root / "model"
    assert main(distill_argv(root, train_out, out)) == 0
    return root, train_out, out


def distill_argv(root, train_out, out, *extra: str) -> list[str]:
    return ["distill", "--config", str(root / "toy.yaml"), "--task", str(root / "toy-words.yaml"), "--outputs",
            str(train_out), "--out", str(out), "--lr", "5e-3", "--epochs", "4", "--batch-size", "2", "--lora-r", "8",
            "--no-progress", *extra]


def test_distilled_model_learned_the_switch_answers(distilled, toy_kit):
    from switchgen.graph import load_config
    from switchgen.servers.engine.loading import load_tokenizer
    from switchgen.tasks import load_task
    from switchgen.training.distill import sft_examples, train_records

    root, train_out, out = distilled
    config = load_config(root / "toy.yaml")
    task = load_task(root / "toy-words.yaml")
    records = train_records(train_out, task, "switch")
    tok = load_tokenizer(str(toy_kit["A"]))
    examples = sft_examples(tok, config, records)
    assert len(examples) == len(records) == 5
    for ex, rec in zip(examples, records, strict=True):  # the completion is exactly the answer (and EOS if it ended)
        completion = [t for t, m in zip(ex["input_ids"], ex["completion_mask"], strict=True) if m]
        assert tok.decode(completion, skip_special_tokens=True) == rec.output
    before = sum(answer_logprob(str(toy_kit["A"]), ex) for ex in examples) / len(examples)
    after = sum(answer_logprob(str(out), ex) for ex in examples) / len(examples)
    assert after > before + 0.5, (before, after)


def test_distill_report_matches_the_eval_records(distilled):
    _, _, out = distilled
    report = json.loads((out / "switchgen-distill.json").read_text())
    means = {}
    for method, folder in (("single:A", "eval"), ("switch", "eval"), ("single:D", "eval-distilled")):
        lines = (out / folder / "toy-words" / f"{method}.jsonl").read_text().splitlines()
        answers = [json.loads(line) for line in lines]
        assert len(answers) == 5 and {a["id"] for a in answers} == {f"test-{i}" for i in range(5)}
        means[method] = sum(a["score"] for a in answers) / len(answers)
        got = report["methods"][method]
        assert got["mean"] == pytest.approx(means[method])
        assert got["tokens_per_answer"] == pytest.approx(sum(a["tokens_used"] for a in answers) / 5)
        if method == "single:D":
            assert {s["candidate"] for a in answers for s in a["segments"]} == {"D"}
    gain = means["switch"] - means["single:A"]
    if gain:
        assert report["recovered"] == pytest.approx((means["single:D"] - means["single:A"]) / gain)
    else:
        assert report["recovered"] is None
    assert "Recovered fraction" in (out / "switchgen-distill.md").read_text()
    # Cost: the distilled model and the methods it is compared with answered at one concurrency, and only
    # switching called a switcher LM (the toy switcher, each decision after the anchor).
    from switchgen.core.jobs import IN_PROCESS_BATCH

    assert report["concurrency"] == IN_PROCESS_BATCH
    assert report["methods"]["single:D"]["switcher_calls_per_answer"] == 0
    assert report["methods"]["single:A"]["switcher_calls_per_answer"] == 0
    assert report["methods"]["switch"]["switcher_calls_per_answer"] > 0
    assert json.loads((out / "config.json").read_text())["use_cache"] is True  # saved for inference


def test_distill_rerun_resumes_the_same_run_and_refuses_another(distilled, capsys):
    """OUT holds the distilled model and its fingerprint: the same command resumes with the evaluation
    (no training: the model is byte-identical); other settings are refused before anything trains."""
    from switchgen.cli import main

    root, train_out, out = distilled
    weights = {p: p.read_bytes() for p in out.glob("*.safetensors")}
    report = json.loads((out / "switchgen-distill.json").read_text())
    capsys.readouterr()
    assert main(distill_argv(root, train_out, out)) == 0
    assert "holds this run's distilled model: resuming with its evaluation" in capsys.readouterr().err
    assert weights and {p: p.read_bytes() for p in out.glob("*.safetensors")} == weights
    again = json.loads((out / "switchgen-distill.json").read_text())
    assert again["rounds"] == report["rounds"] and again["methods"] == report["methods"]
    assert main(distill_argv(root, train_out, out, "--epochs", "5")) == 2
    err = capsys.readouterr().err.strip()
    assert "was made with other settings (settings.epochs was 4.0, now 5.0)" in err and "--overwrite" in err
    assert len(err.splitlines()) == 1 and {p: p.read_bytes() for p in out.glob("*.safetensors")} == weights
    stranger = root / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("not a distilled model")
    assert main(distill_argv(root, train_out, stranger)) == 2
    assert "has no record of the settings that made it" in capsys.readouterr().err
    assert [p.name for p in stranger.iterdir()] == ["notes.txt"]


def test_distill_rounds_refine_the_previous_rounds_model(toy_kit, tmp_path):
    """--rounds 2: round 2 regenerates the train answers with round 1's model as the aligned candidate
    and fine-tunes that model; the intermediate checkpoints are cleaned up."""
    from _eval_run import write_eval_dir
    from conftest import toy_config_dict

    from switchgen.cli import main

    train_out = write_eval_dir(tmp_path, toy_config_dict, "switch", "--split", "train")
    out = tmp_path / "model"
    argv = ["distill", "--config", str(tmp_path / "toy.yaml"), "--task", str(tmp_path / "toy-words.yaml"), "--outputs",
            str(train_out), "--out", str(out), "--rounds", "2", "--lr", "5e-3", "--epochs", "1", "--batch-size", "2",
            "--lora-r", "4", "--no-progress"]
    assert main(argv) == 0
    report = json.loads((out / "switchgen-distill.json").read_text())
    first, second = report["rounds"]
    assert first["base"] == "toy:A" and second["base"].endswith("model.rounds/round-1")
    assert first["examples"] == second["examples"] == 5
    assert not (tmp_path / "model.rounds").exists()
    assert (out / "config.json").is_file() and report["model"] == str(out.resolve())


def test_distill_refuses_a_concurrency_other_than_the_compared_runs(distilled, toy_kit, capsys):
    """Seconds per answer are latencies: compared at different concurrencies they would mislead."""
    from _eval_run import write_eval_dir
    from conftest import toy_config_dict

    from switchgen.cli import main

    root, train_out, _ = distilled
    compare = write_eval_dir(root / "cmp", toy_config_dict, "single:A,switch", "--concurrency", "2")
    assert json.loads((compare / "results.json").read_text())["concurrency"] == 2
    argv = ["distill", "--config", str(root / "toy.yaml"), "--task", str(root / "toy-words.yaml"), "--outputs",
            str(train_out), "--compare", str(compare), "--concurrency", "4", "--out", str(root / "other2")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "ran 2 queries at once" in err and len(err.strip().splitlines()) == 1
    assert not (root / "other2").exists()


def test_distill_refuses_test_split_outputs(distilled, capsys):
    from switchgen.cli import main

    root, _, _ = distilled
    test_out = root / "test-out"
    (test_out / "toy-words").mkdir(parents=True)
    line = {"id": "test-0", "query": "q", "output": "x", "score": 0.0, "segments": [], "tokens_used": 1, "seconds": 0.1}
    (test_out / "toy-words" / "switch.jsonl").write_text(json.dumps(line) + "\n")
    argv = ["distill", "--config", str(root / "toy.yaml"), "--task", str(root / "toy-words.yaml"),
            "--outputs", str(test_out), "--out", str(root / "other")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "not answers to the train split" in err and len(err.strip().splitlines()) == 1
    assert not (root / "other").exists()
