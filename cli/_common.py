"""What every command shares: bad input becomes one line on stderr (``Error: ...``) and exit code 1, never a traceback."""
from __future__ import annotations

import functools
import sys

import click

__all__ = ["friendly_errors", "USER_ERRORS"]

# Errors that mean "the input was wrong". The library raises them with messages
# that say what was given and what was expected.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, NotADirectoryError,
               IsADirectoryError, PermissionError, KeyError)


def friendly_errors(fn):
    """Decorate a click command body so user errors print ``Error: <message>`` and exit 1 (click's usage errors exit 2)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except click.exceptions.Exit:
            raise
        except click.ClickException:
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


def _one_line(exc: BaseException) -> str:
    msg = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(msg.split())
