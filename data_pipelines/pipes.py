"""``pipe:`` shard sources: a shell command whose standard output is a tar. Off unless the user opts in.

A ``pipe:`` URL runs a command on the machine that reads it, so mmtl runs one only when the user's
own config or command line says so (``data.allow_pipe=true``, or ``--allow-pipe`` for ``mmtl data``).
A checkpoint's config can never say so: its data settings are not read (``mmtl.config.parsing.
load_saved_config``). Every command is logged as it starts.

The setting is process-wide (:func:`allow_pipes`): the entry points set it from the user's config,
and DataLoader workers forked after that inherit it.
"""
from __future__ import annotations

import logging
from typing import Iterable, Iterator

from mmtl.errors import MMTLError

PIPE_PREFIX = "pipe:"
OPT_IN = "data.allow_pipe=true"

log = logging.getLogger(__name__)
_allowed = False


def allow_pipes(enabled: bool) -> None:
    """Allow (or forbid again) ``pipe:`` sources in this process: only from the user's own settings."""
    global _allowed
    _allowed = bool(enabled)


def pipes_allowed() -> bool:
    """Whether ``pipe:`` sources may run in this process."""
    return _allowed


def is_pipe(url: str) -> bool:
    """A ``pipe:`` URL (a command to run)."""
    return str(url).startswith(PIPE_PREFIX)


def check_pipes(urls: Iterable[str], reference: str) -> None:
    """MMTLError naming the command when ``urls`` hold a ``pipe:`` and pipes are not allowed."""
    pipes = [u for u in urls if is_pipe(u)]
    if pipes and not _allowed:
        raise MMTLError(f"{reference[:200]}: a pipe: source runs a shell command ({pipes[0][len(PIPE_PREFIX):][:200]!r}); "
                        f"mmtl runs one only when your own config or command line sets {OPT_IN} "
                        "(README, Security model)")


def opened(urls: Iterable[str]) -> Iterator[str]:
    """``urls`` one by one as they are opened: each ``pipe:`` is checked against the opt-in and logged
    with its command just before it runs."""
    for url in urls:
        if is_pipe(url):
            check_pipes([url], url)
            log.warning("running pipe: command (%s): %s", OPT_IN, url[len(PIPE_PREFIX):])
        yield url
