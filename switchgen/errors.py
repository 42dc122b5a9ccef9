"""The errors a user can cause. The CLI prints them as one line and exits non-zero."""


class SwitchgenError(Exception):
    """Base class: a mistake in input or configuration, not a bug."""


class ConfigError(SwitchgenError):
    """The configuration (a preset name, a YAML file, a field) is not usable."""


class ModelLoadError(SwitchgenError):
    """A checkpoint or adapter could not be found or loaded."""


class InputError(SwitchgenError):
    """A query, an input file or a graph input is malformed."""
