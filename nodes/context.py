"""The run-time context: per-run settings a caller (or LangGraph Studio's assistant settings) may change.

`StateGraph(..., context_schema=Context)`: nodes read it through `runtime: Runtime[Context]`.
Every field left at None keeps the value of the configuration the graph was built with, so an
empty context is the configuration as is. `resolve_config` merges the two and validates the
result exactly like a YAML file, so a bad setting gets the configuration's own message.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields, make_dataclass, replace
from typing import Any, get_type_hints

from pydantic import ConfigDict, ValidationError, create_model

from switchgen.core.config import Strategy, SwitchConfig
from switchgen.core.errors import InputError, describe


@dataclass(kw_only=True)
class Context:
    """Per-run settings; None (unset) means the configuration's value."""

    patch_size: int | None = field(
        default=None,
        metadata={"description": "Tokens per patch (a switching decision before each). Unset: the config's."},
    )
    max_new_tokens: int | None = field(
        default=None,
        metadata={"description": "Token budget of the whole answer. Unset: the config's."},
    )
    top_p: float | None = field(
        default=None,
        metadata={"description": "Top-p over the switcher's distribution (0 < top_p <= 1). Unset: the config's."},
    )
    strategy: Strategy | None = field(
        default=None,
        metadata={
            "description": "Who picks the next author: learned (the switcher LM), random, fixed (`sequence`), "
            "single (`candidate` writes everything). Unset: the config's."
        },
    )
    candidate: str | None = field(
        default=None,
        metadata={"description": "strategy single: the one candidate that writes (a name). Unset: the config's."},
    )
    sequence: list[str] | None = field(
        default=None,
        metadata={"description": "strategy fixed: candidate names in turn, cycling, e.g. [\"A\", \"P\"]."},
    )
    seed: int | None = field(
        default=None,
        metadata={"description": "Seed for switcher and generator sampling (reproducible runs). Unset: the config's."},
    )
    review: bool | None = field(
        default=None,
        metadata={
            "description": "Pause before each patch (interrupt) with the switcher's distribution; resume with "
            "Command(resume=<candidate name>) to choose the author."
        },
    )


CONTEXT_FIELDS = tuple(f.name for f in fields(Context))
# Strict: review "no" is not True, patch_size 2.5 or True is not a size (Studio and the SDK send JSON types).
_CONTEXT = create_model(
    "ContextFields", __config__=ConfigDict(strict=True), **{n: (t, None) for n, t in get_type_hints(Context).items()}
)


def defaults_in_force(config: SwitchConfig) -> dict[str, Any]:
    """The value each context field has under `config` (what an unset field means)."""
    sw = config.switcher
    return {
        "patch_size": config.patch_size,
        "max_new_tokens": config.max_new_tokens,
        "top_p": sw.top_p,
        "strategy": sw.strategy,
        "candidate": None if sw.candidate is None else config.names[config.index_of(sw.candidate)],
        "sequence": None if sw.sequence is None else [config.names[config.index_of(r)] for r in sw.sequence],
        "seed": config.seed,
        # stays None: on a resumed turn an explicit `false` must be told from "the turn's setting"
        "review": None,
    }


def context_schema(config: SwitchConfig) -> type[Context]:
    """A Context whose field defaults are `config`'s values, so that LangGraph Studio shows the settings in force.

    A field left at its default still means "the turn's setting" (`as_context` reads a default as unset),
    so a resumed turn keeps the settings it started with.
    """
    defaults = defaults_in_force(config)
    types = get_type_hints(Context)  # real types: the annotations here are strings
    specs = []
    for f in fields(Context):
        value = defaults[f.name]
        default = field(default_factory=lambda v=value: list(v), metadata=f.metadata) if isinstance(value, list) else (
            field(default=value, metadata=f.metadata))
        specs.append((f.name, types[f.name], default))
    return make_dataclass("Context", specs, bases=(Context,), kw_only=True, namespace={"__doc__": Context.__doc__})


def _default_of(f: Any) -> Any:
    return f.default_factory() if f.default_factory is not MISSING else f.default


def turn_context(stored: dict[str, Any] | None, current: Any) -> Context:
    """The context in force: the turn's stored settings, with the settings this run sets on top.

    A turn keeps the settings it started with, so that a resume (review mode) or a fork from one
    of its checkpoints goes on under them without being given the context again.
    """
    ctx = as_context(current)
    if not stored:
        return ctx
    base = as_context(stored)
    return replace(base, **{k: getattr(ctx, k) for k in CONTEXT_FIELDS if getattr(ctx, k) is not None})


def as_context(value: Any) -> Context:
    """A Context from what a run was given: a Context, a dict (Studio, the SDK), or nothing.

    Anything else (a parent graph's own context, inherited by this graph as a subgraph) is not
    addressed to this graph and counts as unset.
    """
    if value is None or (not isinstance(value, (Context, dict))):
        return Context()
    if isinstance(value, Context):
        if type(value) is Context:
            return value
        # a context_schema(config) instance: a field at its default (the config's value) is unset
        return Context(**{f.name: None if getattr(value, f.name) == _default_of(f) else getattr(value, f.name)
                          for f in fields(value)})
    unknown = sorted(set(value) - set(CONTEXT_FIELDS))
    if unknown:
        raise InputError(f"context: unknown setting(s) {unknown}; the settings are {list(CONTEXT_FIELDS)}")
    try:
        return Context(**_CONTEXT.model_validate(value).model_dump(exclude_unset=True))
    except ValidationError as err:
        raise InputError(f"context: {describe(err, root='context')}") from None


def resolve_config(config: SwitchConfig, context: Any) -> SwitchConfig:
    """`config` with the context's set fields applied, validated as a whole (InputError if not valid)."""
    ctx = as_context(context)
    top: dict[str, Any] = {k: getattr(ctx, k) for k in ("patch_size", "max_new_tokens", "seed")}
    switcher: dict[str, Any] = {"top_p": ctx.top_p, "strategy": ctx.strategy, "candidate": ctx.candidate,
                                "sequence": ctx.sequence}
    top = {k: v for k, v in top.items() if v is not None}
    switcher = {k: v for k, v in switcher.items() if v is not None}
    for ref in [ctx.candidate] if ctx.candidate is not None else []:
        _known(config, ref, "candidate")
    for ref in ctx.sequence or []:
        _known(config, ref, "sequence")
    if not top and not switcher:
        return config
    data = config.model_dump()
    data.update(top)
    data["switcher"].update(switcher)
    try:
        return SwitchConfig.model_validate(data)
    except ValidationError as err:
        raise InputError(f"context: {describe(err)}") from None


def _known(config: SwitchConfig, ref: Any, name: str) -> None:
    """A candidate named in the context must exist, whichever strategy is in force."""
    try:
        config.index_of(ref)
    except ValueError as err:
        raise InputError(f"context: {name}: {err}") from None
