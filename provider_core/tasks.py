"""Task records for work the core runs in the background.

Records live in a small SQLite database in the provider's state directory,
so that a client polling a task across a provider restart still gets an
answer: finished tasks keep their result; tasks that were running when the
process stopped are reported done with an error saying they were
interrupted. Task ids are ``task-`` followed by a random UUID.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from pathlib import Path

from .models import TaskState

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


class TaskRegistry:
    """Persistent registry of the core's background tasks."""

    def __init__(self, path: Path | None, retention_seconds: float = 7 * 86400) -> None:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path) if path else ":memory:", check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
            now = time.time()
            self._db.execute("UPDATE tasks SET finished = ?, error = ? WHERE finished IS NULL", (now, INTERRUPTED))
            self._db.execute("DELETE FROM tasks WHERE finished < ?", (now - retention_seconds,))

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
