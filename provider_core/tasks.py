"""Task records for work the core runs in the background.

Records live in a small SQLite database in the provider's state directory,
so that a client polling a task across a provider restart still gets an
answer: finished tasks keep their result; tasks that were running when the
process stopped are reported done with an error saying they were
interrupted. Task ids are ``task-`` followed by a random UUID.

One process owns a state directory at a time (:class:`StateDir`): two
providers sharing one would each report the other's running tasks as
interrupted.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import threading
import time
import uuid
from pathlib import Path

from .errors import ConfigError
from .models import TaskState

if sys.platform != "win32":
    import fcntl

PREFIX = "task-"
INTERRUPTED = "interrupted: the provider stopped before this task finished; check the VM's state and retry"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    started REAL NOT NULL,
    finished REAL,
    error TEXT NOT NULL DEFAULT ''
)
"""


class StateDir:
    """A state directory, created if need be and locked for this process.

    The lock is ``flock`` on the file ``lock`` inside, which holds the
    owner's PID; the kernel drops it when the process ends, however it
    ends, so a crash never leaves a stale lock behind.
    """

    LOCK = "lock"

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    def open(cls, path: Path) -> StateDir:
        """Create and lock ``path``; ConfigError naming it (and the holder's PID) otherwise."""
        fix = "set state_dir (or VM_PROVIDER_SERVER_STATE_DIR) to a directory this user can write"
        try:
            path.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise ConfigError(f"state_dir {path} is a file, not a directory; {fix}") from None
        except NotADirectoryError:
            raise ConfigError(f"state_dir {path} cannot be created: part of its path is a file; {fix}") from None
        except OSError as exc:
            raise ConfigError(f"state_dir {path} cannot be created: {exc.strerror}; {fix}") from None
        try:
            fd = os.open(path / cls.LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise ConfigError(f"state_dir {path} is not writable: {exc.strerror}; {fix}") from None
        if sys.platform != "win32":
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise ConfigError(
                    f"state_dir {path} is in use by another vm-provider (process {holder}); "
                    "give each provider its own state_dir, or stop that one"
                ) from None
        pid = f"{os.getpid()}\n".encode()
        os.pwrite(fd, pid, 0)
        os.ftruncate(fd, len(pid))
        return cls(path, fd)

    def release(self) -> None:
        """Unlock (idempotent); the next provider may take the directory."""
        if self._fd >= 0:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = -1


class TaskRegistry:
    """Persistent registry of the core's background tasks."""

    def __init__(self, path: Path | None, retention_seconds: float = 7 * 86400) -> None:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(path) if path else ":memory:", check_same_thread=False, isolation_level=None)
            with self._lock:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute(_SCHEMA)
                now = time.time()
                self._db.execute("UPDATE tasks SET finished = ?, error = ? WHERE finished IS NULL", (now, INTERRUPTED))
                self._db.execute("DELETE FROM tasks WHERE finished < ?", (now - retention_seconds,))
        except sqlite3.Error as exc:
            raise ConfigError(
                f"task records {path} cannot be opened: {exc}; move the file away to start with no records"
            ) from None

    def start(self, kind: str, subject: str) -> str:
        task_id = PREFIX + uuid.uuid4().hex
        with self._lock:
            self._db.execute(
                "INSERT INTO tasks (id, kind, subject, started) VALUES (?, ?, ?, ?)",
                (task_id, kind, subject, time.time()),
            )
        return task_id

    def finish(self, task_id: str, error: str = "") -> None:
        with self._lock:
            self._db.execute("UPDATE tasks SET finished = ?, error = ? WHERE id = ?", (time.time(), error, task_id))

    def get(self, task_id: str) -> TaskState | None:
        with self._lock:
            row = self._db.execute("SELECT finished, error FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is None:
            return None
        return TaskState(done=row[0] is not None, error=row[1])

    def close(self) -> None:
        with self._lock:
            self._db.close()
