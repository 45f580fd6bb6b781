"""The write lock of an index folder: one process at a time may change an index.

POSIX record locks (lockf), not flock: a forked child (a DataLoader worker) does not inherit
them, so a killed writer's lock dies with it even while its orphaned workers wind down. They
do not exclude the same process, hence the set of paths this process holds.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from ..errors import SearchIndexError

__all__ = ["WriteLock"]

_HELD: set[str] = set()  # resolved paths of the locks this process holds
_HELD_LOCK = threading.Lock()


class WriteLock:
    """Take with ``WriteLock.take(path)``; ``release()`` (idempotent) lets the next writer in."""

    def __init__(self, key: str, fd: int) -> None:
        self._key, self._fd = key, fd

    @classmethod
    def take(cls, path: Path) -> "WriteLock":
        """Lock ``path`` (created if missing) or raise SearchIndexError naming who holds it."""
        import fcntl

        key = str(path.resolve())
        with _HELD_LOCK:
            if key in _HELD:
                raise SearchIndexError(f"{path.parent} is already open for writing in this process; close it first")
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise SearchIndexError(
                    f"{path.parent} is open for writing by another process (a running `clipforge serve` or "
                    "`index add`); stop it, or add images through the service's API"
                ) from None
            _HELD.add(key)
        return cls(key, fd)

    def release(self) -> None:
        with _HELD_LOCK:
            if self._fd is None:
                return
            _HELD.discard(self._key)
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None
