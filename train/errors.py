"""The one error boundary of the trainer's commands (`cointeract train`, `cointeract prepare`).

A problem the user can fix — a bad config, a locked output folder, a resume the checkpoint refuses, a dataset
that gave no clips, a missing file — is printed as one line, `cointeract CMD: what is wrong and what to do`, and
the command exits non-zero. The traceback is printed only at debug level (`cointeract -v CMD` or `CMD -v`).
Code raises ordinary exceptions; only `user_errors` catches them.
"""

from __future__ import annotations

import functools
import logging
import sys
import traceback
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)

__all__ = ["UserError", "user_errors", "EXIT_USER_ERROR", "EXIT_INTERRUPTED"]

EXIT_USER_ERROR = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C

# What a user can cause and fix: validation (ValueError, raised for config, data and file-content problems) and
# the file system (missing files, permissions, a full disk). Anything else is a bug and keeps its traceback.
_USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)

Main = Callable[[Sequence[str] | None], int]


class UserError(ValueError):
    """A refusal the user can act on; the message says what is wrong and what to do (one line)."""


def _one_line(err: BaseException) -> str:
    """The message on one line; an error the OS raised (it has an errno) is prefixed with its type."""
    text = " ".join(str(err).split()) or type(err).__name__
    return f"{type(err).__name__}: {text}" if getattr(err, "errno", None) is not None else text


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
            except _USER_ERRORS as err:
                if logging.getLogger().isEnabledFor(logging.DEBUG):
                    traceback.print_exc()
                print(f"{prog}: {_one_line(err)}", file=sys.stderr)
                return EXIT_USER_ERROR

        return run

    return wrap
