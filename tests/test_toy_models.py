"""The toy kit keeps the promises of its docstring (switchgen.kits.toy), which the other tests lean on."""

from __future__ import annotations

import statistics

import pytest
from conftest import chat_prompt
from transformers import AutoTokenizer

from switchgen.kits.toy import build_toy_models

CHAT_QUERIES = [
    "What is 2 plus 3?",
    "Tell me a short story.",
    "Why is the ocean salty?",
    "Explain to a ten-year-old why the sky is blue.",
    "Which is bigger, 6 or 8?",
    "Who wrote the play Hamlet?",
    "What color is grass?",
    "Please summarize the text.",
]


def test_kit_is_reproducible(tmp_path, toy_kit):
    other = build_toy_models(tmp_path / "kit")
    for name, path in toy_kit.items():
        assert (other[name] / "model.safetensors").read_bytes() == (path / "model.safetensors").read_bytes()
    assert build_toy_models(tmp_path / "kit") == other  # a complete kit is reused


def test_tokenizer_digits_and_bos(toy_kit):
    tok = AutoTokenizer.from_pretrained(toy_kit["switcher"])
    for d in "0123456789":
        assert len(tok(d, add_special_tokens=False)["input_ids"]) == 1
        assert len(tok(" " + d, add_special_tokens=False)["input_ids"]) == 1
    assert tok("42", add_special_tokens=False)["input_ids"] == tok("4", add_special_tokens=False)["input_ids"] + tok(
        "2", add_special_tokens=False
    )["input_ids"]
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=True, add_generation_prompt=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert rendered == chat_prompt("hi", "")


@pytest.mark.parametrize("model", ["toy:P", "toy:F", "toy:switcher"])
def test_non_aligned_models_do_not_end(hf_greedy, model):
    for query in CHAT_QUERIES[:2]:
        _, tokens, ended = hf_greedy(model, chat_prompt(query, ""), 160)
        assert not ended and tokens == 160


def test_aligned_model_ends_on_its_own_but_not_at_once(hf_greedy):
    """Documented: greedy decoding from typical chat prompts stops after roughly 20-80 tokens,
    never on the first token."""
    lengths = []
    for query in CHAT_QUERIES:
        _, tokens, ended = hf_greedy("toy:A", chat_prompt(query, ""), 200)
        assert ended, query
        lengths.append(tokens)
    assert min(lengths) > 1, lengths
    assert 10 <= statistics.median(lengths) <= 160, lengths
