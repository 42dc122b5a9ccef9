"""Backend fields in the configuration: remote candidates and switchers, URLs from the environment."""

from __future__ import annotations

import pytest
import yaml
from conftest import toy_config_dict

from switchgen.cli import main
from switchgen.core.errors import ConfigError
from switchgen.graph import load_config


def with_candidate(**fields) -> dict:
    data = toy_config_dict()
    data["candidates"][0].update(fields)
    return data


def test_url_from_the_environment(monkeypatch):
    monkeypatch.setenv("TGI_URL_P", "http://gpu-box:8080/")
    config = load_config(with_candidate(backend="tgi", url="${TGI_URL_P}"))
    assert config.candidates[0].url == "http://gpu-box:8080"  # expanded, trailing slash dropped
    monkeypatch.delenv("TGI_URL_P")
    config = load_config(with_candidate(backend="tgi", url="${TGI_URL_P:-http://127.0.0.1:9000}"))
    assert config.candidates[0].url == "http://127.0.0.1:9000"


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"backend": "tgi"}, "backend 'tgi' needs base_url"),
        ({"url": "http://127.0.0.1:8080"}, "base_url is set but backend is 'local'"),
        ({"backend": "openai", "url": "${SWITCHGEN_TEST_UNSET_VAR}"}, "environment variable SWITCHGEN_TEST_UNSET_VAR"),
        ({"backend": "tgi", "url": "127.0.0.1:8080"}, "is not an http(s) URL"),
        ({"backend": "vllm", "url": "http://127.0.0.1:8080"}, "candidates.0.backend"),
        ({"backend": "tgi", "url": "http://127.0.0.1:8080", "timeout": 0}, "candidates.0.timeout"),
    ],
)
def test_bad_backend_fields_are_one_clear_error(fields, needle):
    with pytest.raises(ConfigError, match="^dict: .*") as info:
        load_config(with_candidate(**fields))
    assert needle in str(info.value)


def test_bad_backend_fields_from_the_cli(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(with_candidate(backend="tgi")))
    inputs = tmp_path / "q.jsonl"
    inputs.write_text('{"input": "hi"}\n')
    assert main(["generate", "--input", str(inputs), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "candidates.0: backend 'tgi' needs base_url" in err
    assert not (tmp_path / "q_switch_generation.jsonl").exists()


def test_print_config_points_the_toy_candidates_at_the_servers(capsys):
    assert main(["serve", "--preset", "toy", "--port", "9100", "--print-config"]) == 0
    config = load_config(yaml.safe_load(capsys.readouterr().out))
    assert [(c.backend, c.url) for c in config.candidates] == [("tgi", f"http://127.0.0.1:{9100 + i}") for i in range(3)]
    assert config.switcher_server().url == "http://127.0.0.1:9103" and config.switcher.top_n_tokens == 1024
    assert main(["serve", "--preset", "toy", "--port", "9100", "--print-config", "--engine", "vllm"]) == 0
    assert {c.backend for c in load_config(yaml.safe_load(capsys.readouterr().out)).candidates} == {"openai"}


def test_shipped_example_configs_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "examples"
    tgi, openai = load_config(root / "toy-tgi.yaml"), load_config(root / "toy-openai.yaml")
    assert [c.url for c in tgi.candidates] == [f"http://127.0.0.1:{8080 + i}" for i in range(3)]
    assert {c.backend for c in tgi.candidates} == {"tgi"} and {c.backend for c in openai.candidates} == {"openai"}


def test_generate_fills_the_in_process_batch_by_default_and_keeps_one_with_servers():
    from switchgen.core.jobs import IN_PROCESS_BATCH, default_concurrency

    assert default_concurrency(load_config(toy_config_dict())) == IN_PROCESS_BATCH > 1
    assert default_concurrency(load_config(with_candidate(backend="tgi", url="http://127.0.0.1:9000"))) == 1
