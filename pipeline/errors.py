"""Exceptions that the CLI turns into one clear line (traceback only with ``--debug``).

Anything a user can cause by bad input — a config, a file, an argument — raises a
subclass of :class:`SynthfaceError` whose message already names the file, field or
value. Programming errors stay ordinary exceptions so they keep their traceback.
"""


class SynthfaceError(Exception):
    """Base for user-facing errors; ``str(err)`` is the whole message."""


class ConfigError(SynthfaceError):
    """A config file or config value is invalid."""


class InputError(SynthfaceError):
    """An input file, directory or argument is unusable."""


class ShardError(SynthfaceError):
    """A shard or dataset directory is inconsistent with its manifest."""
