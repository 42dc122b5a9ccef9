"""The fused engine path: same-shaped Llama checkpoints share one forward pass per decode step.

Checked against transformers' own forward and generate (separately loaded copies of the weights),
and against the same requests run one by one.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from switchgen.core.prompts import chat_prefix
from switchgen.servers.base import GenerationParams

QUERIES = [f"Question {i}: why is the sky blue{' and the sea green' * (2 * i)}?" for i in range(6)]


@pytest.fixture()
def engine(toy_kit):
    from switchgen.servers.engine.local import LocalEngine

    return LocalEngine()


def test_fused_prefill_matches_the_transformers_forward(engine, toy_kit):
    import torch
    from transformers import AutoModelForCausalLM

    from switchgen.servers.engine.fused import PrefillRow, StackedModels

    models = [engine.backend(f"toy:{n}", device="cpu").loaded.model for n in "PFA"]
    stack = StackedModels(models)
    ids = torch.randint(10, 600, (1, 37)).tolist()[0]
    for index, name in enumerate("PFA"):
        plain = AutoModelForCausalLM.from_pretrained(toy_kit[name], dtype=torch.float32).eval()
        with torch.inference_mode():
            want = plain(input_ids=torch.tensor([ids]), logits_to_keep=1).logits[0, -1]
            whole = stack.prefill_rows([PrefillRow(index, None, ids)])[1][0]
            [kv], _ = stack.prefill_rows([PrefillRow(index, None, ids[:20])])
            grown = stack.prefill_rows([PrefillRow(index, kv, ids[20:])])[1][0]  # continuing a cache
        assert torch.allclose(whole, want, atol=1e-5)
        assert torch.allclose(grown, want, atol=1e-5)
        # The models' own parameters now live in the stacked tensors, unchanged.
        assert models[index].model.layers[0].self_attn.k_proj.weight.data_ptr() != 0
        with torch.inference_mode():
            again = models[index](input_ids=torch.tensor([ids]), logits_to_keep=1).logits[0, -1]
        assert torch.allclose(again, want, atol=1e-5)


def test_batched_prefill_equals_prefill_row_by_row(engine):
    """Rows of different models, cached prefixes and new lengths read in one pass: each row's logits and
    keys and values are what it gets alone."""
    import torch

    from switchgen.servers.engine.fused import PrefillRow, StackedModels

    stack = StackedModels([engine.backend(f"toy:{n}", device="cpu").loaded.model for n in "PFA"])
    gen = torch.Generator().manual_seed(5)
    seqs = [torch.randint(10, 600, (n,), generator=gen).tolist() for n in (30, 9, 51, 2, 17)]
    cut = [12, 0, 40, 1, 0]  # tokens already cached (0: none)
    models = [2, 0, 2, 1, 0]  # A twice, P twice, F once: rows per model differ
    with torch.inference_mode():
        cached = [stack.prefill_rows([PrefillRow(m, None, s[:c])])[0][0] if c else None
                  for m, s, c in zip(models, seqs, cut, strict=True)]
        rows = [PrefillRow(m, kv, s[c:]) for m, kv, s, c in zip(models, cached, seqs, cut, strict=True)]
        alone = [stack.prefill_rows([r]) for r in rows]
        kvs, logits = stack.prefill_rows(rows)
    for i, ((kv, want_logits), seq) in enumerate(zip(alone, seqs, strict=True)):
        assert kvs[i].shape == kv[0].shape and kvs[i].shape[3] == len(seq)
        assert torch.allclose(kvs[i], kv[0], atol=1e-5)
        assert torch.allclose(logits[i], want_logits[0], atol=1e-5)


def test_three_checkpoints_decode_in_one_pass_and_match_transformers(engine, hf_greedy):
    backends = {n: engine.backend(f"toy:{n}", device="cpu") for n in "PFA"}
    jobs = [("PFA"[i % 3], chat_prefix(backends["P"].tokenizer, q), 12 + 7 * i) for i, q in enumerate(QUERIES)]
    params = {n: GenerationParams(max_new_tokens=n, greedy=True, ignore_eos=True) for _, _, n in jobs}
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        together = list(pool.map(lambda job: backends[job[0]].generate(job[1], params[job[2]]), jobs))
    worker = backends["P"].worker
    assert len(worker.fused) == 1, "P, F and A have one shape: one stacked group"
    stack, _ = next(iter(worker.fused.values()))
    assert len(stack.models) == 3
    assert worker.max_batch_seen > 1
    for (name, prompt, n), patch in zip(jobs, together, strict=True):
        ids = hf_greedy.ids(f"toy:{name}", prompt, n)
        assert patch.tokens == n
        if hf_greedy.tokenizer(f"toy:{name}").eos_token_id not in ids:
            assert patch.text == hf_greedy.decode(ids, f"toy:{name}")
        else:  # the plain generate stopped at EOS; ours writes on: the text up to it agrees
            assert patch.text.startswith(hf_greedy.decode(ids, f"toy:{name}"))


def test_sampled_rows_draw_the_same_tokens_fused_or_alone(engine):
    backends = {n: engine.backend(f"toy:{n}", device="cpu") for n in "PFA"}
    jobs = [("PFA"[i % 3], chat_prefix(backends["P"].tokenizer, q), GenerationParams(max_new_tokens=30, seed=i))
            for i, q in enumerate(QUERIES)]
    alone = [backends[n].generate(p, params) for n, p, params in jobs]
    engine.clear_caches()
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        together = list(pool.map(lambda job: backends[job[0]].generate(job[1], job[2]), jobs))
    assert [p.text for p in together] == [p.text for p in alone]
    assert [p.tokens for p in together] == [p.tokens for p in alone]


def test_a_model_joining_a_running_batch_and_longer_prompts_keep_every_row_exact(engine):
    """Rows already decoding move when the batch grows a model, a slot or columns; their tokens do not change."""
    import threading

    p = engine.backend("toy:P", device="cpu")
    prompts = [chat_prefix(p.tokenizer, q) for q in QUERIES]
    params = GenerationParams(max_new_tokens=300, greedy=True, ignore_eos=True)
    short = GenerationParams(max_new_tokens=20, greedy=True, ignore_eos=True)
    alone_p = p.generate(prompts[0], params)
    f = engine.backend("toy:F", device="cpu")  # not yet stacked: it joins while P decodes
    alone_f = [f.generate(q, short) for q in prompts[1:]]
    engine.clear_caches()
    started = threading.Event()
    seen: list[str] = []

    def first() -> str:
        return p.generate(prompts[0], params, on_text=lambda t: (seen.append(t), started.set())).text

    with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
        running = pool.submit(first)
        assert started.wait(60)
        later = list(pool.map(lambda q: f.generate(q, short), prompts[1:]))  # longer prompts than P's cache
        assert running.result() == alone_p.text
    assert [x.text for x in later] == [x.text for x in alone_f]


def test_a_lora_switcher_keeps_the_transformers_path(engine, adapter_dir):
    sw = engine.backend("toy:A", device="cpu", adapter=str(adapter_dir))
    assert sw.worker.fused_for(sw) is None
