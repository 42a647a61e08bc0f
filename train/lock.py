"""One trainer per output folder: `OUTPUT_DIR/train.lock` names the run that holds it (pid, host, start time).

On POSIX the lock is an advisory `flock` on that file, held for the run's lifetime: the kernel drops it when the
process dies, SIGKILL included, so a lock left by a killed run is stale by construction and the next run takes it
over (and says so). A second trainer on the same folder is refused with the holder's pid and host. Where `fcntl`
does not exist (Windows) the file itself is the lock: it is created exclusively, and one left behind by a killed
run must be deleted by hand (the refusal says so).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

from .errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

log = logging.getLogger(__name__)

__all__ = ["LOCK_NAME", "RunLocked", "RunLock"]

LOCK_NAME = "train.lock"


class RunLocked(UserError):
    """Another trainer holds the output folder."""


def _describe(path: Path) -> tuple[dict, str]:
    """The holder recorded in a lock file, and how to name it in a message."""
    try:
        owner = json.loads(path.read_text(encoding="utf-8"))
        return owner, f"pid {owner['pid']} on host {owner['host']} (since {owner['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return {}, "a process whose pid is not recorded yet"


class RunLock:
    """The held lock of one output folder; `release()` (or leaving the `with` block) gives it back."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self.fd = path, fd

    @classmethod
    def acquire(cls, out_dir: str | os.PathLike) -> RunLock:
        """Take the lock of `out_dir` (created if missing); RunLocked naming the holder when a live run has it."""
        path = Path(out_dir) / LOCK_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(10):  # retried only when the holder released and removed the file in between
            fd = cls._open_locked(path)
            if cls._is_current(fd, path):
                lock = cls(path, fd)
                lock._take_over_and_record()
                return lock
            os.close(fd)
        raise RunLocked(f"{path} keeps changing hands; another trainer is starting in {path.parent}")

    @staticmethod
    def _open_locked(path: Path) -> int:
        """An fd of `path` holding the lock; RunLocked naming the holder when someone else has it."""
        if fcntl is None:  # pragma: no cover - Windows: the file's existence is the lock
            try:
                return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                _, who = _describe(path)
                raise RunLocked(
                    f"{path.parent} is in use by another `cointeract train` ({who}); if no trainer is running, "
                    f"delete {path}"
                ) from None
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            _, who = _describe(path)
            raise RunLocked(
                f"{path.parent} is in use by another `cointeract train`: {who}. Wait for it to finish or stop it, "
                "or choose another runtime.output_dir"
            ) from None
        return fd

    @staticmethod
    def _is_current(fd: int, path: Path) -> bool:
        """The locked file is still the one at `path` (a releasing holder removes it after we opened it)."""
        try:
            return os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            return False

    def _take_over_and_record(self) -> None:
        """Log a stale holder (a run that died without releasing), then write our pid, host and start time."""
        owner, who = _describe(self.path)
        if owner:
            log.warning("took over the stale lock %s of %s: that run is no longer alive", self.path, who)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        os.write(self.fd, json.dumps(me).encode())
        os.fsync(self.fd)

    def release(self) -> None:
        """Remove the lock file and drop the lock (POSIX: remove first, so no one locks a file that is going away;
        Windows cannot remove an open file, and there the file is the lock)."""
        if self.fd < 0:
            return
        if fcntl is None:  # pragma: no cover - Windows
            os.close(self.fd)
            self.path.unlink(missing_ok=True)
        else:
            self.path.unlink(missing_ok=True)
            os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
