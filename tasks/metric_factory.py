"""A task's metric by its name: a built-in (tasks/metrics.py), `reward` (a reward model, tasks/reward.py) or `module:function`."""

from __future__ import annotations

import importlib
from typing import Any

from switchgen.core.errors import ConfigError
from switchgen.tasks.metrics import METRICS, Metric
from switchgen.tasks.reward import RewardMetric


def make_metric(name: str, args: dict[str, Any] | None = None) -> Metric:
    """A built-in metric, `reward` (a reward model, loaded here once), or `module:function` (a user's own).

    A user function is `fn(output, reference) -> float`; give its range with args {range: [lo, hi]}
    (default [0, 1]).
    """
    args = dict(args or {})
    if name == "reward":
        return RewardMetric(**args)
    if name in METRICS:
        if args:
            raise ConfigError(f"metric {name!r} takes no arguments, got {sorted(args)}")
        info = METRICS[name]
        return Metric(name, info.fn, info.range, info.description)
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"metric {name!r}: cannot import {attr} from {module_name} ({err})") from None
        if not callable(fn):
            raise ConfigError(f"metric {name!r} is not a function")
        lo, hi = args.pop("range", (0.0, 1.0))
        if args:
            raise ConfigError(f"metric {name!r}: unknown arguments {sorted(args)} (only range)")
        return Metric(name, fn, (float(lo), float(hi)), f"user metric {name}")
    known = ", ".join([*METRICS, "reward", "module:function"])
    raise ConfigError(f"unknown metric {name!r}; known: {known}")
