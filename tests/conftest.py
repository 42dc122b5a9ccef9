"""Shared fixtures: a private SWITCHGEN_HOME, the toy kit built once, one engine for the session.

Every model call in the suite is a real forward pass on the tiny toy checkpoints
(switchgen.kits.toy); nothing of switchgen's own is mocked.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Settle the environment before switchgen (or transformers) is imported by any test module.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.pop("TOY_EOS", None)  # the toy kit must be built with its shipped settings
# A private SWITCHGEN_HOME, set before any test module is imported (subprocesses inherit it): the
# toy kit is built fresh, once per test session, from the code under test.
_HOME = Path(tempfile.mkdtemp(prefix="switchgen-test-home-"))
_PREVIOUS_HOME = os.environ.get("SWITCHGEN_HOME")
os.environ["SWITCHGEN_HOME"] = str(_HOME)
# The toy models are tiny: one thread is faster than several (and subprocesses inherit this).
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config: pytest.Config) -> None:
    import torch

    torch.set_num_threads(1)


TOY_NAMES = ("P", "F", "A")


@pytest.fixture(scope="session", autouse=True)
def switchgen_home() -> Path:
    """The session's SWITCHGEN_HOME; removed (and the previous value restored) at the end."""
    assert os.environ["SWITCHGEN_HOME"] == str(_HOME)
    yield _HOME
    if _PREVIOUS_HOME is None:
        os.environ.pop("SWITCHGEN_HOME", None)
    else:
        os.environ["SWITCHGEN_HOME"] = _PREVIOUS_HOME
    shutil.rmtree(_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def toy_kit(switchgen_home: Path) -> dict[str, Path]:
    """The toy checkpoints, built once in the session's SWITCHGEN_HOME."""
    from switchgen.kits.toy import default_toy_dir, ensure_toy_models

    assert default_toy_dir().is_relative_to(switchgen_home)
    kit = ensure_toy_models()
    assert set(kit) == {*TOY_NAMES, "switcher"}
    for path in kit.values():
        assert path.is_relative_to(switchgen_home)
        assert (path / "config.json").is_file()
    return kit


@pytest.fixture(scope="session")
def skills_kit(switchgen_home: Path) -> dict[str, Path]:
    """The skills kit (trained P/F/A, ~30 s of CPU), built once in the session's SWITCHGEN_HOME."""
    from switchgen.kits.skills import ensure_skills_kit

    return ensure_skills_kit()


# The notebook's rollouts (notebooks/train_and_evaluate.ipynb): skills-switch, every train query, budget 12.
SKILLS_SWITCH_ROLLOUTS = ["rollouts", "--task", "skills-switch", "--preset", "skills", "--max-new-tokens", "12",
                          "--k", "2", "--seed", "0", "--concurrency", "4", "--no-progress"]


@pytest.fixture(scope="session")
def skills_switch_rollouts(skills_kit: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """skills-switch rollouts exactly as the notebook makes them, made once in a folder of their own (the records
    and their settings' fingerprint): the notebook's test copies the folder as the notebook's (its command then
    resumes a complete file) and switch-global trains on the file."""
    from switchgen.cli import main

    path = tmp_path_factory.mktemp("skills-rollouts") / "rollouts.jsonl"
    assert main([*SKILLS_SWITCH_ROLLOUTS, "--out", str(path)]) == 0
    return path


@pytest.fixture(scope="session")
def engine(toy_kit: dict[str, Path]):
    """One in-process engine (KV-cache reuse on) shared by the tests: each toy model loads once."""
    from switchgen.servers.engine.local import LocalEngine

    return LocalEngine()


def _merge(base: dict, overrides: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def toy_config_dict(**overrides: object) -> dict:
    """A config dict for the toy models on CPU; nested dicts (switcher, sampling) merge key by key.

    `candidates` replaces the list; `aligned_model` swaps the model behind the aligned candidate
    "A" (e.g. "toy:F", which never emits EOS, so runs reach the budget).
    """
    aligned_model = overrides.pop("aligned_model", "toy:A")
    base = {
        "candidates": [
            {"name": "P", "role": "pretrained", "model": "toy:P", "device": "cpu"},
            {"name": "F", "role": "finetuned", "model": "toy:F", "device": "cpu"},
            {"name": "A", "role": "aligned", "model": aligned_model, "device": "cpu"},
        ],
        "switcher": {"strategy": "learned", "model": "toy:switcher", "device": "cpu", "top_p": 0.7},
        "patch_size": 20,
        "max_new_tokens": 80,
        "seed": 0,
        # Patches of exactly patch_size tokens, which many tests count on. On by default for users: a
        # patch finishes a split character (tests/test_reliability.py turns it on; the toy preset has it).
        "sampling": {"finish_characters": False},
    }
    return _merge(base, overrides)


@pytest.fixture(scope="session")
def toy_config():
    """`toy_config(**overrides)` -> a SwitchConfig for the toy models (see toy_config_dict)."""
    from switchgen.graph import load_config

    def make(**overrides: object):
        return load_config(toy_config_dict(**overrides))

    return make


@pytest.fixture(scope="session")
def make_graph(engine, toy_config):
    """`make_graph(**overrides)` -> (config, compiled graph) on the shared engine."""
    from switchgen.graph import build_graph

    def make(**overrides: object):
        config = toy_config(**overrides)
        return config, build_graph(config, engine=engine)

    return make


def lcp(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists (independent of switchgen's)."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@pytest.fixture(scope="session")
def common_prefix_len():
    return lcp


def chat_prompt(query: str, trace: str) -> str:
    """The toy chat template's rendering of a user query and a partial assistant reply, written out."""
    return f"<|bos|><|user|>\n{query}<|end|>\n<|assistant|>\n{trace}"


class GreedyReference:
    """transformers' own greedy `generate` on the toy models: an independent reference for what a
    greedy patch must contain (no switchgen code involved)."""

    def __init__(self, kit: dict) -> None:
        self.kit = kit
        self._models: dict[str, tuple] = {}

    def _load(self, model: str) -> tuple:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        name = model.removeprefix("toy:")
        if name not in self._models:
            path = self.kit[name]
            self._models[name] = (
                AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(),
                AutoTokenizer.from_pretrained(path),
            )
        return self._models[name]

    def tokenizer(self, model: str = "toy:P"):
        return self._load(model)[1]

    def prompt_ids(self, model: str, prompt: str) -> list[int]:
        """A rendered prompt's ids: exactly one BOS, written by the template or added."""
        tok = self.tokenizer(model)
        return tok(prompt, add_special_tokens=not prompt.startswith(tok.bos_token))["input_ids"]

    def ids(self, model: str, prompt: str | list[int], max_new_tokens: int) -> list[int]:
        """The greedy continuation's token ids, up to and including EOS."""
        import torch

        lm, tok = self._load(model)
        ids = self.prompt_ids(model, prompt) if isinstance(prompt, str) else list(prompt)
        input_ids = torch.tensor([ids])
        with torch.inference_mode():
            out = lm.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )
        new = out[0, len(ids):].tolist()
        if tok.eos_token_id in new:
            new = new[: new.index(tok.eos_token_id) + 1]
        return new

    def decode(self, ids: list[int], model: str = "toy:P") -> str:
        return self.tokenizer(model).decode(ids, skip_special_tokens=True)

    def __call__(self, model: str, prompt: str | list[int], max_new_tokens: int) -> tuple[str, int, bool]:
        """(decoded text, tokens written, whether it ended with EOS)."""
        new = self.ids(model, prompt, max_new_tokens)
        tok = self.tokenizer(model)
        return self.decode(new, model), len(new), tok.eos_token_id in new


@pytest.fixture(scope="session")
def hf_greedy(toy_kit) -> GreedyReference:
    return GreedyReference(toy_kit)


@pytest.fixture(scope="session")
def adapter_dir(toy_kit: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real LoRA adapter on toy A, with random (non-zero) weights so it changes the logits
    (peft's default initialisation makes a new adapter a no-op)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(11)  # seed 7 gives a degenerate adapter: digits hold ~1e-11 of the mass
    base = AutoModelForCausalLM.from_pretrained(toy_kit["A"])
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=32, target_modules="all-linear", init_lora_weights=False))
    out = tmp_path_factory.mktemp("lora") / "switcher_adapter"
    lora.save_pretrained(out)
    return out
