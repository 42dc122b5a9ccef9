"""Configuration: which checkpoints write, who picks, and how long patches and answers are.

Everything a run needs is one pydantic model, `SwitchConfig`, read from a YAML file or a
named preset (core/presets/*.yaml) by `load_config`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from switchgen.core.errors import ConfigError, describe

PRESET_DIR = Path(__file__).parent / "presets"
REDACTED = "<redacted>"  # a secret written out in a configuration, when the configuration is printed
# No model holds more tokens; a larger number (10**40) could not even be stored in a thread's checkpoint.
MAX_TOKENS = 2**31 - 1
DEFAULT_PRESET = "olmo2-1b"
RESERVED_NAMES = {"switcher", "__start__", "__end__"}

Role = Literal["pretrained", "finetuned", "aligned", "other"]
View = Literal["chat", "plain", "reference"]
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
Strategy = Literal["learned", "random", "fixed", "single"]
Calibration = Literal["auto", "none", "shifts", "permutations", "contextual"]
Engine = Literal["local", "tgi", "openai"]
_ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


def expand_env(text: str, what: str) -> str:
    """`${VAR}` and `${VAR:-default}` in `text` replaced from the environment (ValueError naming `what` if unset)."""

    def value(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        found = os.environ.get(name) or default
        if found is None:
            raise ValueError(f"environment variable {name} (in {what}) is not set")
        return found

    return _ENV_VAR.sub(value, text)


class ServerFields(_Model):
    """Where a checkpoint's tokens come from: the in-process engine, or an inference server.

    Remote backends load only the tokenizer from `model` (prompts are rendered client-side).
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    backend: Engine = Field("local", description="local (in-process engine) | tgi (a TGI server) | openai (vLLM, SGLang).")
    url: str | None = Field(
        None,
        validation_alias=AliasChoices("base_url", "url"),
        description="tgi/openai: the server's base URL, e.g. http://127.0.0.1:8080 (key `base_url`, or `url`). "
        "${VAR} and ${VAR:-default} are read from the environment.",
    )
    api_key: str | None = Field(
        None,
        repr=False,
        description="tgi/openai: sent as `Authorization: Bearer <key>` (vLLM --api-key, hosted endpoints); "
        "write it as ${VAR} to read it from the environment.",
    )
    headers: dict[str, str] = Field(
        default_factory=dict, repr=False, description="tgi/openai: extra HTTP headers; ${VAR} in values is expanded."
    )
    served_model: str | None = Field(None, description="openai: the model name the server serves (default: `model`).")
    timeout: float = Field(300.0, gt=0, description="Seconds to wait for a server's answer (read timeout).")
    connect_timeout: float = Field(10.0, gt=0, description="Seconds to wait for a connection to a server.")
    retries: int = Field(4, ge=0, description="Retries on 429/503 and dropped connections, with exponential backoff.")

    @model_validator(mode="before")
    @classmethod
    def _one_url_key(cls, data: object) -> object:
        if isinstance(data, dict) and "url" in data and "base_url" in data:
            raise ValueError("give base_url or url (the same setting), not both")
        return data

    @field_validator("url", mode="before")
    @classmethod
    def _expand_url(cls, url: object) -> object:
        if not isinstance(url, str):
            return url
        expanded = expand_env(url, repr(url)).strip().rstrip("/")
        if not re.fullmatch(r"https?://[^/\s]+(/\S*)?", expanded):
            raise ValueError(f"url {expanded!r} is not an http(s) URL like http://127.0.0.1:8080")
        return expanded

    @field_validator("api_key", mode="before")
    @classmethod
    def _expand_key(cls, key: object) -> object:
        if not isinstance(key, str):
            return key
        expanded = expand_env(key, "api_key").strip()
        if not expanded:
            raise ValueError("api_key is empty")
        return expanded

    @field_validator("headers", mode="before")
    @classmethod
    def _expand_headers(cls, headers: object) -> object:
        if not isinstance(headers, dict):
            return headers
        return {k: expand_env(v, f"headers.{k}") if isinstance(v, str) else v for k, v in headers.items()}

    # The secrets as written (`${MY_KEY}`), before expansion: what a printed or written config shows.
    _written_secrets: dict[str, str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _remember_written_secrets(cls, data: object, handler: Any) -> Any:
        model = handler(data)
        if isinstance(data, dict):
            written = {"api_key": data.get("api_key"), **{f"headers.{k}": v for k, v in (data.get("headers") or {}).items()}}
            model._written_secrets = {k: v for k, v in written.items() if isinstance(v, str)}
        return model

    def redact(self, dumped: dict[str, Any]) -> dict[str, Any]:
        """`dumped` (this model's dump) with its secrets as written: `${VAR}` stays, a key written out becomes <redacted>."""
        def shown(where: str) -> str:
            text = self._written_secrets.get(where, "")
            return text if "${" in text else REDACTED

        out = dict(dumped)
        if out.get("api_key"):
            out["api_key"] = shown("api_key")
        if out.get("headers"):
            out["headers"] = {k: shown(f"headers.{k}") for k in out["headers"]}
        return out

    @model_validator(mode="after")
    def _url_matches_backend(self) -> ServerFields:
        remote = self.backend in ("tgi", "openai")
        if remote and not self.url:
            raise ValueError(f"backend {self.backend!r} needs base_url (the server's URL, e.g. http://127.0.0.1:8080)")
        if not remote and self.url:
            raise ValueError(f"base_url is set but backend is {self.backend!r}: set backend: tgi or backend: openai")
        if not remote and (self.api_key or self.headers):
            raise ValueError(f"api_key/headers are for servers, and backend is {self.backend!r}")
        return self


class CandidateConfig(ServerFields):
    """One checkpoint that writes patches. Its position in `candidates` is its model index."""

    name: str = Field(description="Node name in the graph and the author label in outputs.")
    role: Role = Field("other", description="pretrained | finetuned | aligned | other.")
    model: str = Field(description="Hugging Face model id, local folder, or an offline kit's toy:P / skills:P (F, A likewise).")
    device: str = Field("auto", description="auto (CUDA if available, else CPU), cpu, cuda, cuda:1, mps.")
    dtype: Dtype = "auto"
    stop: list[str] = Field(default_factory=list, description="Stop strings; one ends the response.")
    view: View | None = Field(
        None,
        description="How the candidate sees the trace: chat (its chat template, the trace is its own "
        "partial reply), plain (text template), reference (as the paper's code). "
        "Default: chat if the tokenizer has a chat template, else plain.",
    )
    plain_template: str = Field(
        "{query}\n\n{trace}", description="Prompt for the plain view; {query} and {trace} are filled in."
    )

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]*", name) or name in RESERVED_NAMES:
            raise ValueError(
                f"candidate name {name!r} must start with a letter, use letters, digits, '_', '.', '-', "
                f"and not be one of {sorted(RESERVED_NAMES)}"
            )
        return name

    @field_validator("plain_template")
    @classmethod
    def _valid_template(cls, template: str) -> str:
        try:
            template.format(query="", trace="")
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(f"plain_template may only use {{query}} and {{trace}}: {err}") from None
        return template


class SwitcherConfig(ServerFields):
    """Who picks the author of the next patch."""

    backend: Engine | None = Field(  # type: ignore[assignment]
        None,
        description="local | tgi | openai. Default: the server of the candidate sharing the switcher's model "
        "(with `adapter` sent as TGI's adapter_id), else local.",
    )
    top_n_tokens: int = Field(
        20,
        ge=1,
        description="Remote switchers: the top tokens asked for (TGI top_n_tokens, OpenAI logprobs); digits "
        "outside them count as zero. The server's --max-top-n-tokens / --max-logprobs must allow it.",
    )

    strategy: Strategy = Field(
        "learned",
        description="learned (a switcher LM), random, fixed (a sequence), single (one candidate: the baseline).",
    )
    model: str | None = Field(None, description="Switcher LM (learned). Default: the aligned candidate's model.")
    adapter: str | None = Field(None, description="LoRA adapter (id or folder) applied on `model`.")
    device: str | None = Field(None, description="Default: the device of the candidate sharing its model, else auto.")
    dtype: Dtype | None = None
    top_p: float = Field(0.7, gt=0.0, le=1.0, description="Top-p over the switcher's distribution.")
    sequence: list[str | int] | None = Field(None, description="fixed: names or indices, e.g. 'A P F A'; cycles.")
    candidate: str | int | None = Field(None, description="single: the one candidate that writes.")
    min_digit_mass: float = Field(
        0.0, ge=0.0, le=1.0, description="Fall back to the aligned model when the digits hold less mass."
    )
    calibration: Calibration = Field(
        "auto",
        description="learned: how the digit distribution is read against the candidates' order (nodes/calibration.py). "
        "none (1 switcher pass), shifts (n passes: the labels cyclically shifted, averaged per candidate), permutations "
        "(n! passes), contextual (2 passes: divided by a content-free prompt's). auto: shifts for an untuned switcher "
        "(no adapter, on a candidate's model), none for a trained one.",
    )

    @field_validator("sequence", mode="before")
    @classmethod
    def _split_sequence(cls, value: object) -> object:
        return value.split() if isinstance(value, str) else value


class SamplingConfig(_Model):
    """How generators sample a patch (the reference: top_p 0.9, temperature 0.7)."""

    greedy: bool = False
    temperature: float = Field(0.7, gt=0.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    ignore_eos: bool = Field(False, description="Keep writing past EOS to the budget (for benchmarks).")
    finish_characters: bool = Field(
        True,
        description="A patch that would end inside a character (2-4 tokens of a byte-level tokenizer) writes up to "
        "3 more tokens to finish it, within the budget, so no patch shows U+FFFD for it. In-process candidates "
        "only: a server (TGI, vLLM, switchgen serve) decodes a patch as it wrote it.",
    )


class SwitchConfig(_Model):
    """A whole Switch Generation setup."""

    candidates: list[CandidateConfig] = Field(min_length=1)
    switcher: SwitcherConfig = Field(default_factory=SwitcherConfig)
    patch_size: int = Field(50, gt=0, le=MAX_TOKENS, description="Tokens per patch.")
    max_new_tokens: int = Field(
        512, gt=0, le=MAX_TOKENS,
        description="Token budget of the whole response. A budget beyond what a model can hold ends the answer "
        "where its context is full (finish reason budget), the text kept.",
    )
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    seed: int | None = Field(
        None, ge=0, le=2**64 - 1, description="Seed (0 <= seed < 2**64) for switcher and generator sampling; None: fresh randomness."
    )
    anchor: bool | None = Field(
        None,
        description="The aligned candidate writes the first patch and the patch that reaches the budget. "
        "Default: on for the learned strategy, off otherwise (as the reference code).",
    )
    objective: bool = Field(False, description="Append `cue` to the trace before the last patch.")
    cue: str = " The final answer is"

    @model_validator(mode="after")
    def _consistent(self) -> SwitchConfig:
        names = [c.name for c in self.candidates]
        if len(set(names)) != len(names):
            raise ValueError(f"candidate names must be unique, got {names}")
        if self.patch_size > self.max_new_tokens:
            raise ValueError(f"patch_size ({self.patch_size}) exceeds max_new_tokens ({self.max_new_tokens}): "
                             "lower patch_size (--patch-size) or raise the budget")
        sw = self.switcher
        if sw.strategy == "learned" and len(names) > 10:
            raise ValueError("the learned switcher answers with one digit: at most 10 candidates")
        if sw.strategy == "fixed":
            if not sw.sequence:
                raise ValueError("switcher.strategy 'fixed' needs switcher.sequence, e.g. 'A P F A'")
            for ref in sw.sequence:
                self.index_of(ref)
        if sw.strategy == "single":
            if sw.candidate is None:
                raise ValueError("switcher.strategy 'single' needs switcher.candidate (a name or index)")
            self.index_of(sw.candidate)
        return self

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.candidates]

    @property
    def aligned_index(self) -> int:
        """The anchor and fallback author: the aligned candidate, else the last one (as the reference)."""
        roles = [c.role for c in self.candidates]
        return roles.index("aligned") if "aligned" in roles else len(roles) - 1

    @property
    def anchor_on(self) -> bool:
        return self.anchor if self.anchor is not None else self.switcher.strategy == "learned"

    @property
    def switcher_model(self) -> str:
        return self.switcher.model or self.candidates[self.aligned_index].model

    @property
    def switcher_twin(self) -> CandidateConfig | None:
        """The candidate whose model the switcher shares (an untuned switcher, or a LoRA on it), if any."""
        return next((c for c in self.candidates if c.model == self.switcher_model), None)

    @property
    def switcher_calibration(self) -> str:
        """`switcher.calibration` made concrete: `auto` is `shifts` for an untuned switcher (no adapter, on a
        candidate's model) and `none` for a trained one, which learned its digits under this order."""
        sw = self.switcher
        return self.calibration_for(untuned=sw.adapter is None and self.switcher_twin is not None)

    def calibration_for(self, *, untuned: bool) -> str:
        """`switcher.calibration` for a model that answers with digits: `auto` is `shifts` for an
        untuned one, `none` for one trained on this order (the switcher; the `route` baseline's router)."""
        setting = self.switcher.calibration
        if setting != "auto":
            return setting
        return "shifts" if untuned else "none"

    @property
    def switcher_device(self) -> str:
        """The switcher's device: its own, else its twin candidate's (shared weights stay on one device)."""
        twin = self.switcher_twin
        return self.switcher.device or (twin.device if twin else "auto")

    @property
    def switcher_dtype(self) -> str:
        """The switcher's dtype: its own, else its twin candidate's."""
        twin = self.switcher_twin
        return self.switcher.dtype or (twin.dtype if twin else "auto")

    def switcher_server(self) -> ServerFields:
        """The learned switcher's server settings: its own, else those of the candidate sharing its model.

        An untuned switcher (or a LoRA adapter) on a served candidate thus asks that candidate's server.
        """
        if self.switcher.backend is not None:
            return self.switcher
        twin = self.switcher_twin
        return twin if twin is not None else ServerFields()

    def candidate_view(self, index: int, has_chat_template: bool) -> View:
        """How candidate `index` sees the trace: its configured view, else chat when its tokenizer has a template."""
        view = self.candidates[index].view
        return view or ("chat" if has_chat_template else "plain")

    def index_of(self, ref: str | int) -> int:
        """A candidate's index from its name or index (also given as a string, "2")."""
        names = self.names
        if isinstance(ref, str) and ref in names:
            return names.index(ref)
        if isinstance(ref, bool) or not isinstance(ref, (int, str)):  # True is not candidate 1, nor 1.0
            raise ValueError(f"unknown candidate {ref!r}; candidates are {names} (a name, or an index as a whole number)")
        try:
            index = int(ref)
        except (TypeError, ValueError):
            raise ValueError(f"unknown candidate {ref!r}; candidates are {names}") from None
        if not 0 <= index < len(names):
            raise ValueError(f"candidate index {index} out of range 0..{len(names) - 1}")
        return index


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_config(source: str | Path | dict | SwitchConfig | None = None, **overrides: object) -> SwitchConfig:
    """A config from a preset name, a YAML path, a dict or a config; `overrides` set top-level fields.

    `None` gives the embedded default preset (olmo2-1b).
    """
    if isinstance(source, SwitchConfig):
        data = source.model_dump()
        origin = "config"
    elif isinstance(source, dict):
        data, origin = dict(source), "dict"
    else:
        data, origin = _read_yaml(str(source) if source is not None else DEFAULT_PRESET)
    given = {k: v for k, v in overrides.items() if v is not None}
    data.update(given)
    try:
        return SwitchConfig.model_validate(data)
    except ValidationError as err:
        # A field set by an override is the override's fault, not the file's.
        blamed = {str(e["loc"][0]) for e in err.errors() if e["loc"]} & set(given)
        where = ", ".join(f"{k}={given[k]!r}" for k in sorted(blamed)) if blamed else origin
        raise ConfigError(f"{where}: {describe(err)}") from None


def _read_yaml(source: str) -> tuple[dict, str]:
    path = Path(source).expanduser()
    if not path.is_file():
        if source in preset_names():
            path = PRESET_DIR / f"{source}.yaml"
        elif source.endswith((".yaml", ".yml")) or "/" in source:
            raise ConfigError(f"config file {source} does not exist")
        else:
            raise ConfigError(f"unknown preset {source!r}; presets are {', '.join(preset_names())}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    return _relative_to(data, path.parent), str(path)


def _relative_to(data: dict, folder: Path) -> dict:
    """Model and adapter paths in a YAML file are relative to its folder, not to the working directory.

    A value starting with ./ or ../ is such a path always; another relative value (`models/p`) is
    one when it exists beside the file, and otherwise stays as written (a hub id like `org/name`).
    """

    def resolve(value: object) -> object:
        if not isinstance(value, str) or not value or value.startswith(("toy:", "~", "/")):
            return value
        beside = folder / value
        if value.startswith(("./", "../")) or beside.exists():
            return str(beside.resolve())
        return value

    for candidate in data.get("candidates") or []:
        if isinstance(candidate, dict) and "model" in candidate:
            candidate["model"] = resolve(candidate["model"])
    switcher = data.get("switcher")
    if isinstance(switcher, dict):
        for key in ("model", "adapter"):
            if key in switcher:
                switcher[key] = resolve(switcher[key])
    return data
