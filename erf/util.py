"""Small shared helpers: error messages with close matches, checks of user input, and atomic writes.

Every file the toolkit writes (checkpoints, results, figures, reports) goes
through :func:`atomic_write` so that an interrupted or failed write never
leaves a half-written file under the final name.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import tempfile
import typing
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np

__all__ = ["did_you_mean", "unknown_name", "atomic_write", "atomic_torch_save", "parse_device", "check_path",
           "check_field_types", "finite_or_none", "format_number", "format_percent", "state_dict_mismatch"]


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
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a file written in place would honour the umask
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


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def parse_device(device: str | Any, *, present: bool = True, gpus: int | None = None) -> "torch.device":
    """The one device check of every command: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``, present on this machine.

    With ``present=False`` only the spelling is checked (a config written for another machine).
    ``gpus`` is the number of CUDA devices to check against (default: this machine's).

    Raises:
        ValueError: a malformed or unsupported string, CUDA missing, or an index past the GPU count;
            the message names the devices this machine has.

    Example:
        >>> parse_device("cpu"), parse_device("auto").type in ("cpu", "cuda")
        (device(type='cpu'), True)
    """
    import torch

    have = ["cpu"]
    count = (torch.cuda.device_count() if torch.cuda.is_available() else 0) if gpus is None else gpus
    if count:
        have += ["cuda"] + [f"cuda:{i}" for i in range(count)]
    available = f"available here: {', '.join(have)}"
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str) or not device.strip():
        raise ValueError(f"device {device!r}; expected cpu, cuda, cuda:N or auto ({available})")
    if device == "auto":
        return torch.device("cuda" if count else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {device!r}{did_you_mean(device, have + ['auto'])}; expected cpu, cuda, "
                         f"cuda:N or auto ({available})") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}; expected cpu, cuda, cuda:N or auto ({available})")
    if not present:
        return dev
    if dev.type == "cuda" and not count:
        raise ValueError(f"device {device!r}: CUDA is not available on this machine ({available})")
    if dev.type == "cuda" and dev.index is not None and dev.index >= count:
        raise ValueError(f"device {device!r}: this machine has {count} GPU{'s' if count > 1 else ''} ({available})")
    if dev.type == "cpu" and dev.index not in (None, 0):
        raise ValueError(f"device {device!r}; expected cpu without an index ({available})")
    return dev


def check_path(path: str | os.PathLike, what: str) -> Path:
    """``Path(path)``, refusing an empty string (which would silently mean the current folder)."""
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"{what} {path!r}; expected a path")
    if not str(path).strip():
        raise ValueError(f"{what} is an empty string; expected a path (use . for the current folder)")
    return Path(path)


def _kind(tp) -> tuple[Callable[[Any], bool], str] | None:
    """A check and its wording for a field type: int, float, bool, str, tuples, dicts, optionals."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        sub = _kind(inner[0]) if len(inner) == 1 else None
        if sub is None:
            return None
        return (lambda v: v is None or sub[0](v)), f"{sub[1]} or nothing"
    if tp is bool:
        return (lambda v: isinstance(v, bool)), "true or false"
    if tp is int:
        return (lambda v: isinstance(v, int) and not isinstance(v, bool)), "an integer"
    if tp is float:
        return (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)), "a number"
    if tp is str:
        return (lambda v: isinstance(v, str)), "a string"
    if tp is dict or origin is dict:
        return (lambda v: isinstance(v, dict)), "a table"
    if origin is tuple or tp is tuple:
        item = _kind(args[0]) if args and args[0] is not Ellipsis else None
        ok = item[0] if item else (lambda v: True)
        word = f"a list of {item[1].split(' ', 1)[-1]}s" if item and len(args) == 2 and args[1] is Ellipsis \
            else "a list"
        if len(args) >= 1 and args[-1] is not Ellipsis:
            word = f"a list of {len(args)} {item[1].split(' ', 1)[-1]}s" if item else word
        return (lambda v: isinstance(v, (list, tuple)) and all(ok(x) for x in v)), word
    return None


def _toml_repr(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def check_field_types(cls: type, values: dict, where: str = "") -> None:
    """Check ``values`` against the field types of dataclass ``cls``, before anything compares or computes.

    Unknown keys get the close matches; a value of the wrong type gets ``where: key = value; expected ...``
    (``where`` names the file or table, e.g. ``"config.toml: [model]"``). Fields of other types
    (nested configs) are left to the class.

    Raises:
        ValueError: the first bad key or value.

    Example:
        >>> check_field_types(ParseNetConfig, {"width": "wide"}, "config.toml:")  # doctest: +SKIP
        ValueError: config.toml: width = "wide"; expected a number
    """
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    prefix = f"{where} " if where else ""
    if not isinstance(values, dict):
        raise ValueError(f"{prefix}{_toml_repr(values)}; expected a table of {cls.__name__} options")
    for key, value in values.items():
        if key not in known:
            raise ValueError(f"{prefix}unknown option {key!r}{did_you_mean(key, known)}; expected one of: "
                             f"{', '.join(known)}")
        kind = _kind(hints[key])
        if kind is not None and not kind[0](value):
            raise ValueError(f"{prefix}{key} = {_toml_repr(value)}; expected {kind[1]}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{prefix}{key} = {value}; expected a finite number")


def finite_or_none(obj: Any) -> Any:
    """NaN and infinities (in nested dicts, lists, tuples) become None, for strict JSON; numpy floats become floats."""
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def format_number(value: Any, spec: str = ".3g", missing: str = "-") -> str:
    """``format(value, spec)``, or ``missing`` for None and NaN (a statistic that does not exist)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, spec)


def format_percent(value: Any, spec: str = ".1f", missing: str = "n/a") -> str:
    """A fraction as a percentage without the sign (``0.123`` -> ``"12.3"``), or ``missing`` for None and NaN."""
    return format_number(None if value is None else 100 * value, spec, missing)


def state_dict_mismatch(own: dict, given: dict, limit: int = 5) -> str:
    """What keeps ``given`` from loading into a module whose state dict is ``own``: missing, unexpected and
    mismatched-shape keys (the first ``limit`` of each); ``""`` when it fits."""
    missing = [k for k in own if k not in given]
    unexpected = [k for k in given if k not in own]
    shapes = [f"{k}: file {tuple(given[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in given and tuple(given[k].shape) != tuple(own[k].shape)]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if items:
            more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
            parts.append(f"{label} {len(items)}: {', '.join(items[:limit])}{more}")
    return "; ".join(parts)
