"""User-facing errors: the CLI prints their message on one line and exits with code 2."""


class MMTLError(Exception):
    """An error caused by the user's input (config, files, data), not by a bug."""


class ConfigError(MMTLError):
    """A configuration value or key is invalid."""


class TrainingInterrupted(MMTLError):
    """Training stopped on a signal after saving a checkpoint (not a user error: exit 128 + signal)."""

    def __init__(self, message: str, signal_name: str) -> None:
        super().__init__(message)
        self.exit_code = 143 if signal_name == "SIGTERM" else 130
