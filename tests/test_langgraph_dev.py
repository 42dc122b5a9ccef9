"""`langgraph dev` serves the graph offline, driven here with langgraph-sdk like Studio would.

The server runs as a subprocess in its own process group (stopped as a group at the end), on a
free port, with SWITCHGEN_CONFIG=toy and the test session's SWITCHGEN_HOME. It runs from a
scratch folder with a copy of langgraph.json whose paths point back at this checkout, so that
its `.langgraph_api/` state never mixes with another run's.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"max_new_tokens": 30, "patch_size": 10, "seed": 0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_langgraph_json_is_valid():
    from langgraph_cli.config import validate_config_file

    config = validate_config_file(ROOT / "langgraph.json")
    assert config["graphs"] == {"switchgen": "./graph/app.py:graph"}
    assert config["dependencies"] == ["."] and config["python_version"] == "3.11"
    assert config["env"] == ".env"  # an env file, as the langchain-ai templates: the shell's variables count
    example = (ROOT / ".env.example").read_text()
    assert "SWITCHGEN_CONFIG=toy" in example.splitlines()


def test_studio_schemas_show_the_settings_in_force_and_no_private_channels(make_graph):
    config, graph = make_graph(patch_size=15, max_new_tokens=45)
    defaults = {k: v.get("default") for k, v in graph.get_context_jsonschema()["properties"].items()}
    assert defaults == {"patch_size": 15, "max_new_tokens": 45, "top_p": 0.7, "strategy": "learned",
                        "candidate": None, "sequence": None, "seed": 0, "review": None}
    for schema in (graph.get_input_jsonschema(), graph.get_output_jsonschema()):
        assert not {"turn", "settings", "proposal"} & set(schema["properties"])
    result = graph.invoke({"query": "Hi"}, context=defaults)  # the defaults are the configuration
    assert result["max_new_tokens"] == 45 and all(s["tokens"] <= 15 for s in result["segments"])


@pytest.fixture(scope="module")
def server(tmp_path_factory, toy_kit):
    work = tmp_path_factory.mktemp("langgraph_dev")
    config = json.loads((ROOT / "langgraph.json").read_text())
    config["dependencies"] = [str(ROOT / d) for d in config["dependencies"]]
    config["graphs"] = {k: str(ROOT / v) for k, v in config["graphs"].items()}
    (work / "langgraph.json").write_text(json.dumps(config))
    (work / ".env").write_text((ROOT / ".env.example").read_text())  # as the README says: cp .env.example .env
    port = free_port()
    env = {**os.environ, "LANGGRAPH_CLI_NO_ANALYTICS": "1", "LANGGRAPH_NO_VERSION_CHECK": "1"}
    env.pop("SWITCHGEN_CONFIG", None)  # the env file configures it
    log = (work / "server.log").open("w")
    # `python -m langgraph_cli`, not the venv's `langgraph` script: its shebang may name another checkout's python
    command = [sys.executable, "-m", "langgraph_cli", "dev", "--no-browser", "--no-reload",
               "--port", str(port), "--config", str(work / "langgraph.json")]
    proc = subprocess.Popen(command, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail("langgraph dev exited:\n" + (work / "server.log").read_text()[-3000:])
            try:
                if httpx.get(url + "/ok", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("langgraph dev did not answer:\n" + (work / "server.log").read_text()[-3000:])
            time.sleep(0.25)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def test_the_sdk_drives_the_graph(server):
    from langgraph_sdk import get_client

    async def scenario() -> None:
        client = get_client(url=server)
        thread = (await client.threads.create())["thread_id"]

        # runs.wait: messages in, one answer out.
        result = await client.runs.wait(
            thread, "switchgen", input={"messages": [{"role": "user", "content": "Hi"}]}, context=SMALL
        )
        answer = result["messages"][-1]
        assert answer["type"] == "ai" and answer["content"] == result["output"]
        assert answer["response_metadata"]["decisions"] == result["decisions"]
        assert result["tokens_used"] <= 30 and result["max_new_tokens"] == 30

        # runs.stream: tokens with their author (custom mode); the second turn sees the first.
        parts = [p async for p in client.runs.stream(
            thread, "switchgen", input={"query": "And then?"}, context=SMALL, stream_mode=["custom", "values"]
        )]
        tokens = [p.data for p in parts if p.event == "custom"]
        final = [p.data for p in parts if p.event == "values"][-1]
        assert tokens and "".join(t["text"] for t in tokens) == final["output"]
        assert {t["candidate"] for t in tokens} == {s["candidate"] for s in final["segments"]}

        # messages mode (what Studio's chat and useStream read): token chunks, each named after its author.
        parts = [p async for p in client.runs.stream(
            thread, "switchgen", input={"query": "Once more?"}, context=SMALL, stream_mode=["messages-tuple", "values"]
        )]
        chunks = [p.data[0] for p in parts if p.event == "messages"]
        final = [p.data for p in parts if p.event == "values"][-1]
        assert len(chunks) > len(final["segments"]) and all(c["type"] == "AIMessageChunk" for c in chunks)
        assert "".join(c["content"] for c in chunks) == final["output"]
        assert {c["name"] for c in chunks if c["content"]} == {s["candidate"] for s in final["segments"]}
        assert {c["id"] for c in chunks} == {final["messages"][-1]["id"]}

        # get_state: the decisions, step by step, and the whole conversation.
        state = await client.threads.get_state(thread)
        values = state["values"]
        assert [m["type"] for m in values["messages"]] == ["human", "ai"] * 3
        assert [d["step"] for d in values["decisions"]] == list(range(len(values["segments"])))
        assert all({"chosen", "how", "probabilities"} <= set(d) for d in values["decisions"])

        # Review mode: interrupt before the patch; a bad name is refused; a good one is taken.
        await client.runs.wait(thread, "switchgen", input={"query": "Review me"}, context={**SMALL, "review": True})
        state = await client.threads.get_state(thread)
        assert state["next"] == ["switcher"]
        shown = state["tasks"][0]["interrupts"][0]["value"]
        assert shown["kind"] == "switchgen.review" and shown["proposed"] == "A"
        await client.runs.wait(thread, "switchgen", command={"resume": "nobody"})
        state = await client.threads.get_state(thread)
        assert "is not a candidate" in state["tasks"][0]["interrupts"][0]["value"]["error"]
        await client.runs.wait(thread, "switchgen", command={"resume": "P"})
        state = await client.threads.get_state(thread)
        first = state["values"]["decisions"][0]
        assert (first["chosen"], first["how"], first["proposed"]) == ("P", "review", "A")

        # Bad input: a clear error, and the thread is as it was.
        before = await client.threads.get_state(thread)
        result = await client.runs.wait(thread, "switchgen", input={"query": "Hi"}, context={"patch_size": 0},
                                        raise_error=False)
        assert "patch_size" in json.dumps(result)
        after = await client.threads.get_state(thread)
        assert after["values"] == before["values"] and after["checkpoint"] == before["checkpoint"]

    asyncio.run(scenario())
