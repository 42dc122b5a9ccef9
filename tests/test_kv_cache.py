"""KV-cache reuse: same results as recomputing from scratch, and only new tokens are prefilled."""

from __future__ import annotations

import pytest
import torch
from conftest import chat_prompt, lcp, toy_config_dict
from transformers import AutoModelForCausalLM, AutoTokenizer

from switchgen.core.prompts import switcher_prompt, user_turn
from switchgen.graph import build_graph, load_config
from switchgen.servers.base import GenerationParams
from switchgen.servers.engine.local import LocalEngine

QUERIES = ["What is 2 plus 3?", "Tell me a short story.", "Why is the ocean salty?"]


def ids_of(tokenizer, text: str) -> list[int]:
    """Token ids of a rendered prompt (it starts with BOS, written by the template)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    return ids


@pytest.fixture(scope="module")
def tokenizer(toy_kit):
    return AutoTokenizer.from_pretrained(toy_kit["P"])


# -- same results with and without reuse ----------------------------------------------------


@pytest.fixture(scope="module")
def scratch_engine(toy_kit):
    return LocalEngine(reuse_cache=False)


@pytest.fixture(scope="module")
def engine(toy_kit):
    """This module's own reuse engine, so that it and `scratch_engine` serve the same history.

    Seen once: on the session's shared engine, after the other test files, the toy preset's run below
    diverged from recompute (A's fourth patch wrote 11 junk tokens where the fresh engine ended at
    once); alone, or on this fixture, it matches. The likely cause is the engine's memory of the ids
    each model wrote for a text (LocalBackend.encode): toy models write invalid UTF-8 ("\ufffd"),
    which re-tokenises to other ids, so history can change the ids a later prompt gets. Real text
    round-trips. Not settled; the comparison here is reuse against recompute with equal histories."""
    return LocalEngine()


def strip_floats(decisions):
    return [{k: v for k, v in d.items() if k not in ("probabilities", "digit_mass")} for d in decisions]


@pytest.mark.parametrize("anchor", [True, False])
def test_reuse_matches_recompute_from_scratch(engine, scratch_engine, anchor):
    config = load_config(
        toy_config_dict(aligned_model="toy:F", anchor=anchor, seed=11, max_new_tokens=70, patch_size=15, sampling={"greedy": True})
    )
    cached = build_graph(config, engine=engine)
    scratch = build_graph(config, engine=scratch_engine)
    for query in QUERIES:
        a = cached.invoke({"query": query})
        b = scratch.invoke({"query": query})
        assert a["segments"] == b["segments"]
        assert a["output"] == b["output"] and a["tokens_used"] == b["tokens_used"] == 70
        assert strip_floats(a["decisions"]) == strip_floats(b["decisions"])
        for da, db in zip(a["decisions"], b["decisions"], strict=False):
            if da["probabilities"] is None:
                assert db["probabilities"] is None
            else:
                assert list(da["probabilities"].values()) == pytest.approx(list(db["probabilities"].values()), rel=1e-4, abs=1e-6)
                assert da["digit_mass"] == pytest.approx(db["digit_mass"], rel=1e-4)
        assert len(a["segments"]) >= 5
    # The reuse engine did keep caches, the scratch engine none.
    assert any(b.pool._entries for b in engine._backends.values())
    assert not any(b.pool._entries for b in scratch_engine._backends.values())


def test_reuse_matches_recompute_toy_preset_anchor_off(engine, scratch_engine):
    config = load_config("toy", seed=5, max_new_tokens=60, patch_size=15, sampling={"greedy": True}, anchor=False)
    for query in QUERIES:
        a = build_graph(config, engine=engine).invoke({"query": query})
        b = build_graph(config, engine=scratch_engine).invoke({"query": query})
        assert a["segments"] == b["segments"]
        assert strip_floats(a["decisions"]) == strip_floats(b["decisions"])


# -- prefill work -----------------------------------------------------------------------------


@pytest.fixture()
def fresh_engine(toy_kit):
    """A new engine per test: its caches hold nothing from other tests."""
    return LocalEngine()


def test_second_patch_prefills_only_new_tokens(fresh_engine, tokenizer, hf_greedy):
    backend = fresh_engine.backend("toy:P", device="cpu")
    prompt1 = chat_prompt("Tell me a short story.", "")
    ids1 = ids_of(tokenizer, prompt1)
    p1 = backend.generate(prompt1, GenerationParams(max_new_tokens=12, greedy=True))
    assert p1.prefilled == len(ids1)  # nothing cached yet
    assert p1.tokens == 12 and p1.finish_reason == "length"
    generated = hf_greedy.ids("toy:P", ids1, 12)  # independently: the tokens it wrote
    assert hf_greedy.decode(generated) == p1.text
    # The cache now holds the prompt and every written token but the last (never fed back).
    cached = ids1 + generated[:-1]

    # The next prompt extends prompt + patch: the model sees its own tokens, then the new text's.
    tail = " and then"
    prompt2 = prompt1 + p1.text + tail
    ids2 = ids1 + generated + tokenizer(tail, add_special_tokens=False)["input_ids"]
    p2 = backend.generate(prompt2, GenerationParams(max_new_tokens=5, greedy=True))
    shared = min(lcp(cached, ids2), len(ids2) - 1)
    assert p2.prefilled == len(ids2) - shared
    assert p2.prefilled == len(tokenizer(tail, add_special_tokens=False)["input_ids"]) + 1
    assert p2.prefilled < 10 < len(ids2)
    # And the reused cache changes nothing: the patch is the uncached greedy continuation of those ids.
    assert p2.text == hf_greedy.decode(hf_greedy.ids("toy:P", ids2, 5))


def test_switching_authors_prefills_only_the_other_authors_text(fresh_engine, tokenizer):
    """P writes, F writes, P writes again: P prefills only F's patch (plus its own last token)."""
    p = fresh_engine.backend("toy:P", device="cpu")
    f = fresh_engine.backend("toy:F", device="cpu")
    query = "Why is the ocean salty?"
    params = GenerationParams(max_new_tokens=10, greedy=True)
    a = p.generate(chat_prompt(query, ""), params)
    b = f.generate(chat_prompt(query, a.text), params)
    assert b.prefilled == len(ids_of(tokenizer, chat_prompt(query, a.text)))  # F has seen nothing
    c = p.generate(chat_prompt(query, a.text + b.text), params)
    f_tokens = len(tokenizer(b.text, add_special_tokens=False)["input_ids"])
    assert c.prefilled == f_tokens + 1
    assert c.prefilled < len(ids_of(tokenizer, chat_prompt(query, a.text + b.text))) // 2


def test_prefill_after_a_one_token_patch(fresh_engine, tokenizer):
    backend = fresh_engine.backend("toy:F", device="cpu")
    prompt1 = chat_prompt("Why is the ocean salty?", "Rivers carry salt")
    backend.generate(prompt1, GenerationParams(max_new_tokens=1, greedy=True))  # caches exactly prompt1
    prompt2 = prompt1 + " and minerals into the sea."
    ids1, ids2 = ids_of(tokenizer, prompt1), ids_of(tokenizer, prompt2)
    p2 = backend.generate(prompt2, GenerationParams(max_new_tokens=3, greedy=True))
    assert p2.prefilled == len(ids2) - lcp(ids1, ids2)
    assert p2.prefilled < len(ids2) - len(ids1) + 3


def test_identical_prompt_prefills_one_token(fresh_engine, tokenizer):
    backend = fresh_engine.backend("toy:F", device="cpu")
    prompt = chat_prompt("Hi.", "Hello")
    backend.generate(prompt, GenerationParams(max_new_tokens=1, greedy=True))
    again = backend.generate(prompt, GenerationParams(max_new_tokens=4, greedy=True))
    assert again.prefilled == 1  # one token is re-run to get fresh logits
    scratch = LocalEngine(reuse_cache=False).backend("toy:F", device="cpu")
    first = scratch.generate(prompt, GenerationParams(max_new_tokens=4, greedy=True))
    assert first.prefilled == len(ids_of(tokenizer, prompt))
    assert first.text == again.text


def test_no_reuse_prefills_everything(tokenizer, toy_kit):
    backend = LocalEngine(reuse_cache=False).backend("toy:P", device="cpu")
    prompt1 = chat_prompt("Tell me a short story.", "")
    p1 = backend.generate(prompt1, GenerationParams(max_new_tokens=8, greedy=True))
    prompt2 = prompt1 + p1.text
    p2 = backend.generate(prompt2, GenerationParams(max_new_tokens=8, greedy=True))
    assert p2.prefilled == len(ids_of(tokenizer, prompt2))


def test_switcher_choice_distribution_reuses_the_prefix(fresh_engine, tokenizer):
    switcher = fresh_engine.backend("toy:switcher", device="cpu")
    query = "Tell me a short story."
    prompt1 = user_turn(switcher.tokenizer, switcher_prompt(query, ["Once upon a time"], [0], 3))
    prompt2 = user_turn(switcher.tokenizer, switcher_prompt(query, ["Once upon a time", " there was a robot"], [0, 2], 3))
    ids1, ids2 = ids_of(tokenizer, prompt1), ids_of(tokenizer, prompt2)
    s1 = switcher.choice_distribution(prompt1, ["0", "1", "2"])
    s2 = switcher.choice_distribution(prompt2, ["0", "1", "2"])
    assert s1.prefilled == len(ids1)
    assert s2.prefilled == len(ids2) - lcp(ids1, ids2)
    assert s2.prefilled < len(ids2)
    assert lcp(ids1, ids2) > 10
    fresh = LocalEngine(reuse_cache=False).backend("toy:switcher", device="cpu").choice_distribution(prompt2, ["0", "1", "2"])
    assert fresh.prefilled == len(ids2)
    assert s2.probs == pytest.approx(fresh.probs, rel=1e-4, abs=1e-6)
    assert s2.mass == pytest.approx(fresh.mass, rel=1e-4)


# -- weights loaded once ----------------------------------------------------------------------


def test_candidate_and_switcher_share_one_checkpoint(toy_kit):
    engine = LocalEngine()
    config = load_config(toy_config_dict(switcher={"model": "toy:A"}))
    graph = build_graph(config, engine=engine)
    assert len(engine.loaded_models) == 3
    assert sorted(m.location.rsplit("/", 1)[-1] for m in engine.loaded_models) == ["A", "F", "P"]
    result = graph.invoke({"query": "Hi.", "forced": ["P"]})
    assert len(result["segments"]) >= 1
    assert len(engine.loaded_models) == 3
    assert engine.backend("toy:A", device="cpu") is engine.backend("toy:A", device="cpu")


def test_default_switcher_is_the_aligned_model_loaded_once(toy_kit):
    engine = LocalEngine()
    data = toy_config_dict()
    data["switcher"] = {"strategy": "learned"}  # no model, no device: the aligned candidate's
    config = load_config(data)
    assert config.switcher_model == "toy:A"
    graph = build_graph(config, engine=engine)
    assert len(engine.loaded_models) == 3
    graph.invoke({"query": "Hi.", "forced": ["F"]})
    assert len(engine.loaded_models) == 3


def test_distinct_switcher_is_a_fourth_model(toy_kit):
    engine = LocalEngine()
    build_graph(load_config(toy_config_dict()), engine=engine)
    assert len(engine.loaded_models) == 4
    build_graph(load_config(toy_config_dict(seed=9)), engine=engine)  # a second graph loads nothing new
    assert len(engine.loaded_models) == 4


# -- a LoRA switcher on a candidate's weights -----------------------------------------------


@pytest.fixture(scope="module")
def lora_adapter(toy_kit, tmp_path_factory):
    """A random (non-zero) LoRA adapter on toy:A, saved as a PEFT folder."""
    from peft import LoraConfig, get_peft_model

    base = AutoModelForCausalLM.from_pretrained(toy_kit["A"], dtype=torch.float32)
    torch.manual_seed(0)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    path = tmp_path_factory.mktemp("lora") / "switcher_adapter"
    model.save_pretrained(path)
    return path


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_lora_switcher_shares_weights_and_stays_off_for_the_candidate(toy_kit, lora_adapter, tokenizer, hf_greedy):
    from peft import PeftModel

    engine = LocalEngine()
    config = load_config(
        toy_config_dict(anchor=False, seed=2, max_new_tokens=30, patch_size=10, sampling={"greedy": True},
                        switcher={"model": "toy:A", "adapter": str(lora_adapter)})
    )
    graph = build_graph(config, engine=engine)
    assert len(engine.loaded_models) == 3

    query = "Tell me a short story."
    prompt = user_turn(tokenizer, switcher_prompt(query, [], [], 3))
    switcher = engine.backend("toy:A", device="cpu", adapter=str(lora_adapter))
    candidate = engine.backend("toy:A", device="cpu")
    assert switcher is not candidate and switcher.loaded is candidate.loaded
    with_adapter = switcher.choice_distribution(prompt, ["0", "1", "2"])
    # The candidate's own calls run the base weights (the adapter is off for them).
    cand_prompt = chat_prompt(query, "Once upon a time")
    patch = candidate.generate(cand_prompt, GenerationParams(max_new_tokens=8, greedy=True))
    assert patch.text == hf_greedy("toy:A", cand_prompt, 8)[0]
    base_scores = LocalEngine().backend("toy:A", device="cpu").choice_distribution(prompt, ["0", "1", "2"])
    assert candidate.choice_distribution(prompt, ["0", "1", "2"]).probs == pytest.approx(base_scores.probs, rel=1e-4)

    # The switcher's distribution is the adapted model's, computed independently with PEFT.
    peft_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(toy_kit["A"], dtype=torch.float32), str(lora_adapter)
    ).eval()
    with torch.inference_mode():
        logits = peft_model(input_ids=torch.tensor([ids_of(tokenizer, prompt)])).logits[0, -1]
    full = torch.softmax(logits.float(), dim=-1)
    per = [float(full[[tokenizer.convert_tokens_to_ids(t) for t in (str(i), f"\u0120{i}")]].sum()) for i in range(3)]
    assert with_adapter.mass == pytest.approx(sum(per), rel=1e-4)
    assert with_adapter.probs == pytest.approx([p / sum(per) for p in per], rel=1e-4)
    assert with_adapter.probs != pytest.approx(base_scores.probs, rel=1e-3)

    # In the graph: the switcher's decisions carry the adapted distribution.
    result = graph.invoke({"query": query})
    first = result["decisions"][0]
    assert first["how"] == "switcher"
    assert list(first["probabilities"].values()) == pytest.approx(with_adapter.probs, rel=1e-4)
    assert len(engine.loaded_models) == 3


def test_common_prefix_matches_its_definition():
    """The pool's prefix length (slice compares in doubling, then halving steps) equals the first
    index where the ids differ, for ids that share a prefix of any length and differ anywhere."""
    import random

    from switchgen.servers.engine.kvcache import common_prefix

    rng = random.Random(0)
    for _ in range(3000):
        a = [rng.randrange(3) for _ in range(rng.randrange(300))]
        b = a[: rng.randrange(len(a) + 1)] + [rng.randrange(3) for _ in range(rng.randrange(40))]
        first = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        assert common_prefix(a, b) == common_prefix(b, a) == first
