"""User-facing errors: the CLI prints these as one line and exits with code 2 (no traceback)."""


class SlamError(Exception):
    """A problem with the user's input (a file, a path, a config field), not a bug in slam."""


class ConfigError(SlamError):
    """A bad recipe key, type or value; the message names the dotted field."""


class AudioError(SlamError):
    """An audio file that cannot be used; the message names the file and the reason."""


class MissingDependencyError(SlamError):
    """A system tool or optional package is missing; the message says how to install it."""
