"""User-facing errors: the CLI prints these as one line (no traceback) and exits with code 2, or 1 for an
EnvironmentFailure (the machine failed, not the input)."""


class SlamError(Exception):
    """A problem with the user's input (a file, a path, a config field), not a bug in slam."""


class ConfigError(SlamError):
    """A bad recipe key, type or value; the message names the dotted field."""


class AudioError(SlamError):
    """An audio file that cannot be used; the message names the file and the reason."""


class MissingDependencyError(SlamError):
    """A system tool or optional package is missing; the message says how to install it."""


class EnvironmentFailure(SlamError):
    """The machine failed, not the input (a full disk, an I/O error, a killed worker): the job stops, nothing
    is recorded as a bad input, and rerunning the same command resumes it. The CLI exits with code 1."""
