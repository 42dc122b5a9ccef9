"""A LoRA switcher on the aligned checkpoint (as bunsenfeng/PFA_switcher_1 is on Tulu 3) shares its weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from switchgen.core.prompts import switcher_prompt, user_turn
from switchgen.graph import build_graph, load_config
from switchgen.servers.base import GenerationParams
from switchgen.servers.engine.local import LocalEngine


def _config(adapter: Path | None):
    return load_config(
        "toy",
        seed=2,
        max_new_tokens=60,
        patch_size=15,
        anchor=False,
        sampling={"greedy": True},
        switcher={"model": "toy:A", "adapter": str(adapter) if adapter else None, "device": "cpu"},
    )


def test_adapter_switcher_loads_the_aligned_weights_once(adapter_dir):
    engine = LocalEngine()
    graph = build_graph(_config(adapter_dir), engine=engine)
    assert len(engine.loaded_models) == 3  # P, F, A; the switcher is A plus an adapter
    result = graph.invoke({"query": "Name a colour."})
    switched = [d for d in result["decisions"] if d["how"] == "switcher"]
    assert switched and all(abs(sum(d["probabilities"].values()) - 1) < 1e-6 for d in switched)


def test_adapter_changes_only_the_switcher(adapter_dir):
    with_adapter, without = LocalEngine(), LocalEngine()
    build_graph(_config(adapter_dir), engine=with_adapter)
    build_graph(_config(None), engine=without)
    tuned = with_adapter.backend("toy:A", device="cpu", adapter=str(adapter_dir))
    plain_a = with_adapter.backend("toy:A", device="cpu")
    reference_a = without.backend("toy:A", device="cpu")

    prompt = user_turn(tuned.tokenizer, switcher_prompt("Name a colour.", ["Red"], [2], 3))
    adapted = tuned.choice_distribution(prompt, ["0", "1", "2"])
    untuned = reference_a.choice_distribution(prompt, ["0", "1", "2"])
    assert adapted.probs != pytest.approx(untuned.probs, abs=1e-4)  # the adapter is active for the switcher

    # ... and off for the aligned candidate sharing the weights: same tokens as a plain A.
    params = GenerationParams(max_new_tokens=25, greedy=True)
    assert plain_a.generate(prompt, params).text == reference_a.generate(prompt, params).text
    # The candidate's scores equal plain A's too, after the adapter was used.
    again = plain_a.choice_distribution(prompt, ["0", "1", "2"])
    assert again.probs == pytest.approx(untuned.probs, abs=1e-5)
