"""Delivering a run's outbox: the spans and scores its fold steps completed, sent exactly once.

One attempt sends what the ledger does not hold yet (`delivery`), then settles the books in one
transaction: what Langfuse accepted or refused leaves the outbox, refusals become dead letters,
and a transient failure records the streak and schedules the next attempt as `retry` decides.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from codex_langfuse.ingest import metrics
from codex_langfuse.ingest.context import WorkerContext
from codex_langfuse.ingest.deadletters import DeadLetter
from codex_langfuse.ingest.delivery import SendReport
from codex_langfuse.ingest.items import ledger_key, slot
from codex_langfuse.ingest.retry import not_before
from codex_langfuse.ingest.runs import DeliveryState
from codex_langfuse.ingest.transport import RETRIES_EXHAUSTED
from codex_langfuse.ingest.wake import schedule_run

log = logging.getLogger("codex_langfuse.worker")


def deliver_outbox(ctx: WorkerContext, run_id: str, trace_id: str, summary: dict[str, Any],
                   keep_alive: Callable[[], None]) -> None:
    store = ctx.store
    previous = store.delivery_state(run_id)
    now = time.time()
    if previous.next_attempt_at and previous.next_attempt_at > now:
        # Not before Langfuse asked (Retry-After) or the backoff allows: the scheduled job
        # delivers then, or, if it was lost, the dispatcher's sweep wakes the run afterwards.
        summary["retry_at"] = previous.next_attempt_at
        return
    spans, scores = store.outbox(run_id)
    if not spans and not scores:
        return
    span_report = ctx.delivery.send_spans(trace_id, spans, keep_alive=keep_alive)
    if span_report.transient is None:
        score_report = ctx.delivery.send_scores(trace_id, scores, keep_alive=keep_alive)
    else:
        score_report = SendReport(unsent=scores)
    transient = span_report.transient or score_report.transient
    now = time.time()  # after the attempt: a Retry-After counts from the answer
    attempts = previous.attempts + 1
    first_failure = previous.first_failure or now
    letters = [
        DeadLetter.new(run_id, trace_id, "spans", batch, error.reason, error.message, attempts, first_failure)
        for batch, error in span_report.rejected
    ] + [
        DeadLetter.new(run_id, trace_id, "scores", batch, error.reason, error.message, attempts, first_failure)
        for batch, error in score_report.rejected
    ]
    done = {*span_report.accepted, *span_report.skipped, *score_report.accepted, *score_report.skipped}
    settled = [slot(item) for item in (*spans, *scores) if ledger_key(item) in done]
    settled += [slot(item) for report in (span_report, score_report) for batch, _ in report.rejected for item in batch]
    retry_in = None
    with ctx.redis.pipeline(transaction=True) as pipe:
        if transient is not None and ctx.retry.gives_up(first_failure, now):
            message = f"gave up after {attempts} attempts over {now - first_failure:.0f} s: {transient.message}"
            if span_report.unsent:
                letters.append(DeadLetter.new(run_id, trace_id, "spans", span_report.unsent, RETRIES_EXHAUSTED,
                                              message, attempts, first_failure))
                settled += [slot(item) for item in span_report.unsent]
            if score_report.unsent:
                letters.append(DeadLetter.new(run_id, trace_id, "scores", score_report.unsent, RETRIES_EXHAUSTED,
                                              message, attempts, first_failure))
                settled += [slot(item) for item in score_report.unsent]
            transient = None
        ctx.dead_letters.add(letters, pipe)
        store.settle(pipe, run_id, settled)
        if transient is None:
            store.record_success(pipe, run_id)
        else:
            retry_in = ctx.retry.delay(attempts, transient.retry_after)
            store.record_failure(pipe, run_id, DeliveryState(
                attempts=attempts, first_failure=first_failure, last_failure=now, next_attempt_at=now + retry_in,
                last_error=transient.message,
            ))
        pipe.execute()
    summary.update(delivered=len(span_report.accepted), skipped=len(span_report.skipped),
                   dead_lettered=sum(len(letter.items) for letter in letters))
    count_delivery(spans, span_report, letters, now)
    if retry_in is not None:
        metrics.retries.inc()
        summary["retry_in"] = retry_in
        log.warning("run %s: delivery failed (%s), attempt %d, retrying in %.1f s",
                    run_id, transient.message if transient else "", attempts, retry_in)
        schedule_run(ctx.queue, run_id, not_before(now + retry_in), "delivery retry")
    for letter in letters:
        log.error("run %s: %d %s dead-lettered (%s): %s", run_id, len(letter.items), letter.kind, letter.reason,
                  letter.message[:300])


def count_delivery(spans: list[dict[str, Any]], report: SendReport, letters: list[DeadLetter], now: float) -> None:
    accepted = set(report.accepted)
    metrics.spans_sent.inc(len(accepted) + sum(len(batch) for batch, _ in report.rejected))
    metrics.spans_accepted.inc(len(accepted))
    for batch, error in report.rejected:
        metrics.spans_rejected.labels(error.reason).inc(len(batch))
    for letter in letters:
        metrics.dead_letters.labels(letter.reason).inc(len(letter.items))
    for span in spans:
        if ledger_key(span) in accepted:
            metrics.delivery_delay.observe(max(0.0, now - int(span["endTimeUnixNano"]) / 1e9))
