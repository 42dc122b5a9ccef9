"""The engine's batched paths give what each request gets alone: prefill passes, scores, sampled tokens,
and the decode step as a CUDA graph replays it (emulated on CPU: SWITCHGEN_CUDA_GRAPHS=emulate).

Requests are queued before a fresh engine's decode thread starts, so they are admitted together:
one prefill pass, then one decode batch (asserted through the worker's counters).
"""

from __future__ import annotations

import collections

import pytest
import torch

from switchgen.core.prompts import chat_prefix
from switchgen.servers.base import GenerationParams
from switchgen.servers.choices import choice_token_ids
from switchgen.servers.engine.requests import Request

QUERIES = [f"Question {i}: why is the sky blue{' and the sea green' * i}?" for i in range(5)]
SAMPLED = [GenerationParams(max_new_tokens=24, seed=100 + i, temperature=0.9, top_p=0.8, ignore_eos=True)
           for i in range(len(QUERIES))]
GREEDY = [GenerationParams(max_new_tokens=24, greedy=True, ignore_eos=True)] * len(QUERIES)


def together(backends: list, requests: list[Request]) -> list[Request]:
    """Queue every request (requests[i] on backends[i]) before the worker's thread starts, so they are
    admitted together; then wait for each."""
    worker = backends[0].worker
    assert worker._thread is None, "a fresh engine: its decode thread starts after the requests are queued"
    for req, backend in zip(requests, backends, strict=True):
        req.backend = backend
        worker.inbox.put(req)
    worker._ensure_thread()
    for req in requests:
        while (event := req.events.get(timeout=120))[0] not in ("done", "error"):
            pass
        if event[0] == "error":
            raise event[1]
    return requests


def prompts(backend) -> list[list[int]]:
    return [backend.encode(chat_prefix(backend.tokenizer, q)) for q in QUERIES]


@pytest.fixture()
def fresh(toy_kit):
    """A backend on an engine of its own (a decode thread not started yet)."""
    from switchgen.servers.engine.local import LocalEngine

    return lambda name, **kwargs: LocalEngine().backend(name, device="cpu", **kwargs)


@pytest.mark.parametrize("adapter", [False, True], ids=["stacked", "transformers"])
def test_scores_read_in_one_pass_equal_scores_read_alone(fresh, adapter, adapter_dir):
    """The switcher's digit distribution for several queries in one prefill pass (our forward, or
    transformers' for a LoRA switcher) is what each query gets alone."""
    kwargs = {"adapter": str(adapter_dir)} if adapter else {}
    name = "toy:A" if adapter else "toy:switcher"
    ids = [p + fresh(name, **kwargs).encode(" The answer is model")[1:] for p in prompts(fresh(name, **kwargs))]
    choices = choice_token_ids(fresh(name, **kwargs).tokenizer, ["0", "1", "2"])
    alone = [together([fresh(name, **kwargs)], [Request(list(i), None, choices=choices)])[0].scores for i in ids]
    backend = fresh(name, **kwargs)
    batched = together([backend] * len(ids), [Request(list(i), None, choices=choices) for i in ids])
    assert backend.worker.max_prefill_seen == len(ids)
    for got, want in zip(batched, alone, strict=True):
        assert got.scores == pytest.approx(want, rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("params", [SAMPLED, GREEDY], ids=["seeded", "greedy"])
@pytest.mark.parametrize("adapter", [False, True], ids=["stacked", "transformers"])
def test_rows_draw_the_same_tokens_alone_or_in_one_batch(fresh, params, adapter, adapter_dir):
    kwargs = {"adapter": str(adapter_dir)} if adapter else {}
    ids = prompts(fresh("toy:F", **kwargs))
    alone = [together([fresh("toy:F", **kwargs)], [Request(list(i), p)])[0].out for i, p in zip(ids, params, strict=True)]
    backend = fresh("toy:F", **kwargs)
    batched = together([backend] * len(ids), [Request(list(i), p) for i, p in zip(ids, params, strict=True)])
    assert backend.worker.max_batch_seen == len(QUERIES)
    assert [r.out for r in batched] == alone


def test_graph_replay_gives_the_eager_tokens(toy_kit, monkeypatch):
    """Each decode step replayed from the first step captured for its shape (as a CUDA graph would be)
    writes the tokens eager decoding writes: P, F and A rows in one stacked batch, greedy and seeded,
    rows joining and leaving (different budgets) and contexts growing past a window bucket."""
    names = ["toy:P", "toy:F", "toy:A", "toy:F", "toy:A"]
    budgets = [90, 20, 70, 40, 5]
    params = [GenerationParams(max_new_tokens=n, seed=7 + i, greedy=i % 2 == 0, ignore_eos=True)
              for i, n in enumerate(budgets)]

    def run() -> tuple[list[list[int]], object]:
        from switchgen.servers.engine.local import LocalEngine

        engine = LocalEngine()
        backends = [engine.backend(n, device="cpu") for n in names]
        ids = prompts(backends[0])
        reqs = together(backends, [Request(list(i), p) for i, p in zip(ids, params, strict=True)])
        (_, batch), = backends[0].worker.fused.values()
        return [r.out for r in reqs], batch.graphs

    monkeypatch.setenv("SWITCHGEN_CUDA_GRAPHS", "0")
    eager, off = run()
    monkeypatch.setenv("SWITCHGEN_CUDA_GRAPHS", "emulate")
    replayed, graphs = run()
    assert off.captures == 0 and graphs.captures > 1 and graphs.replays > 50
    assert replayed == eager


def test_a_model_leaving_the_stacked_path_keeps_its_cached_prefixes(toy_kit, adapter_dir):
    """A LoRA adapter attached to a model that served requests stacked sends it to the transformers path
    (as when an eval runs single:A, then the switch with an adapter switcher on A): its pooled caches,
    written in the stacked form, are read in the other form, and the text is what a fresh engine writes."""
    from switchgen.servers.engine.local import LocalEngine

    params = GenerationParams(max_new_tokens=20, greedy=True, ignore_eos=True)
    engine = LocalEngine()
    a = engine.backend("toy:A", device="cpu")
    prompt = chat_prefix(a.tokenizer, QUERIES[2])
    follow = prompt + a.generate(prompt, params).text + " and then"
    assert a.worker.fused_for(a) is not None
    engine.backend("toy:A", device="cpu", adapter=str(adapter_dir))  # A is a PeftModel now
    ids = a.encode(follow)  # the first patch keeps the tokens it was written as
    again = a.worker.run(a, Request(list(ids), params))
    assert a.worker.fused_for(a) is None and a.worker.healthy
    assert again.prefilled < len(ids) // 2  # the pooled prefix was read, not recomputed
    fresh = LocalEngine().backend("toy:A", device="cpu")
    assert again.out == fresh.worker.run(fresh, Request(list(ids), params)).out


def test_sampling_draws_each_token_with_its_probability():
    """Counter-based sampling: the frequencies over many counters follow the softmax (temperature and
    nucleus applied); the same (key, counter) draws the same token in any batch."""
    from switchgen.servers.engine.sampling import next_tokens, row_key

    torch.manual_seed(0)
    logits = torch.randn(40) * 2
    draws = 8000
    for params in (GenerationParams(max_new_tokens=1, temperature=1.0, top_p=1.0),
                   GenerationParams(max_new_tokens=1, temperature=0.7, top_p=0.6)):
        probs = torch.softmax(logits / params.temperature, dim=-1)
        ranked, order = probs.sort(descending=True)
        kept = int(((ranked.cumsum(0) - ranked) < params.top_p).sum())
        want = torch.zeros(40)
        want[order[:kept]] = ranked[:kept] / ranked[:kept].sum()
        got = next_tokens(logits.expand(draws, -1), [params] * draws, [row_key(3)] * draws, list(range(draws)))
        counts = collections.Counter(got)
        freq = torch.tensor([counts[i] / draws for i in range(40)])
        assert set(counts) <= set(order[:kept].tolist())  # nothing outside the nucleus
        assert (freq - want).abs().max() < 4 * (0.25 / draws) ** 0.5  # within 4 standard errors at worst
    rows = torch.randn(6, 40)
    params = [GenerationParams(max_new_tokens=1, seed=s) for s in range(6)]
    keys = [row_key(p.seed) for p in params]
    batch = next_tokens(rows, params, keys, [5] * 6)
    assert batch == [next_tokens(rows[i : i + 1], params[i : i + 1], keys[i : i + 1], [5])[0] for i in range(6)]
