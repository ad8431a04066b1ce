"""Delivering runs' outboxes: the spans and scores their fold steps completed, sent exactly once.

The runs a job advanced are delivered together: one attempt sends what the ledger does not hold
yet of all of them (`delivery`: their spans share export requests, their scores one request),
then settles each run's books in one transaction: what Langfuse accepted or refused leaves its
outbox, refusals become dead letters, and a transient failure records the run's streak and
schedules its next attempt as `retry` decides.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from codex_langfuse.ingest import logs, metrics
from codex_langfuse.ingest.context import WorkerContext
from codex_langfuse.ingest.deadletters import DeadLetter
from codex_langfuse.ingest.delivery import SendReport, key
from codex_langfuse.ingest.items import Item, Span, slot
from codex_langfuse.ingest.runs import Committed, DeliveryState
from codex_langfuse.ingest.transport import RETRIES_EXHAUSTED, DeliveryError
from codex_langfuse.ingest.wake import schedule_runs

log = logging.getLogger("codex_langfuse.worker")


@dataclass
class Parcel:
    """What one run has to deliver in this attempt, and how its last attempt ended."""

    run: str
    trace_id: str
    spans: list[Span]
    scores: list[dict[str, Any]]
    previous: DeliveryState


@dataclass
class Delivered:
    """How one run's delivery went."""

    delivered: int = 0  # spans newly accepted
    skipped: int = 0  # spans Langfuse already had
    dead_lettered: int = 0
    retry_at: float | None = None  # its next attempt, when this one failed (or is not due yet)
    attempted: bool = True  # False: its attempt was not due
    letters: list[DeadLetter] = field(default_factory=list)


def parcel(ctx: WorkerContext, run: str, trace_id: str, committed: Committed, spans: list[Span],
           scores: list[dict[str, Any]], now: float) -> Parcel | Delivered | None:
    """What `run` delivers now: its outbox (the items just committed are at hand, the others
    are read); a `Delivered` with its retry time when its next attempt is not due; None when its
    outbox is empty."""
    previous = committed.delivery
    if previous.next_attempt_at and previous.next_attempt_at > now:
        # Not before Langfuse asked (Retry-After) or the backoff allows: the scheduled job
        # delivers then, or, if it was lost, the dispatcher's sweep wakes the run afterwards.
        return Delivered(retry_at=previous.next_attempt_at, attempted=False)
    if not committed.slots:
        return None
    held: dict[str, Item] = {span.span_id: span for span in spans}
    held.update((slot(score), score) for score in scores)
    missing = [s for s in committed.slots if s not in held]
    more_spans, more_scores = ctx.store.outbox(run, trace_id, missing) if missing else ([], [])
    present = [held[s] for s in committed.slots if s in held]
    return Parcel(run, trace_id, [i for i in present if isinstance(i, Span)] + more_spans,
                  [i for i in present if not isinstance(i, Span)] + more_scores, previous)


@dataclass
class Settlement:
    """What an attempt leaves to write, in the transaction that lets its runs go (`write`), and
    to say once it is written (`after`)."""

    outcomes: dict[str, Delivered] = field(default_factory=dict)
    writes: list[Callable[[Any], None]] = field(default_factory=list)
    retries: dict[str, float] = field(default_factory=dict)
    spans: list[Span] = field(default_factory=list)
    report: SendReport = field(default_factory=SendReport)

    def write(self, pipe: Any) -> None:
        for one in self.writes:
            one(pipe)

    def after(self, ctx: WorkerContext) -> None:
        count_delivery(self.spans, self.report, time.time())
        for run, outcome in self.outcomes.items():
            for letter in outcome.letters:
                metrics.dead_letters.labels(letter.reason).inc(len(letter.items))
                with logs.for_run(run):
                    log.error("run %s: %d %s dead-lettered (%s): %s", run, len(letter.items), letter.kind,
                              letter.reason, letter.message[:300])
        if self.retries:
            metrics.retries.inc(len(self.retries))
            # One job for the runs this attempt failed for, when the last of them is due.
            schedule_runs(ctx.store, ctx.queue, sorted(self.retries), max(self.retries.values()), "delivery retry")


def deliver(ctx: WorkerContext, parcels: list[Parcel], keep_alive: Callable[[], None]) -> Settlement:
    """One attempt for all of `parcels`; each run's books to settle. What Langfuse accepted in the
    last request is recorded in the ledger with them, in one transaction (until then it is in
    doubt: a worker killed before that asks Langfuse before sending it again)."""
    settlement = Settlement()
    if not parcels:
        return settlement
    store = ctx.store
    span_report = ctx.delivery.send_spans([s for p in parcels for s in p.spans], keep_alive, record_later=True)
    all_scores = [s for p in parcels for s in p.scores]
    if span_report.transient is None:
        score_report = ctx.delivery.send_scores(all_scores, keep_alive, record_later=True)
    else:
        score_report = SendReport(unsent=all_scores)
    now = time.time()  # after the attempt: a Retry-After counts from the answer
    owner = {key(item): p.run for p in parcels for item in (*p.spans, *p.scores)}
    done = {*span_report.accepted, *span_report.skipped, *score_report.accepted, *score_report.skipped}
    accepted, skipped = set(span_report.accepted), set(span_report.skipped)
    unrecorded = (span_report.unrecorded or []) + (score_report.unrecorded or [])
    settlement.writes.append(lambda pipe: ctx.ledger.record(unrecorded, pipe))
    settlement.spans, settlement.report = [s for p in parcels for s in p.spans], span_report
    for p in parcels:
        mine = lambda items: [item for item in items if owner[key(item)] == p.run]  # noqa: E731
        attempts = p.previous.attempts + 1
        first_failure = p.previous.first_failure or now
        letters = [DeadLetter.new(p.run, p.trace_id, kind, mine(batch), error.reason, error.message, attempts,
                                  first_failure)
                   for kind, report in (("spans", span_report), ("scores", score_report))
                   for batch, error in report.rejected if mine(batch)]
        unsent = {"spans": mine(span_report.unsent), "scores": mine(score_report.unsent)}
        transient = _transient(span_report, score_report) if unsent["spans"] or unsent["scores"] else None
        settled = [slot(item) for item in (*p.spans, *p.scores) if key(item) in done]
        settled += [slot(item) for letter in letters for item in letter.items]
        if transient is not None and ctx.retry.gives_up(first_failure, now):
            message = f"gave up after {attempts} attempts over {now - first_failure:.0f} s: {transient.message}"
            for kind, items in unsent.items():
                if items:
                    letters.append(DeadLetter.new(p.run, p.trace_id, kind, items, RETRIES_EXHAUSTED, message,
                                                  attempts, first_failure))
                    settled += [slot(item) for item in items]
            transient = None
        outcome = Delivered(letters=letters, dead_lettered=sum(len(letter.items) for letter in letters))
        outcome.delivered = sum(1 for s in p.spans if key(s) in accepted)
        outcome.skipped = sum(1 for s in p.spans if key(s) in skipped)
        if transient is None:
            books = None
        else:
            retry_in = ctx.retry.delay(attempts, transient.retry_after)
            outcome.retry_at = settlement.retries[p.run] = now + retry_in
            books = DeliveryState(attempts=attempts, first_failure=first_failure, last_failure=now,
                                  next_attempt_at=now + retry_in, last_error=transient.message)
            with logs.for_run(p.run):
                log.warning("run %s: delivery failed (%s), attempt %d, retrying in %.1f s", p.run,
                            transient.message, attempts, retry_in)
        settlement.writes.append(lambda pipe, run=p.run, letters=letters, settled=settled, books=books: (
            ctx.dead_letters.add(letters, pipe), store.settle(pipe, run, settled),
            store.record_success(pipe, run) if books is None else store.record_failure(pipe, run, books)))
        settlement.outcomes[p.run] = outcome
    return settlement


def _transient(*reports: SendReport) -> DeliveryError | None:
    return next((r.transient for r in reports if r.transient is not None), None)


def count_delivery(spans: list[Span], report: SendReport, now: float) -> None:
    accepted = set(report.accepted)
    metrics.spans_sent.inc(len(accepted) + sum(len(batch) for batch, _ in report.rejected))
    metrics.spans_accepted.inc(len(accepted))
    for batch, error in report.rejected:
        metrics.spans_rejected.labels(error.reason).inc(len(batch))
    for span in spans:
        if key(span) in accepted:
            metrics.delivery_delay.observe(max(0.0, now - span.end_ns() / 1e9))
