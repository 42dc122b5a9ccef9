"""Kits by name: the one place where `toy:A` (a model spec) and `kit: skills` (a task's data) become folders."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from switchgen.core.errors import InputError
from switchgen.kits import skills, toy


@dataclass(frozen=True)
class Kit:
    ensure: Callable[[], dict[str, Path]]  # builds the kit on first use; its folders by name
    models: tuple[str, ...]  # the names among them that are checkpoints
    version: str  # changes whenever a rebuild would write other weights: a model revision


KITS = {
    "toy": Kit(toy.ensure_toy_models, (*toy.TOY_CANDIDATES, toy.SWITCHER), toy.TOY_VERSION),
    "skills": Kit(skills.ensure_skills_kit, skills.CANDIDATES, skills.SKILLS_VERSION),
}


def _kit(name: str) -> Kit:
    try:
        return KITS[name]
    except KeyError:
        raise InputError(f"unknown kit {name!r} (kits: {', '.join(KITS)})") from None


def kit_models(name: str) -> dict[str, Path]:
    """A kit's checkpoints by name (built on first use)."""
    kit = _kit(name)
    paths = kit.ensure()
    return {model: paths[model] for model in kit.models}


def kit_dir(name: str) -> Path:
    """The folder holding a kit (built on first use)."""
    return Path(next(iter(_kit(name).ensure().values()))).parent
