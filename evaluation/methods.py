"""The methods `switchgen eval` compares, by name; a registry a user can add to.

A method answers one query: `invoke(query, seed) -> {"output", "segments", "decisions", "tokens_used"}`.
Every method is built over the run's one engine and the candidates' shared backends, so no
checkpoint is loaded twice. `oracle` is not a method that generates: the evaluation derives it
from the other methods' scores (per question, the best of them: an upper bound).

    single:NAME   one candidate writes the whole answer
    switch        the configured switcher (its adapter, or --adapter)
    untuned       the aligned model as switcher, no adapter
    random        a uniformly random author per patch
    fixed:A+P+A   authors in this order, cycling
    route         the aligned model picks one candidate for the whole answer (routing prompt)
    logit-merge   candidates sharing a tokenizer: the mean of their next-token log-probabilities
    soup          the candidates' weights averaged (one architecture), run as a single model
    oracle        per question the best score among the run's other methods

Any generating method takes a patch size after `@`: `switch@10` is `switch` with 10-token patches
(the patch-size ablation, `switchgen eval --patch-sizes 10,20,30,50,100`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from switchgen.core.config import SwitchConfig, load_config
from switchgen.core.errors import ConfigError
from switchgen.servers.base import Backend, ChoiceScores
from switchgen.servers.engine.local import LocalBackend, LocalEngine

ORACLE = "oracle"
ABLATION = ("switch", "random", "untuned")  # what --patch-sizes runs at each size


class Method(Protocol):
    def invoke(self, query: str, seed: int | None) -> dict[str, Any]: ...


@dataclass
class EvalSetup:
    """What every method of a run shares: the configuration, the engine, the candidates' backends."""

    config: SwitchConfig
    engine: LocalEngine
    backends: dict[str, Backend]
    adapter: str | None = None
    soup_dir: Path | None = None

    def local(self, what: str) -> list[LocalBackend]:
        found = [self.backends[n] for n in self.config.names]
        if not all(isinstance(b, LocalBackend) for b in found):
            raise ConfigError(f"{what} needs every candidate in process (backend: local)")
        return found  # type: ignore[return-value]


@dataclass(frozen=True)
class MethodInfo:
    factory: Callable[[str | None, EvalSetup], Method]
    argument: str | None  # what follows "name:", or None when the method takes none
    check: Callable[[str | None, SwitchConfig], None] | None = None
    description: str = ""


METHODS: dict[str, MethodInfo] = {}


def register_method(
    name: str,
    factory: Callable[[str | None, EvalSetup], Method],
    *,
    argument: str | None = None,
    check: Callable[[str | None, SwitchConfig], None] | None = None,
    description: str = "",
) -> None:
    """Add a method: `factory(argument, setup)` builds it once per run; `check(argument, config)` raises
    ConfigError for bad input before anything loads."""
    METHODS[name] = MethodInfo(factory, argument, check, description)


def split_method(method: str) -> tuple[str, str | None]:
    name, sep, arg = method.partition(":")
    return name, (arg if sep else None)


def split_patch_size(method: str) -> tuple[str, int | None]:
    """`switch@10` -> ("switch", 10); a method without `@` -> (method, None)."""
    base, sep, size = method.rpartition("@")
    if not sep:
        return method, None
    if not size.isdigit() or int(size) < 1:
        raise ConfigError(f"method {method!r}: the patch size after @ must be a positive integer")
    return base, int(size)


def with_patch_sizes(methods: list[str], sizes: Sequence[int]) -> list[str]:
    """`methods` plus switch, random and untuned at each patch size (switch@10, random@10, ...)."""
    return methods + [f"{m}@{n}" for n in sizes for m in ABLATION if f"{m}@{n}" not in methods]


def patch_size_of(method: str, config: SwitchConfig) -> int:
    """The patch size a method runs with: its `@N`, else the configuration's."""
    return split_patch_size(method)[1] or config.patch_size


def _with_patch_size(config: SwitchConfig, size: int) -> SwitchConfig:
    if size > config.max_new_tokens:
        raise ConfigError(f"patch size {size} is above the token budget max_new_tokens={config.max_new_tokens}")
    return load_config({**config.model_dump(), "patch_size": size})


def check_methods(methods: list[str], config: SwitchConfig) -> None:
    """Every method name and argument is valid for `config` (before any model loads)."""
    if not methods:
        raise ConfigError("no methods: give --methods, e.g. single:A,switch,random")
    if len(set(methods)) != len(methods):
        raise ConfigError(f"a method is listed twice in {','.join(methods)}")
    for method in methods:
        base, size = split_patch_size(method)
        if size is not None:
            if base == ORACLE:
                raise ConfigError("oracle takes no patch size")
            _with_patch_size(config, size)
        name, arg = split_method(base)
        if name == ORACLE:
            if arg is not None:
                raise ConfigError("oracle takes no argument")
            if len(methods) < 2:
                raise ConfigError("oracle needs other methods in the run (e.g. several fixed: sequences)")
            continue
        info = METHODS.get(name)
        if info is None:
            known = ", ".join(f"{n}:{i.argument}" if i.argument else n for n, i in METHODS.items())
            raise ConfigError(f"unknown method {method!r}; methods: {known}, oracle")
        if (arg is None) != (info.argument is None) or arg == "":
            usage = f"{name}:{info.argument}" if info.argument else name
            raise ConfigError(f"method {method!r}: write it as {usage}")
        if info.check is not None:
            info.check(arg, config)


def build_method(method: str, setup: EvalSetup) -> Method:
    base, size = split_patch_size(method)
    if size is not None:
        setup = replace(setup, config=_with_patch_size(setup.config, size))
    name, arg = split_method(base)
    return METHODS[name].factory(arg, setup)


class GraphMethod:
    """A method that is the Switch Generation graph under a variant of the configuration."""

    def __init__(self, setup: EvalSetup, config: SwitchConfig, backends: dict[str, Backend] | None = None) -> None:
        from switchgen.graph import build_graph

        given = backends if backends is not None else {n: setup.backends[n] for n in config.names if n in setup.backends}
        self.graph = build_graph(config, engine=setup.engine, backends=given)

    def invoke(self, query: str, seed: int | None, **context: Any) -> dict[str, Any]:
        return self.graph.invoke({"query": query}, context={"seed": seed, **context})


def variant(config: SwitchConfig, **switcher: Any) -> SwitchConfig:
    """`config` with switcher settings replaced (validated as a whole)."""
    data = config.model_dump()
    data["switcher"].update(switcher)
    return load_config(data)


def _candidate(ref: str | None, config: SwitchConfig) -> None:
    for name in (ref or "").split("+"):
        if name not in config.names:
            raise ConfigError(f"unknown candidate {name!r}; candidates are {', '.join(config.names)}")


def _single(arg: str | None, setup: EvalSetup) -> Method:
    return GraphMethod(setup, variant(setup.config, strategy="single", candidate=arg))


def _fixed(arg: str | None, setup: EvalSetup) -> Method:
    assert arg is not None
    return GraphMethod(setup, variant(setup.config, strategy="fixed", sequence=arg.split("+")))


def _random(arg: str | None, setup: EvalSetup) -> Method:
    return GraphMethod(setup, variant(setup.config, strategy="random"))


def _switch(arg: str | None, setup: EvalSetup) -> Method:
    cfg = setup.config
    if cfg.switcher.strategy != "learned" or setup.adapter:
        cfg = variant(cfg, strategy="learned", **({"adapter": setup.adapter} if setup.adapter else {}))
    return GraphMethod(setup, cfg)


def _untuned(arg: str | None, setup: EvalSetup) -> Method:
    cfg = setup.config
    aligned = cfg.candidates[cfg.aligned_index]
    return GraphMethod(setup, variant(cfg, strategy="learned", model=aligned.model, adapter=None, device=None, dtype=None,
                                      backend=None, url=None, served_model=None))


class RouteMethod:
    """Prompt-based routing: the aligned model reads the routing prompt (core/prompts.py) and the
    candidate it scores highest writes the whole answer. The router is an untuned model, so its digits
    are read through the same calibration as an untuned switcher's (nodes/calibration.py: `auto` is
    `shifts`; a concrete `switcher.calibration` is used as given): otherwise the route follows the
    candidates' order in the file, not their roles."""

    def __init__(self, setup: EvalSetup) -> None:
        cfg = setup.config
        self.config = cfg
        self.router = setup.backends[cfg.names[cfg.aligned_index]]
        self.single = GraphMethod(setup, variant(cfg, strategy="single", candidate=cfg.names[cfg.aligned_index]))
        self.calibration = cfg.calibration_for(untuned=True)

    def ask(self, query: str, roles: Sequence[str], labels: Sequence[int]) -> ChoiceScores:
        """One routing pass, candidate c (role roles[c]) listed as model labels[c]."""
        from switchgen.core.prompts import routing_prompt, user_turn

        listed = [""] * len(roles)
        for role, label in zip(roles, labels, strict=True):
            listed[label] = role
        prompt = user_turn(self.router.tokenizer, routing_prompt(query, listed))
        return self.router.choice_distribution(prompt, [str(i) for i in range(len(roles))])

    def invoke(self, query: str, seed: int | None) -> dict[str, Any]:
        from switchgen.graph import calibrated_distribution

        cfg = self.config
        roles = [c.role for c in cfg.candidates]
        # The candidates' roles are the "segments" the calibration relabels (each listed under every digit in turn).
        scores = calibrated_distribution(self.ask, query, roles, range(len(roles)), len(roles), self.calibration)
        if scores.probs is None:
            index, how = cfg.aligned_index, "fallback"
        else:
            index, how = max(range(len(scores.probs)), key=lambda i: scores.probs[i]), "route"
        result = self.single.invoke(query, seed, candidate=cfg.names[index])
        probabilities = dict(zip(cfg.names, scores.probs, strict=True)) if scores.probs else None
        result["route"] = {"chosen": cfg.names[index], "how": how, "probabilities": probabilities,
                           "digit_mass": scores.mass, "passes": scores.passes, "calibration": self.calibration}
        return result


def _one_writer(setup: EvalSetup, name: str, model: str, backend: Backend | None) -> Method:
    """A configuration with one candidate `name` (the merged or averaged model) writing everything."""
    cfg = setup.config
    aligned = cfg.candidates[cfg.aligned_index]
    data = cfg.model_dump()
    data["candidates"] = [{**aligned.model_dump(), "name": name, "model": model, "role": "aligned"}]
    data["switcher"] = {"strategy": "single", "candidate": name}
    data["patch_size"] = cfg.max_new_tokens  # one call writes the answer
    one = load_config(data)
    return GraphMethod(setup, one, {name: backend} if backend is not None else {})


def _logit_merge(arg: str | None, setup: EvalSetup) -> Method:
    from switchgen.servers.engine.logit_merge import LogitMergeBackend, TokenizerMismatch

    try:
        merged = LogitMergeBackend(setup.local("logit-merge"))
    except TokenizerMismatch as err:
        raise ConfigError(f"logit-merge needs candidates sharing a tokenizer: {err}") from None
    return _one_writer(setup, "merge", setup.config.candidates[setup.config.aligned_index].model, merged)


def _soup(arg: str | None, setup: EvalSetup) -> Method:
    from switchgen.evaluation.soup import soup_checkpoint

    folder = soup_checkpoint(setup.local("soup"), setup.soup_dir)
    return _one_writer(setup, "soup", str(folder), None)


def _two_local(arg: str | None, config: SwitchConfig) -> None:
    if len(config.candidates) < 2 or any(c.backend != "local" for c in config.candidates):
        raise ConfigError("logit-merge and soup need at least two candidates, all in process (backend: local)")


register_method("single", _single, argument="NAME", check=_candidate, description="one candidate writes everything")
register_method("fixed", _fixed, argument="A+P+A", check=_candidate, description="authors in this order, cycling")
register_method("random", _random, description="a uniformly random author per patch")
register_method("switch", _switch, description="the configured switcher (with --adapter: that adapter)")
register_method("untuned", _untuned, description="the aligned model as switcher, no adapter")
register_method("route", lambda arg, setup: RouteMethod(setup), description="the aligned model routes the whole query")
register_method("logit-merge", _logit_merge, check=_two_local, description="mean of the candidates' next-token log-probs")
register_method("soup", _soup, check=_two_local, description="the candidates' weights averaged")
