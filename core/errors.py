"""The errors a user can cause. The CLI prints them as one line and exits non-zero."""

from pydantic import ValidationError


class SwitchgenError(Exception):
    """Base class: a mistake in input or configuration, not a bug."""


class ConfigError(SwitchgenError):
    """The configuration (a preset name, a YAML file, a field) is not usable."""


class ModelLoadError(SwitchgenError):
    """A checkpoint or adapter could not be found or loaded."""


class InputError(SwitchgenError, ValueError):
    """A query, an input file or a graph input is malformed.

    Also a ValueError, so that servers which show only standard errors' messages (the LangGraph
    API server) pass its message on to the client.
    """


class UnsupportedError(SwitchgenError, NotImplementedError):
    """Something switchgen deliberately does not do; the message names what to use instead."""


class InputTooLong(InputError):
    """An input too long for a checkpoint's context, refused in process or by a server.

    One policy for every backend: refuse, never truncate silently (cutting the left of a prompt
    drops the question or the chat template). It is permanent: `switchgen generate` records the
    query with "error" and "permanent": true and a rerun does not retry it.
    """


class ServerError(SwitchgenError):
    """An inference server refused or failed a request (after any retries)."""


class ServerUnreachable(ServerError):
    """No inference server answers at a configured URL (down, wrong URL, or dropped connections)."""


def describe(err: ValidationError, root: str = "config") -> str:
    """A pydantic error as one line: `field.path: problem; ...` (`root` names a top-level problem)."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or root}: {e['msg'].removeprefix('Value error, ')}"
        for e in err.errors()
    )


class OutputError(SwitchgenError):
    """An output file cannot be written where it was asked for (a folder, unwritable, the input itself, a full disk)."""
