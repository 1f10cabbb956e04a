"""What every command shares: bad input becomes one line on stderr (``Error: ...``) and a non-zero exit.

* :func:`command` makes a click command whose usage errors (unknown option, bad
  value, missing argument) print one line too, instead of click's usage, hint
  and error; ``--help`` is unchanged.
* :func:`friendly_errors` turns the library's errors for bad input
  (:data:`USER_ERRORS`) into that line. ``TypeError`` and ``KeyError`` are not
  among them: the library raises ``ValueError`` for bad input, so those two mean
  a bug, and a bug keeps its traceback.
* Warnings (a skipped image, say) print as one ``warning: ...`` line, without
  Python's source line.
* :data:`PATH` is ``click.Path`` that refuses an empty string (which would mean
  the current folder).
"""
from __future__ import annotations

import functools
import sys
import warnings

import click

__all__ = ["command", "friendly_errors", "USER_ERRORS", "PATH", "FILE", "FOLDER", "BATCH_SIZE", "check_resume_flags"]

# Errors that mean "the input was wrong". The library raises them with messages
# that say what was given and what was expected.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
               PermissionError)


class _Command(click.Command):
    """A click command whose errors are one line on stderr; exit code 2 for usage errors, 1 for the rest."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            click.echo(f"Error: {_one_line(exc.format_message())}", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def command(name: str | None = None, **context_settings):
    """``click.command`` with ``-h/--help``, one-line errors, and the given context settings."""
    settings = {"help_option_names": ["-h", "--help"], **context_settings}
    return click.command(name, cls=_Command, context_settings=settings)


class _NonEmptyPath(click.Path):
    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            self.fail("is an empty string; expected a path (use . for the current folder)", param, ctx)
        return super().convert(value, param, ctx)


PATH = _NonEmptyPath()
FILE = _NonEmptyPath(dir_okay=False)
FOLDER = _NonEmptyPath(file_okay=False)


class _BatchSize(click.ParamType):
    """A positive integer, or ``auto`` (the largest batch that fits the device's memory)."""

    name = "N|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value == "auto":
            return value
        try:
            return int(value)
        except ValueError:
            self.fail(f"{value!r} is not a whole number or 'auto'", param, ctx)


BATCH_SIZE = _BatchSize()


def check_resume_flags(overwrite: bool, resume: bool) -> None:
    """``--overwrite`` and ``--resume`` exclude each other, in every command."""
    if overwrite and resume:
        raise click.UsageError("--overwrite and --resume exclude each other; pick one")


def _show_warning(message, category, filename, lineno, file=None, line=None):
    click.echo(f"warning: {_one_line(str(message))}", err=True)


def friendly_errors(fn):
    """Decorate a click command body so user errors print ``Error: <message>`` and exit 1 (click's usage errors exit 2)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _show_warning
                return fn(*args, **kwargs)
        except (click.exceptions.Exit, click.ClickException):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted; finished work is saved and a rerun with --resume continues", err=True)
            sys.exit(130)
        except OSError as exc:
            if exc.errno == 28:  # ENOSPC
                raise click.ClickException(f"disk full while writing {exc.filename or ''}; previous files are intact") from None
            if isinstance(exc, USER_ERRORS):
                raise click.ClickException(_one_line(exc)) from None
            raise click.ClickException(f"{type(exc).__name__}: {_one_line(exc)}") from None
        except USER_ERRORS as exc:
            raise click.ClickException(_one_line(exc)) from None

    return wrapper


def _one_line(exc: BaseException | str) -> str:
    if isinstance(exc, OSError) and exc.strerror and exc.filename:  # "[Errno 17] File exists: 'x'" from the OS
        exc = f"{exc.filename}: {exc.strerror}"
    return " ".join(str(exc).split())
