"""GGUF candidates (`model: path/to/file.gguf`) through transformers' GGUF loading.

The GGUF file is the toy P checkpoint written in llama.cpp's format here (tests/_gguf.py), so the
graph must write exactly what it writes with the original checkpoint.
"""

from __future__ import annotations

import pytest

pytest.importorskip("gguf", reason="GGUF loading needs the gguf package (in the test extra)")


@pytest.fixture(scope="module")
def toy_gguf(toy_kit, tmp_path_factory):
    from _gguf import write_gguf

    return write_gguf(toy_kit["P"], tmp_path_factory.mktemp("gguf") / "toy-p.gguf")


def test_a_gguf_candidate_writes_what_its_checkpoint_writes(toy_gguf, engine, toy_config):
    from switchgen.graph import build_graph

    greedy = {"sampling": {"greedy": True}, "max_new_tokens": 60, "patch_size": 20,
              "switcher": {"strategy": "fixed", "sequence": "P A P"}}
    original = toy_config(**greedy)
    as_gguf = toy_config(**greedy, candidates=[
        {"name": "P", "role": "pretrained", "model": str(toy_gguf), "device": "cpu"},
        {"name": "F", "role": "finetuned", "model": "toy:F", "device": "cpu"},
        {"name": "A", "role": "aligned", "model": "toy:A", "device": "cpu"},
    ])
    want = build_graph(original, engine=engine).invoke({"query": "Why is the sky blue?"})
    got = build_graph(as_gguf, engine=engine).invoke({"query": "Why is the sky blue?"})
    assert [s["candidate"] for s in got["segments"]][:2] == ["P", "A"]
    assert got["segments"] == want["segments"]


def test_gguf_locations():
    from switchgen.core.errors import ModelLoadError
    from switchgen.servers.engine.loading import from_pretrained_args, load_tokenizer, resolve_model

    assert resolve_model("org/repo-GGUF/model.Q4_K_M.gguf") == "org/repo-GGUF/model.Q4_K_M.gguf"
    assert from_pretrained_args("org/repo-GGUF/sub/model.gguf") == ("org/repo-GGUF", {"gguf_file": "sub/model.gguf"})
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model("./missing/model.gguf")
    with pytest.raises(ModelLoadError, match="cannot load"):
        load_tokenizer("org/repo-GGUF/model.gguf")  # offline: not in the cache
