"""`codex-langfuse replay`: send dead letters again, never twice.

For each selected letter: send what the ledger does not already hold (a span whose send a
killed replay left in doubt is first looked up in Langfuse, as `delivery` does), record what was
accepted in the ledger, and only then remove the letter — or keep it with what is still refused.
Killed at any point and run again, it sends each observation once. Letters of entries that could
not be folded (`fold_failed`) hold no spans: they are counted and kept.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from codex_langfuse.ingest.deadletters import DeadLetter
from codex_langfuse.ingest.delivery import SendReport
from codex_langfuse.ingest.context import WorkerContext
from codex_langfuse.ingest.lease import Leases
from codex_langfuse.ingest.items import Span, ledger_key, slot


# The lock of a replay that was killed frees itself this long after its last renewal.
LOCK_SECONDS = 30


class ReplayBusy(Exception):
    pass


@dataclass
class ReplayReport:
    letters: int = 0  # letters selected
    replayed: int = 0  # items Langfuse accepted now
    skipped: int = 0  # items it had already accepted
    failed: int = 0  # items refused again (their letters are kept)
    not_attempted: int = 0  # items left because Langfuse was unreachable
    removed_letters: int = 0
    unsendable: int = 0  # letters of entries that could not be folded (fold_failed): kept, never sent
    dry_run: bool = False
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def replay(ctx: WorkerContext, *, run_id: str | None = None, reason: str | None = None,
           older_than: float | None = None, newer_than: float | None = None, limit: int | None = None,
           dry_run: bool = False, progress: Callable[[int, int], None] | None = None,
           wait: float = LOCK_SECONDS + 5) -> ReplayReport:
    leases = Leases(ctx.redis, LOCK_SECONDS)
    token = None if dry_run else _wait_for_lock(leases, ctx.keys.replay_lock, wait)
    try:
        letters = list(ctx.dead_letters.select(run_id=run_id, reason=reason, older_than=older_than,
                                               newer_than=newer_than, limit=limit))
        report = ReplayReport(letters=len(letters), dry_run=dry_run)
        for index, letter in enumerate(letters, 1):
            if letter.kind == "entries":
                report.unsendable += 1
            elif dry_run:
                keys = [(letter.trace_id, ledger_key(item)) for item in letter.items]
                already = ctx.ledger.accepted(keys)
                report.skipped += len(already)
                report.replayed += len(keys) - len(already)
            elif _replay_one(ctx, letter, report, keep_alive=lambda: leases.renew(ctx.keys.replay_lock, token)):
                report.not_attempted += sum(len(rest.items) for rest in letters[index:])
                break
            if progress:
                progress(index, len(letters))
        return report
    finally:
        if token is not None:
            leases.release(ctx.keys.replay_lock, token)


def _wait_for_lock(leases: Leases, key: str, wait: float) -> str:
    """One replay at a time (two could send the same letter twice). A killed replay's lock frees
    itself LOCK_SECONDS after its last renewal; one of a dead process on this host is taken at once."""
    host = socket.gethostname()
    deadline = time.monotonic() + wait
    while True:
        token = leases.acquire(key, owner=f"{host}:{os.getpid()}:")
        if token is not None:
            return token
        holder = leases.holder(key) or ""
        holder_host, _, rest = holder.partition(":")
        holder_pid = rest.partition(":")[0]
        if holder_host == host and holder_pid.isdigit() and not _alive(int(holder_pid)):
            leases.release(key, holder)
            continue
        if time.monotonic() >= deadline:
            raise ReplayBusy(f"another replay is running (waited {wait:.0f} s)")
        time.sleep(0.25)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _replay_one(ctx: WorkerContext, letter: DeadLetter, report: ReplayReport, keep_alive: Callable[[], None]) -> bool:
    """Replay one letter; True when Langfuse is unreachable and replay should stop."""
    if letter.kind == "spans":
        sent: SendReport = ctx.delivery.send_spans([Span.encode(item) for item in letter.items], keep_alive=keep_alive)
    else:
        sent = ctx.delivery.send_scores(letter.items, keep_alive=keep_alive)
    report.replayed += len(sent.accepted)
    report.skipped += len(sent.skipped)
    still_refused = [item for batch, _ in sent.rejected for item in batch]
    remaining = still_refused + sent.unsent
    if not remaining:
        ctx.dead_letters.remove([letter.id])
        report.removed_letters += 1
        return False
    report.failed += len(still_refused)
    report.not_attempted += len(sent.unsent)
    error = sent.transient or sent.rejected[-1][1]
    report.errors.append(f"{letter.id}: {error.message[:300]}")
    kept_ids = {slot(item) for item in remaining}
    ctx.dead_letters.add([letter.model_copy(update={
        "items": [item for item in letter.items if slot(item) in kept_ids],
        "attempts": letter.attempts + 1,
        "last_failure": time.time(),
        "reason": letter.reason if sent.transient else sent.rejected[-1][1].reason,
        "message": error.message[:4000],
    })])
    return sent.transient is not None


def terminal_progress(done: int, total: int) -> None:
    """A one-line progress bar on stderr, only when it is a terminal."""
    if not sys.stderr.isatty() or total == 0:
        return
    width = 30
    filled = width * done // total
    sys.stderr.write(f"\rreplaying [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()
