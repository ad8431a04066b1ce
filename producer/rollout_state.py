"""What `import` and `follow` remember on the machine where Codex ran: the turns already shipped
and, per rollout file, how far it has been read.

One SQLite file (`CODEX_LANGFUSE_ROLLOUT_STATE`, default
`$XDG_STATE_HOME/codex-langfuse/rollouts.sqlite3`), shared safely by an `import` and a `follow`
running at once. A turn is marked shipped only once its entries are in Redis or the spool, so a
crash in between ships it again (harmless: the pipeline files entries by run and sequence number
and the ledger skips what Langfuse has). A file's checkpoint is keyed by its identity (device and
inode), so a session moved to `archived_sessions/` continues where it was; a file replaced,
rotated or truncated at the same path starts over, and the shipped turns are skipped by run id.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

SCHEMA = """
CREATE TABLE IF NOT EXISTS shipped (
    run_id TEXT PRIMARY KEY,
    file TEXT NOT NULL,
    shipped_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    identity TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    state TEXT NOT NULL,
    updated_at REAL NOT NULL
);
"""


def default_state_path(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    configured = environ.get("CODEX_LANGFUSE_ROLLOUT_STATE")
    if configured:
        return Path(configured).expanduser()
    base = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base).expanduser() / "codex-langfuse" / "rollouts.sqlite3"


def file_identity(path: Path) -> str:
    info = path.stat()
    return f"{info.st_dev}:{info.st_ino}"


@dataclass
class Checkpoint:
    identity: str
    path: str
    size: int
    state: str  # a SplitterState as JSON


class RolloutState:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # autocommit; a busy timeout lets an import and a follow share the file
        self._db = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # No fsync per commit: a mark lost to a power cut only makes a turn ship again (harmless).
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def shipped(self, run_ids: Iterable[str]) -> set[str]:
        ids = list(run_ids)
        found: set[str] = set()
        for index in range(0, len(ids), 500):
            chunk = ids[index:index + 500]
            marks = ",".join("?" * len(chunk))
            found.update(row[0] for row in self._db.execute(f"SELECT run_id FROM shipped WHERE run_id IN ({marks})", chunk))
        return found

    def mark_shipped(self, run_ids: Iterable[str], file: str) -> None:
        now = time.time()
        self._db.executemany("INSERT OR IGNORE INTO shipped (run_id, file, shipped_at) VALUES (?, ?, ?)",
                             [(run_id, file, now) for run_id in run_ids])

    def forget(self, run_ids: Iterable[str]) -> None:
        """Ship these again next time (`verify` heals a turn Langfuse lost)."""
        self._db.executemany("DELETE FROM shipped WHERE run_id = ?", [(run_id,) for run_id in run_ids])

    def checkpoint(self, identity: str) -> Checkpoint | None:
        row = self._db.execute("SELECT identity, path, size, state FROM checkpoints WHERE identity = ?",
                               (identity,)).fetchone()
        return Checkpoint(*row) if row else None

    def save_checkpoint(self, identity: str, path: Path, size: int, state: str) -> None:
        self._db.execute(
            "INSERT INTO checkpoints (identity, path, size, state, updated_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(identity) DO UPDATE SET path = excluded.path, size = excluded.size, "
            "state = excluded.state, updated_at = excluded.updated_at",
            (identity, str(path), size, state, time.time()),
        )

    def checkpoints(self) -> list[Checkpoint]:
        return [Checkpoint(*row) for row in self._db.execute("SELECT identity, path, size, state FROM checkpoints")]
