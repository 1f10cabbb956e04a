"""Small shared helpers: error messages with close matches, and atomic writes.

Every file the toolkit writes (checkpoints, results, figures, reports) goes
through :func:`atomic_write` so that an interrupted or failed write never
leaves a half-written file under the final name.
"""
from __future__ import annotations

import difflib
import os
import tempfile
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

__all__ = ["did_you_mean", "unknown_name", "atomic_write", "atomic_torch_save"]


def did_you_mean(name: str, choices: Iterable[str], n: int = 5) -> str:
    """Return ``" (did you mean: a, b?)"`` for the close matches of ``name``, or ``""``."""
    choices = [str(c) for c in choices]
    matches = difflib.get_close_matches(str(name), choices, n=n, cutoff=0.6)
    if not matches:
        # Substring matches catch short names inside long module paths ("fc7" in "head.fc7").
        matches = [c for c in choices if str(name).lower() in c.lower()][:n]
    return f" (did you mean: {', '.join(matches)}?)" if matches else ""


def unknown_name(kind: str, name: str, choices: Iterable[str], *, show_all: bool = False) -> ValueError:
    """Build the ValueError for a misspelt name: what was given, close matches, and optionally all valid names.

    Example:
        >>> str(unknown_name("context", "globl", ["global", "none"], show_all=True))
        "unknown context 'globl' (did you mean: global?); expected one of: global, none"
    """
    choices = list(choices)
    msg = f"unknown {kind} {name!r}{did_you_mean(name, choices)}"
    if show_all:
        msg += f"; expected one of: {', '.join(map(str, choices))}"
    return ValueError(msg)


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success fsync and rename it over ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched,
    so a previous version (an older checkpoint, say) survives a crash or a full disk.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_torch_save(obj: object, path: str | os.PathLike, save: Callable | None = None) -> None:
    """``torch.save(obj, path)`` through :func:`atomic_write`."""
    import torch

    with atomic_write(path, "wb") as f:
        (save or torch.save)(obj, f)
