"""User-facing errors: the CLI prints their message on one line and exits with code 2.

:func:`describe_failure` is the one error boundary of the entry points: it turns an expected
failure (MMTLError, OSError and its kinds, undecodable text, over-deep nesting, a refused pickle)
into one line naming the input and the remedy.
"""
from __future__ import annotations

import errno
import pickle

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1


class MMTLError(Exception):
    """An error caused by the user's input (config, files, data), not by a bug."""


class ConfigError(MMTLError):
    """A configuration value or key is invalid."""


class TrainingInterrupted(MMTLError):
    """Training stopped on a signal after saving a checkpoint (not a user error: exit 128 + signal)."""

    def __init__(self, message: str, signal_name: str) -> None:
        super().__init__(message)
        self.exit_code = 143 if signal_name == "SIGTERM" else 130


_OS_REMEDIES = {
    errno.ENOSPC: "no space left on the device; free some space or write somewhere else",
    errno.EDQUOT: "disk quota exceeded; free some space or write somewhere else",
    errno.EACCES: "permission denied; check the file's permissions or use another path",
    errno.EPERM: "operation not permitted; check the file's permissions or use another path",
    errno.ENOENT: "no such file or directory; check the path",
    errno.EISDIR: "is a directory; give a file path",
    errno.ENOTDIR: "a part of the path is a file, not a directory; check the path",
    errno.EEXIST: "already exists; remove it or choose another path",
    errno.EROFS: "read-only file system; write somewhere else",
    errno.ENAMETOOLONG: "file name too long; use a shorter path",
    errno.EMFILE: "too many open files; raise the limit (ulimit -n) or use fewer data workers",
}


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.strip().splitlines() if line.strip())


def os_error_message(exc: OSError) -> str:
    """``PATH: what went wrong; what to do`` for an OSError."""
    what = _OS_REMEDIES.get(exc.errno) if exc.errno is not None else None
    what = what or _one_line(exc.strerror or str(exc)) or type(exc).__name__
    names = [str(name) for name in (exc.filename, exc.filename2) if name is not None]
    return f"{' -> '.join(names)}: {what}" if names else what


def describe_failure(exc: BaseException) -> tuple[str, int]:
    """One line for ``mmtl: error: ...`` and the exit code: 2 for expected failures, 1 for a bug."""
    if isinstance(exc, MMTLError):
        return _one_line(str(exc)), EXIT_USER_ERROR
    if isinstance(exc, OSError):
        return os_error_message(exc), EXIT_USER_ERROR
    if isinstance(exc, UnicodeDecodeError):
        return (f"an input is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8",
                EXIT_USER_ERROR)
    if isinstance(exc, RecursionError):
        return "an input is nested too deeply to be read", EXIT_USER_ERROR
    if isinstance(exc, pickle.UnpicklingError):  # torch's text advises weights_only=False, which runs the payload
        return ("refusing to load a file that holds Python objects other than tensors and plain values "
                "(loading it could run code); use files mmtl wrote"), EXIT_USER_ERROR
    if isinstance(exc, MemoryError):
        return "out of memory; use a smaller batch, model or input", EXIT_USER_ERROR
    detail = _one_line(str(exc))[:300]
    return (f"internal error: {type(exc).__name__}{': ' + detail if detail else ''} "
            "(run with --debug for the traceback, and please report it)"), EXIT_INTERNAL_ERROR
