"""servers/compose.yaml is generated from the configuration: regenerating it gives the same file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from switchgen.cli import main
from switchgen.core.errors import ConfigError
from switchgen.graph import load_config
from switchgen.servers.serve.compose import TGI_IMAGE, compose_config, compose_file

COMMITTED = Path(__file__).resolve().parents[1] / "servers" / "compose.yaml"


def test_committed_compose_file_is_what_the_tulu3_preset_generates(tmp_path, capsys):
    out = tmp_path / "compose.yaml"
    assert main(["serve", "--preset", "tulu3", "--compose", "--output", str(out)]) == 0
    assert out.read_text() == COMMITTED.read_text(), "regenerate: switchgen serve --preset tulu3 --compose --output servers/compose.yaml"


def services(text: str) -> dict:
    return yaml.safe_load(text)["services"]


def test_tgi_compose_one_pinned_gpu_per_checkpoint_and_a_merged_switcher():
    config = load_config("tulu3")
    svc = services(compose_file(config))
    assert list(svc) == ["p", "f", "a", "switcher"]
    gpus = [s["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] for s in svc.values()]
    assert gpus == [["0"], ["1"], ["2"], ["3"]]
    for _name, s in svc.items():
        assert s["image"] == TGI_IMAGE and s["image"].rsplit(":", 1)[1].startswith("3.3.")
        command = s["command"]
        assert command[command.index("--usage-stats") + 1] == "off"
        assert int(command[command.index("--max-top-n-tokens") + 1]) >= config.switcher.top_n_tokens
        assert "--lora-adapters" not in command  # it would turn prefix caching off
        assert s["healthcheck"]["test"][-1] == "http://localhost:80/health"
        assert s["volumes"] == ["${SWITCHGEN_DATA:-./data}:/data"]  # one shared cache
    models = [s["command"][s["command"].index("--model-id") + 1] for s in svc.values()]
    assert models[:3] == [c.model for c in config.candidates]
    assert models[3] == "/data/switchgen/merged-switcher"


def test_vllm_compose_keeps_the_adapter_on_its_base_server():
    svc = services(compose_file(load_config("tulu3"), engine="vllm"))
    assert list(svc) == ["p", "f", "a"]
    a = svc["a"]["command"]
    assert a[0] == "allenai/Llama-3.1-Tulu-3-8B" and "--enable-lora" in a
    assert a[a.index("--lora-modules") + 1] == "bunsenfeng/PFA_switcher_1=bunsenfeng/PFA_switcher_1"
    assert all(s["healthcheck"]["test"][-1] == "http://localhost:8000/health" for s in svc.values())
    assert all(s["environment"]["VLLM_NO_USAGE_STATS"] == "1" for s in svc.values())


@pytest.mark.parametrize("engine", ["tgi", "vllm"])
def test_printed_config_points_at_the_compose_ports(engine):
    config = load_config("tulu3")
    svc = services(compose_file(config, engine=engine, base_port=9000))
    host_ports = {name: int(s["ports"][0].rsplit(":", 2)[1]) for name, s in svc.items()}
    served = load_config(yaml.safe_load(compose_config(config, engine=engine, base_port=9000)))
    backend = {"tgi": "tgi", "vllm": "openai"}[engine]
    assert [c.backend for c in served.candidates] == [backend] * 3
    assert [c.url for c in served.candidates] == [f"http://127.0.0.1:{host_ports[n]}" for n in ("p", "f", "a")]
    sw = served.switcher_server()
    if engine == "tgi":  # the merged switcher: its own server, no adapter sent
        assert sw.url == f"http://127.0.0.1:{host_ports['switcher']}" and served.switcher.adapter is None
        assert served.switcher_model == "allenai/Llama-3.1-Tulu-3-8B"  # its tokenizer
    else:  # the LoRA on A's server, asked by its name
        assert sw.url == served.candidates[2].url and served.switcher.served_model == "bunsenfeng/PFA_switcher_1"


def test_untuned_switcher_shares_the_aligned_server():
    svc = services(compose_file(load_config("olmo2-1b")))
    assert list(svc) == ["p", "f", "a"]
    served = load_config(yaml.safe_load(compose_config(load_config("olmo2-1b"))))
    assert served.switcher_server().url == served.candidates[2].url


def test_toy_models_cannot_go_in_a_compose_file(capsys):
    with pytest.raises(ConfigError, match="toy:P is a toy checkpoint"):
        compose_file(load_config("toy"))
    assert main(["serve", "--preset", "toy", "--compose"]) == 2
    assert "toy:P is a toy checkpoint" in capsys.readouterr().err


def test_merge_switcher_writes_a_model_equal_to_base_plus_adapter(toy_kit, tmp_path, capsys):
    """peft's merge_and_unload, as `switchgen merge-switcher` runs it: the same logits as the adapter."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    lora = get_peft_model(
        AutoModelForCausalLM.from_pretrained(toy_kit["A"]),
        LoraConfig(r=4, lora_alpha=32, target_modules="all-linear", init_lora_weights=False),
    )
    adapter = tmp_path / "adapter"
    lora.save_pretrained(adapter)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "candidates": [{"name": "P", "role": "pretrained", "model": "toy:P"}, {"name": "A", "role": "aligned", "model": "toy:A"}],
        "switcher": {"model": "toy:A", "adapter": str(adapter)},
    }))
    merged_dir = tmp_path / "merged"
    assert main(["merge-switcher", "--config", str(config), "--output", str(merged_dir)]) == 0
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(toy_kit["A"]), adapter).eval()
    ids = torch.tensor([[0, 5, 17, 42, 99]])
    base = AutoModelForCausalLM.from_pretrained(toy_kit["A"])
    with torch.inference_mode():
        got, want = merged(ids).logits, reference(ids).logits
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-3)  # float32 rounding of the merged sums
        assert not torch.allclose(got, base(ids).logits, rtol=1e-2, atol=1e-1)  # the adapter is in there
    assert (merged_dir / "tokenizer_config.json").is_file()
    assert main(["merge-switcher", "--config", str(config), "--output", str(merged_dir)]) == 2  # no overwrite
    assert "not empty" in capsys.readouterr().err
