"""`codex-langfuse replay`: send dead letters again, never twice.

For each selected letter: mark it in flight, send what the ledger does not already hold (when a
previous replay stopped mid-send, first ask Langfuse what it has), record what was accepted in
the ledger, and only then remove the letter — or keep it with what is still refused. Killed at
any point and run again, it sends each observation once.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from ingest.deadletters import DeadLetter, item_id
from ingest.delivery import SendReport
from ingest.jobs import WorkerContext


@dataclass
class ReplayReport:
    letters: int = 0  # letters selected
    replayed: int = 0  # items Langfuse accepted now
    skipped: int = 0  # items it had already accepted
    failed: int = 0  # items refused again (their letters are kept)
    not_attempted: int = 0  # items left because Langfuse was unreachable
    removed_letters: int = 0
    dry_run: bool = False
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def replay(ctx: WorkerContext, *, run_id: str | None = None, reason: str | None = None,
           older_than: float | None = None, newer_than: float | None = None, limit: int | None = None,
           dry_run: bool = False, progress: Callable[[int, int], None] | None = None) -> ReplayReport:
    letters = list(ctx.dead_letters.select(run_id=run_id, reason=reason, older_than=older_than,
                                           newer_than=newer_than, limit=limit))
    report = ReplayReport(letters=len(letters), dry_run=dry_run)
    for index, letter in enumerate(letters, 1):
        keys = [_ledger_key(letter, item) for item in letter.items]
        already = ctx.ledger.accepted(letter.trace_id, keys)
        if dry_run:
            report.skipped += len(already)
            report.replayed += len(keys) - len(already)
        else:
            stop = _replay_one(ctx, letter, report)
            if stop:
                report.not_attempted += sum(len(rest.items) for rest in letters[index:])
                break
        if progress:
            progress(index, len(letters))
    return report


def _ledger_key(letter: DeadLetter, item: dict) -> str:
    from ingest.ledger import score_key

    return item["spanId"] if letter.kind == "spans" else score_key(item)


def _replay_one(ctx: WorkerContext, letter: DeadLetter, report: ReplayReport) -> bool:
    """Replay one letter; True when Langfuse is unreachable and replay should stop."""
    ctx.dead_letters.add([letter.model_copy(update={"in_flight": True})])
    if letter.kind == "spans":
        sent: SendReport = ctx.delivery.send_spans(letter.trace_id, letter.items, in_doubt=letter.in_flight)
    else:
        sent = ctx.delivery.send_scores(letter.trace_id, letter.items)
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
    kept_ids = {item_id(letter.kind, item) for item in remaining}
    ctx.dead_letters.add([letter.model_copy(update={
        "items": [item for item in letter.items if item_id(letter.kind, item) in kept_ids],
        "attempts": letter.attempts + 1,
        "last_failure": time.time(),
        "reason": letter.reason if sent.transient else sent.rejected[-1][1].reason,
        "message": error.message[:4000],
        "in_flight": sent.transient is not None and sent.transient.in_doubt,
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
