"""The trainer's commands (`cointeract train`, `cointeract prepare`) use the package's one error boundary.

A problem the user can fix — a bad config, a locked output folder, a resume the checkpoint refuses, a dataset
that gave no clips, a missing file — is printed as one line, `cointeract CMD: what is wrong and what to do`, and
the command exits non-zero. The traceback is printed only at debug level (`cointeract -v CMD` or `CMD -v`).
Code raises ordinary exceptions; only `user_errors` catches them (see `cointeract_core/errors.py`).
"""

from __future__ import annotations

from ..cointeract_core.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, UserError, user_errors

__all__ = ["UserError", "user_errors", "EXIT_USER_ERROR", "EXIT_INTERRUPTED"]
