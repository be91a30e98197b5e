"""The data directory: one writer at a time, and usable before anything is read.

Two exporters on one directory would each overwrite the other's rows (a rolling
update on a shared volume does exactly that), so the first takes an exclusive
`flock` on `<dir>/abtest.lock` and writes its PID there; the OS releases it when
the process dies, however it dies. A second one stops at once, naming the holder.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

LOCK_NAME = "abtest.lock"


class DataDirError(Exception):
    """The directory cannot be used; the message says why and what to do."""


class DataDirLock:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        directory = self.directory
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataDirError(
                f"cannot create the data directory {directory}: {exc.strerror}"
            ) from None
        if not os.access(directory, os.W_OK | os.X_OK):
            raise DataDirError(
                f"the data directory {directory} is not writable by this user (uid "
                f"{os.getuid()}): fix its permissions or choose another --data-dir"
            )
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise DataDirError(f"cannot open {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise DataDirError(
                f"the data directory {directory} is in use by another abtest-exporter "
                f"(pid {holder}); one writer per data directory: stop it first, or give this "
                "one its own --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _read_pid(fd: int) -> str:
    """The holder's PID; it writes it just after it takes the lock, so a racer may find the
    file empty for a moment: wait a little for it."""
    for _ in range(40):
        with contextlib.suppress(OSError, ValueError):
            text = os.pread(fd, 32, 0).decode().strip()
            if text.isdigit():
                return text
        time.sleep(0.025)
    return "unknown"
