"""switchgen eval on the toy kit: every method end to end, resume after a kill, the reward model,
logit merging and the soup checked against independent computations, bad input, lm-eval.

The toy models write noise, so scores here are near zero; the skills kit's test
(tests/test_eval_skills.py) shows real differences between methods.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _serving import hub_online, served_dict, start_toy_servers  # noqa: F401 - fixture
from conftest import toy_config_dict

from switchgen.cli import main
from switchgen.core.errors import ConfigError
from switchgen.evaluation import method_file, prepare, run_eval
from switchgen.tasks import load_task

DATA = Path(__file__).parent / "data"
TOY_TASK = DATA / "tasks" / "toy-qa.yaml"
REPO = Path(__file__).resolve().parents[1]
ALL = ["single:P", "single:A", "switch", "untuned", "random", "fixed:A+P", "route", "logit-merge", "soup", "oracle"]


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_method_end_to_end_on_one_engine(engine, toy_config, tmp_path):
    config = toy_config(max_new_tokens=16, patch_size=8)
    prepared = prepare([str(TOY_TASK)], ALL, config, limit=2)
    before = len(engine.loaded_models)
    rows = run_eval(config, prepared, tmp_path, seed=0, progress=False, engine=engine)
    loaded = [m.location for m in engine.loaded_models]
    assert len(loaded) == len(set(loaded)), "a checkpoint was loaded twice"
    assert len(loaded) - before <= 5  # at most P, F, A, the switcher and the soup are new
    ids = [r["id"] for r in prepared.records["toy-qa"]]
    files = {m: read(method_file(tmp_path, "toy-qa", m)) for m in ALL}
    for method, recs in files.items():
        assert [r["id"] for r in recs] == ids, method
        for r in recs:
            assert 0.0 <= r["score"] <= 1.0 and isinstance(r["output"], str)
            assert {"query", "segments", "decisions", "tokens_used", "seconds"} <= set(r)
    authors = {m: {s["candidate"] for r in files[m] for s in r["segments"]} for m in ALL}
    assert authors["single:P"] == {"P"} and authors["single:A"] == {"A"}
    assert authors["fixed:A+P"] == {"A", "P"} and authors["logit-merge"] == {"merge"} and authors["soup"] == {"soup"}
    assert all(r["route"]["chosen"] in {"P", "F", "A"} for r in files["route"])
    for i, r in enumerate(files["oracle"]):
        assert r["score"] == max(files[m][i]["score"] for m in ALL if m != "oracle")
        assert r["output"] == files[r["method"]][i]["output"]
    table = {r["method"]: r for r in rows}
    assert set(table) == set(ALL)
    assert table["single:A"]["delta_vs_aligned"] is None and table["random"]["delta_ci"] is not None
    for row in rows:
        assert row["n"] == 2 and row["ci"][0] <= row["mean"] <= row["ci"][1]
    saved = json.loads((tmp_path / "results.json").read_text())["results"]
    assert saved == json.loads(json.dumps(rows))
    assert "| soup |" in (tmp_path / "results.md").read_text()
    # A rerun finds every record and generates nothing: the same files, byte for byte.
    snapshot = {m: method_file(tmp_path, "toy-qa", m).read_bytes() for m in ALL}
    run_eval(config, prepared, tmp_path, seed=0, progress=False, engine=engine)
    assert snapshot == {m: method_file(tmp_path, "toy-qa", m).read_bytes() for m in ALL}
    with pytest.raises(ConfigError, match="holds more records than this run's 1 examples"):
        run_eval(config, prepare([str(TOY_TASK)], ALL, config, limit=1), tmp_path, progress=False, engine=engine)


def test_logit_merge_is_the_mean_of_log_probs(engine, toy_kit):
    """Greedy tokens of the merged backend equal the argmax of the mean log-softmax computed with
    plain transformers forward passes on the full sequence (no cache, no switchgen code)."""
    from transformers import AutoModelForCausalLM

    from switchgen.servers.base import GenerationParams
    from switchgen.servers.engine.local import encode
    from switchgen.servers.engine.logit_merge import LogitMergeBackend

    merged = LogitMergeBackend([engine.backend(f"toy:{n}", device="cpu") for n in "PFA"])
    prompt = "<|bos|><|user|>\nWhy is the sky blue?<|end|>\n<|assistant|>\n"
    patch = merged.generate(prompt, GenerationParams(max_new_tokens=6, greedy=True))
    models = [AutoModelForCausalLM.from_pretrained(toy_kit[n], dtype=torch.float32).eval() for n in "PFA"]
    ids = encode(merged.tokenizer, prompt)
    out = []
    with torch.inference_mode():
        for _ in range(6):
            seq = torch.tensor([ids + out])
            mean = torch.stack([torch.log_softmax(m(seq).logits[0, -1], -1) for m in models]).mean(0)
            out.append(int(mean.argmax()))
    assert patch.tokens == 6 and patch.text == merged.tokenizer.decode(out, skip_special_tokens=True)


def test_soup_is_the_mean_of_the_weights(engine, toy_kit, tmp_path):
    from transformers import AutoModelForCausalLM

    from switchgen.evaluation.soup import soup_checkpoint

    backends = [engine.backend(f"toy:{n}", device="cpu") for n in "PFA"]
    folder = soup_checkpoint(backends, tmp_path)
    assert soup_checkpoint(backends, tmp_path) == folder  # written once, then reused
    soup = AutoModelForCausalLM.from_pretrained(folder).state_dict()
    parts = [AutoModelForCausalLM.from_pretrained(toy_kit[n]).state_dict() for n in "PFA"]
    for key, value in soup.items():
        torch.testing.assert_close(value, sum(p[key] for p in parts) / 3)


def test_reward_model_metric_loads_once_batches_and_caches(toy_kit, tmp_path):
    """A tiny randomly initialised LlamaForSequenceClassification, saved locally, as the reward model."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(toy_kit["A"])
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, num_labels=1, pad_token_id=tok.pad_token_id,
                      initializer_range=0.5)
    LlamaForSequenceClassification(cfg).save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    task = load_task({"name": "rm", "test": {"path": str(DATA / "tasks" / "alpaca-eval.jsonl")}, "query": "{instruction}",
                      "reference": "output", "metric": {"name": "reward", "model": str(tmp_path / "rm"), "batch_size": 2}})
    metric = task.metric()
    records = task.records("test") * 2
    outputs = ["Hugh Jackman and Meryl Streep.", "From Native American words.", "Hugh Jackman.", "No idea."]
    scores = metric.score(outputs, records)
    assert metric.forward_batches == 2 and len(set(scores)) == 4
    assert metric.score(outputs[:2], records[:2]) == scores[:2] and metric.forward_batches == 2  # cached
    model = LlamaForSequenceClassification.from_pretrained(tmp_path / "rm").eval()  # independently, one at a time
    for out, rec, got in zip(outputs, records, scores, strict=True):
        text = tok.apply_chat_template([{"role": "user", "content": rec["query"]}, {"role": "assistant", "content": out}],
                                       tokenize=False)
        with torch.inference_mode():
            want = model(**tok(text, add_special_tokens=False, return_tensors="pt")).logits[0, 0].item()
        assert got == pytest.approx(want, abs=1e-4)
    assert metric.range == (float("-inf"), float("inf"))


def _eval_args(out: Path, *extra: str) -> list[str]:
    return ["eval", "--preset", "toy", "--task", str(TOY_TASK), "--out", str(out), "--no-progress", *extra]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--methods", "single:A", "--task", "gsm9k"], "unknown task 'gsm9k'"),
        (["--methods", "single:A,beam"], "unknown method 'beam'"),
        (["--methods", "single:Q"], "unknown candidate 'Q'"),
        (["--methods", "fixed:A+X"], "unknown candidate 'X'"),
        (["--methods", "single"], "write it as single:NAME"),
        (["--methods", "oracle"], "oracle needs other methods"),
        (["--methods", "single:A", "--task", str(DATA / "tasks" / "missing-data.yaml")], "no-such-file.jsonl: no such file"),
        (["--methods", "single:A", "--task", str(DATA / "tasks" / "bad-split.yaml")], "has no split 'dev'"),
    ],
)
def test_bad_input_is_one_line_before_any_model_loads(extra, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SWITCHGEN_HOME", str(tmp_path / "home"))  # a model load would build the toy kit here
    if "bad-split" in str(extra):
        import datasets

        datasets.DatasetDict({"test": datasets.Dataset.from_list([{"q": "x", "a": "y"}])}).save_to_disk(
            str(tmp_path / "saved"))
        (tmp_path / "bad-split.yaml").write_text(json.dumps({"name": "bad", "test": {"path": str(tmp_path / "saved"), "split": "dev"},
                                                              "query": "{q}", "reference": "a", "metric": "exact_match"}))
        extra = [str(tmp_path / "bad-split.yaml") if "bad-split" in e else e for e in extra]
    if "missing-data" in str(extra):
        (tmp_path / "missing-data.yaml").write_text(json.dumps({"name": "missing", "test": {"path": "no-such-file.jsonl"},
                                                                 "query": "{q}", "reference": "a", "metric": "exact_match"}))
        extra = [str(tmp_path / "missing-data.yaml") if "missing-data" in e else e for e in extra]
    capsys.readouterr()  # (the fixture's own progress output)
    assert main(_eval_args(tmp_path / "out", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "home").exists() and not (tmp_path / "out").exists()


def test_kill_mid_eval_then_rerun_loses_and_duplicates_nothing(toy_kit, tmp_path):
    rows = [{"qid": f"k{i}", "question": f"Tell me about the number {i}.", "answer": str(i)} for i in range(12)]
    (tmp_path / "k.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = tmp_path / "k.yaml"
    task.write_text(json.dumps({"name": "k", "test": {"path": "k.jsonl"}, "id_field": "qid", "query": "{question}",
                                "reference": "answer", "metric": "contains"}))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "switchgen.cli", "eval", "--preset", "toy", "--task", str(task), "--out", str(out),
           "--no-progress", "--methods", "random", "--max-new-tokens", "60", "--patch-size", "20", "--concurrency", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    path = method_file(out, "k", "random")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and path.read_text().count("\n") >= 2:
            break
        time.sleep(0.01)
    assert proc.poll() is None, proc.stderr.read().decode()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = read(path)
    assert 2 <= len(kept) < 12 and all(r["score"] is None for r in kept)  # killed before its scoring pass
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    recs = read(path)
    assert [r["id"] for r in recs] == [r["qid"] for r in rows] and all(r["score"] is not None for r in recs)
    assert [r["output"] for r in recs[: len(kept)]] == [r["output"] for r in kept]  # the finished ones were kept
    (row,) = json.loads((out / "results.json").read_text())["results"]
    assert row["method"] == "random" and row["n"] == 12


def test_lm_eval_generate_until_honours_max_gen_toks_and_until(toy_kit):
    """The plug-in's answers are the graph's for the request's budget and stop strings."""
    from lm_eval.api.instance import Instance

    from switchgen.evaluation.lm_eval_plugin import SwitchgenLM
    from switchgen.servers.stops import cut_at_stop

    lm = SwitchgenLM(preset="toy", patch_size=4)
    contexts = ["Question: What do bees make?\nAnswer:", "Question: Why is the sky blue?\nAnswer:"]
    requests = [Instance("generate_until", {}, (c, {"until": ["Question:"], "max_gen_toks": 6}), i)
                for i, c in enumerate(contexts)]
    answers = lm.generate_until(requests, disable_tqdm=True)
    graph = lm._graph(("Question:",))
    for context, answer in zip(contexts, answers, strict=True):
        result = graph.invoke({"query": context}, context={"max_new_tokens": 6})
        assert result["tokens_used"] <= 6 and answer == cut_at_stop(result["output"], ["Question:"])[0]
    stopped = lm.generate_until([Instance("generate_until", {}, (contexts[0], {"until": [" "], "max_gen_toks": 30}), 0)])
    assert " " not in stopped[0]


def test_lm_eval_plugin_refuses_loglikelihood():
    from switchgen.evaluation.lm_eval_plugin import SwitchgenLM

    lm = SwitchgenLM.create_from_arg_string("preset=toy")
    with pytest.raises(NotImplementedError, match="cannot score given continuations"):
        lm.loglikelihood([])
    with pytest.raises(NotImplementedError, match="rolling"):
        lm.loglikelihood_rolling([])
    with pytest.raises(ConfigError, match="unknown preset"):
        SwitchgenLM(preset="nope")


def test_lm_eval_cli_runs_a_local_task_through_the_graph(toy_kit, tmp_path, monkeypatch, capsys):
    """lm-eval's own command line (in this process: torch is imported once), the model named switchgen."""
    monkeypatch.chdir(REPO)  # the task's data_files path is relative to the repository
    argv = ["lm-eval", "--model", "switchgen", "--model_args", "preset=toy,patch_size=4", "--tasks", "switchgen_toy_qa",
            "--include_path", str(DATA / "lm_eval"), "--limit", "3", "--output_path", str(tmp_path / "lm"), "--log_samples"]
    assert main(argv) == 0
    assert "switchgen_toy_qa" in capsys.readouterr().out
    (samples,) = tmp_path.glob("lm/*/samples_switchgen_toy_qa_*.jsonl")
    responses = [json.loads(line)["resps"][0][0] for line in samples.read_text().splitlines()]
    assert len(responses) == 3
    assert all("e" not in text and "Question:" not in text for text in responses)  # until
    (results,) = tmp_path.glob("lm/*/results_*.json")
    assert "switchgen_toy_qa" in json.loads(results.read_text())["results"]


@pytest.mark.usefixtures("hub_online")
def test_eval_over_inference_servers_with_concurrency(engine, tmp_path):
    """Candidates and switcher behind TGI-protocol servers (switchgen serve on the toy kit), three
    queries in flight: the same greedy answers as in process, records in order."""
    from switchgen.graph import load_config
    from switchgen.servers.engine.local import LocalEngine

    methods = ["single:A", "fixed:A+P", "switch", "route", "oracle"]
    greedy = {"sampling": {"greedy": True}, "max_new_tokens": 16, "patch_size": 8}
    local = load_config(toy_config_dict(**greedy))
    client_side = LocalEngine()
    with start_toy_servers(engine) as servers:
        remote = load_config(served_dict(servers.urls, "tgi", **greedy))
        prepared = prepare([str(TOY_TASK)], methods, remote, limit=3)
        run_eval(remote, prepared, tmp_path / "remote", concurrency=3, progress=False, engine=client_side)
    assert client_side.loaded_models == []  # the run's own engine loaded no weights: every token came from a server
    run_eval(local, prepare([str(TOY_TASK)], methods, local, limit=3), tmp_path / "local", progress=False, engine=engine)
    for method in methods:
        got = read(method_file(tmp_path / "remote", "toy-qa", method))
        assert [r["id"] for r in got] == ["q1", "q2", "q3"]
        if method in ("single:A", "fixed:A+P"):
            want = read(method_file(tmp_path / "local", "toy-qa", method))
            assert [r["output"] for r in got] == [r["output"] for r in want]


class _Constant:
    """A user's method: always the same answer (no model at all)."""

    def invoke(self, query: str, seed: int | None) -> dict:
        return {"output": "honey", "segments": [{"candidate": "user", "text": "honey"}], "decisions": [], "tokens_used": 1}


def test_a_registered_method_runs_by_name(engine, toy_config, tmp_path):
    from switchgen.evaluation import METHODS, register_method

    register_method("constant", lambda arg, setup: _Constant(), description="a test method")
    try:
        config = toy_config()
        prepared = prepare([str(TOY_TASK)], ["constant"], config, limit=4)
        (row,) = run_eval(config, prepared, tmp_path, progress=False, engine=engine)
    finally:
        del METHODS["constant"]
    assert [r["score"] for r in read(method_file(tmp_path, "toy-qa", "constant"))] == [0.0, 0.0, 0.0, 1.0]
    assert row["mean"] == 0.25 and row["tokens"] == 4


def test_route_reads_the_candidates_not_their_order(skills_kit):
    """The router (A, untuned) is read through the switcher's calibration: under `permutations` (every
    labelling) listing the candidates in another order changes nothing it gives each of them; `auto`
    reads it as an untuned switcher is read (`shifts`, n passes)."""
    from switchgen.evaluation.methods import EvalSetup, RouteMethod
    from switchgen.graph import load_config
    from switchgen.graph.backends import connect
    from switchgen.servers.engine.local import LocalEngine

    engine = LocalEngine()

    def route(order: str, calibration: str) -> dict:
        data = load_config("skills").model_dump()
        by_name = {c["name"]: c for c in data["candidates"]}
        data["candidates"] = [by_name[n] for n in order]
        data["switcher"]["calibration"] = calibration
        config = load_config(data)
        backends, _ = connect(config, engine)
        method = RouteMethod(EvalSetup(config, engine, dict(zip(config.names, backends, strict=True))))
        return method.invoke("Which city is the capital of Peru?", seed=0)["route"]

    forward, backward = route("PFA", "permutations"), route("AFP", "permutations")
    assert forward["passes"] == backward["passes"] == 6
    assert forward["probabilities"] == pytest.approx(backward["probabilities"], abs=1e-5)
    default = route("PFA", "auto")
    assert (default["calibration"], default["passes"]) == ("shifts", 3)
