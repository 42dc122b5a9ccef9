"""Faults while generating through servers: a server killed mid-run, a query a server refuses, reruns.

`switchgen serve` and `switchgen generate` run as the user runs them (subprocesses, free loopback
ports); the in-process parts use switchgen serve on threads. Every answer is a real forward pass.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from _serving import hub_online, served_dict, start_toy_servers  # noqa: F401 - fixture
from conftest import toy_config_dict

from switchgen.core.records import is_failed
from switchgen.generate import run_file
from switchgen.graph import build_graph, load_config
from switchgen.servers.engine.local import LocalEngine

# finish_characters off: a server decodes each patch as it wrote it, and the in-process runs these
# are compared with must end their patches at the same tokens.
GREEDY = {"sampling": {"greedy": True, "finish_characters": False}, "seed": 5, "max_new_tokens": 120, "patch_size": 20}
NAMES = ("P", "F", "A", "switcher")


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    return {**env, **extra}  # huggingface_hub refuses every request, even to 127.0.0.1, when offline


def switchgen(*args: str) -> list[str]:
    return [sys.executable, "-m", "switchgen.cli", *args]


class ServeProcess:
    """`switchgen serve --preset toy --port 0` in a subprocess; its URLs read from what it prints."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            switchgen("serve", "--preset", "toy", "--port", "0"),
            stdout=subprocess.PIPE,
            stderr=log.open("w"),
            text=True,
            env=child_env(),
            start_new_session=True,
        )
        self.urls: dict[str, str] = {}
        deadline = time.time() + 120
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            found = re.match(r"\s+(http://127\.0\.0\.1:\d+)\s+\S+\s+(.+)$", line)
            if found:
                for user in found.group(2).split(", "):
                    self.urls[user.strip()] = found.group(1)
            if line.strip() == "ready":
                break
            assert time.time() < deadline, "switchgen serve did not start"
        assert set(self.urls) == set(NAMES), (self.urls, log.read_text())

    def env(self) -> dict[str, str]:
        return {f"TOY_URL_{name.upper()}": url for name, url in self.urls.items()}

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=30)


def config_file(tmp_path: Path) -> Path:
    """The toy config through servers whose URLs come from the environment (as examples/toy-tgi.yaml)."""
    data = toy_config_dict(**GREEDY)
    for cand in data["candidates"]:
        cand.update(backend="tgi", url=f"${{TOY_URL_{cand['name']}}}", retries=1, connect_timeout=2)
        del cand["device"]
    data["switcher"].update(backend="tgi", url="${TOY_URL_SWITCHER}", retries=1, connect_timeout=2, top_n_tokens=1024)
    del data["switcher"]["device"]
    path = tmp_path / "served.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_server_killed_mid_run_then_rerun_resumes(tmp_path):
    inputs = tmp_path / "queries.jsonl"
    queries = [{"input": f"Question number {i}: why do cats purr?"} for i in range(12)]
    inputs.write_text("".join(json.dumps(q) + "\n" for q in queries))
    output = tmp_path / "out.jsonl"
    config = config_file(tmp_path)
    args = switchgen("generate", "--input", str(inputs), "--output", str(output), "--config", str(config), "--no-progress")

    first = ServeProcess(tmp_path / "serve1.log")
    run = subprocess.Popen([*args, "--concurrency", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(**first.env()))
    deadline = time.time() + 120
    while not (output.exists() and output.read_text().count("\n") >= 3):
        assert run.poll() is None, run.communicate()
        assert time.time() < deadline
        time.sleep(0.05)
    first.kill()
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert re.search(r"(candidate '[PFA]'|switcher) at http://127\.0\.0\.1:\d+: cannot connect", lines[0]), lines[0]
    assert f"{output} keeps its" in lines[0] and "rerun to resume" in lines[0]
    text = output.read_text()
    assert text.endswith("\n")
    kept = [json.loads(line) for line in text.splitlines()]  # every line whole
    assert 3 <= len(kept) < len(queries)
    assert [r["input"] for r in kept] == [q["input"] for q in queries[: len(kept)]]

    second = ServeProcess(tmp_path / "serve2.log")
    done = subprocess.run(args, capture_output=True, text=True, env=child_env(**second.env()), timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"12 records in {output} (resumed after {len(kept)})" in done.stdout
    assert second.interrupt() == 0  # Ctrl-C stops the servers cleanly
    assert "Traceback" not in (tmp_path / "serve2.log").read_text()

    final = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(final) == 12 and not any(is_failed(r) for r in final)
    assert all(final[i] == r for i, r in enumerate(kept) if not is_failed(r))  # finished records untouched
    # The interrupted file, resumed, is what an uninterrupted in-process run writes.
    local = load_config(toy_config_dict(**GREEDY))
    reference = tmp_path / "reference.jsonl"
    run_file(build_graph(local, engine=LocalEngine()), local, queries, reference, progress=False)
    assert [r["output"] for r in final] == [json.loads(line)["output"] for line in reference.read_text().splitlines()]


def test_port_in_use_is_a_clear_error(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            switchgen("serve", "--preset", "toy", "--port", str(port)), capture_output=True, text=True, env=child_env(), timeout=120
        )
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.usefixtures("hub_online")
def test_a_refused_query_fails_alone_and_is_retried_on_rerun(engine, tmp_path):
    """Servers that refuse the switcher's request (top_n_tokens over their limit) fail those queries
    only: records with "error", the run goes on. A rerun against working servers retries them; an
    input too long for the model is a permanent failure that no rerun retries (issue 11)."""
    queries = [{"input": f"Tell me about the number {i}."} for i in range(6)]
    queries.insert(3, {"input": "1" * 4200})  # more tokens than the toy models' 4096 positions
    output = tmp_path / "out.jsonl"

    with start_toy_servers(engine, max_top_n_tokens=8) as strict:
        config = load_config(served_dict(strict.urls, "tgi", **GREEDY))
        result = run_file(build_graph(config, engine=LocalEngine()), config, queries, output, progress=False, concurrency=3)
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert result.written == 7 and result.failed == sum(map(is_failed, records))
    assert [r["input"] for r in records] == [q["input"] for q in queries]
    long = records[3]
    assert is_failed(long) and long["permanent"] is True and "candidate 'A'" in long["error"]
    assert "too long" in long["error"] and "must have less than 4095 tokens" in long["error"]
    refused = [r for r in records if is_failed(r) and r is not long]
    assert refused and all("top_n_tokens must be <= 8" in r["error"] and "switcher" in r["error"] for r in refused)
    succeeded = [r for r in records if not is_failed(r)]
    assert all(r["generation_log"]["decisions"] for r in succeeded)  # those ended before the switcher was asked

    with start_toy_servers(engine) as good:
        config = load_config(served_dict(good.urls, "tgi", **GREEDY))
        rerun = run_file(build_graph(config, engine=LocalEngine()), config, queries, output, progress=False, concurrency=3)
    assert rerun.start == 7 and rerun.written == 0 and rerun.failed == 0  # the too-long query is not retried
    final = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["input"] for r in final] == [q["input"] for q in queries]
    assert [is_failed(r) for r in final] == [i == 3 for i in range(7)], [r.get("error") for r in final]
    assert [final[i] for i, r in enumerate(records) if not is_failed(r)] == succeeded  # finished records untouched
    assert final[3] == long
    assert not output.with_name(output.name + ".tmp").exists()


@pytest.mark.usefixtures("hub_online")
def test_cli_reports_failed_queries_and_exits_nonzero(engine, tmp_path, capsys):
    from switchgen.cli import main

    inputs = tmp_path / "q.jsonl"
    inputs.write_text(json.dumps({"input": "Hello there."}) + "\n" + json.dumps({"input": "1" * 4200}) + "\n")
    with start_toy_servers(engine) as group:
        config = tmp_path / "c.yaml"
        config.write_text(yaml.safe_dump(served_dict(group.urls, "openai", **GREEDY)))
        code = main(["generate", "--input", str(inputs), "--config", str(config), "--no-progress", "--concurrency", "2"])
    captured = capsys.readouterr()
    assert code == 1
    assert "2 records in" in captured.out
    assert "1 queries are too long for a model" in captured.err and "shorten those inputs" in captured.err


def test_in_process_concurrency_keeps_order_and_results(tmp_path):
    """--concurrency with the in-process engine: records in input order, as a sequential run writes them."""
    queries = [{"input": f"Tell me about the number {i}.", "n": i} for i in range(8)]
    config = load_config(toy_config_dict(**GREEDY))
    outputs = []
    for concurrency in (1, 4):
        out = tmp_path / f"c{concurrency}.jsonl"
        result = run_file(build_graph(config, engine=LocalEngine()), config, queries, out, progress=False, concurrency=concurrency)
        assert result == (0, 8, 0)
        outputs.append([json.loads(line) for line in out.read_text().splitlines()])
    sequential, concurrent = outputs
    assert [r["n"] for r in concurrent] == list(range(8))
    assert [r["output"] for r in concurrent] == [r["output"] for r in sequential]
    for got, want in zip(concurrent, sequential, strict=True):  # batched forward passes: float noise only
        got_log, want_log = got["generation_log"], want["generation_log"]
        assert got_log["segment_candidates"] == want_log["segment_candidates"]
        for g, w in zip(got_log["decisions"], want_log["decisions"], strict=True):
            assert (g["chosen"], g["how"]) == (w["chosen"], w["how"])
            assert g["probabilities"] == (pytest.approx(w["probabilities"], abs=1e-5) if w["probabilities"] else None)
