"""User-facing errors: the CLI prints their message on one line and exits with code 2."""


class MMTLError(Exception):
    """An error caused by the user's input (config, files, data), not by a bug."""


class ConfigError(MMTLError):
    """A configuration value or key is invalid."""
