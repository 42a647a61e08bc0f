"""The one error boundary of every `cointeract` command, and the exception type of input checks.

A problem the user can fix — a bad file, a bad value, a missing key, an unsupported input, a locked or missing
output folder — is printed as one line, `cointeract CMD: what is wrong and what to do`, and the command exits 1.
The traceback is printed only at debug level (`cointeract -v CMD`). What counts as the user's problem:

- `UserError`, raised by input checks (a ValueError, so library callers can catch either);
- `ValueError`, raised by validation throughout the package (configs, file contents, option values);
- `OSError` (missing files, permissions, a full disk; `FileNotFoundError`, `IsADirectoryError`, ...);
- running out of memory (`MemoryError`, `torch.OutOfMemoryError`), with a hint to lower the size.

Anything else (TypeError, RuntimeError, AssertionError, KeyError, ...) is a bug and keeps its traceback.
This module imports nothing of the package, so every part of it may raise `UserError`.
"""

from __future__ import annotations

import functools
import logging
import sys
import traceback
from collections.abc import Callable, Sequence

__all__ = [
    "UserError",
    "ReportedElsewhere",
    "user_errors",
    "report_user_error",
    "is_user_error",
    "EXIT_USER_ERROR",
    "EXIT_INTERRUPTED",
]

EXIT_USER_ERROR = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C

_USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, MemoryError)
_OUT_OF_MEMORY_HINT = "out of memory; lower --height / --width or --clips, or free memory"

Main = Callable[[Sequence[str] | None], int]


class UserError(ValueError):
    """A refusal the user can act on; the message says what is wrong and what to do (one line)."""


class ReportedElsewhere(UserError):
    """Another process of the same launch (torchrun) failed and prints the message; this one exits 1 quietly."""


def _out_of_memory(err: BaseException) -> bool:
    return isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError"  # torch.OutOfMemoryError


def is_user_error(err: BaseException) -> bool:
    """True for what the user can fix (see the module docstring); False for a bug."""
    return isinstance(err, _USER_ERRORS) or _out_of_memory(err)


def _one_line(err: BaseException) -> str:
    """The message on one line; an error the OS raised (it has an errno) is prefixed with its type."""
    if _out_of_memory(err):
        return _OUT_OF_MEMORY_HINT
    text = " ".join(str(err).split()) or type(err).__name__
    return f"{type(err).__name__}: {text}" if getattr(err, "errno", None) is not None else text


def report_user_error(prog: str, err: BaseException) -> int:
    """Print `prog: message` on stderr (the traceback first at debug level) -> EXIT_USER_ERROR."""
    if isinstance(err, ReportedElsewhere):
        return EXIT_USER_ERROR
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        traceback.print_exception(type(err), err, err.__traceback__)
    print(f"{prog}: {_one_line(err)}", file=sys.stderr)
    return EXIT_USER_ERROR


def user_errors(prog: str, interrupted: str = "interrupted") -> Callable[[Main], Main]:
    """Decorate a command's `main(argv) -> int`: user errors -> one line on stderr + exit 1; Ctrl-C -> 130."""

    def wrap(main: Main) -> Main:
        @functools.wraps(main)
        def run(argv: Sequence[str] | None = None) -> int:
            try:
                return main(argv)
            except KeyboardInterrupt:
                print(f"{prog}: {interrupted}", file=sys.stderr)
                return EXIT_INTERRUPTED
            except Exception as err:  # noqa: BLE001 - sorted by is_user_error; bugs are raised again
                if not is_user_error(err):
                    raise
                return report_user_error(prog, err)

        return run

    return wrap
