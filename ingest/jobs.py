"""The RQ job: advance one run. A job is a wake-up for a run, not a carrier of events.

`process_run` takes the run's lease (one worker at a time per run, so its events are applied in
order), folds every entry filed since the last step, commits the new state with the spans and
scores that completed, then delivers the run's outbox. Runs proceed in parallel on any number
of workers; a killed worker's lease expires and the next job for the run takes over from the
last commit.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

import redis
from rq import Queue, Retry

from codex_langfuse.ingest import connections
from codex_langfuse.ingest.content import ContentPolicy
from codex_langfuse.ingest.deadletters import DeadLetter, DeadLetters
from codex_langfuse.ingest.delivery import Delivery, SendReport, score_payload
from codex_langfuse.ingest.fold import FoldContext, FoldResult, RunState, close, fold, new_state, skip_gap
from codex_langfuse.ingest.keys import Keys
from codex_langfuse.ingest.ledger import Ledger, score_key
from codex_langfuse.ingest.otlp import encode_span
from codex_langfuse.ingest.pricing import PriceTable
from codex_langfuse.ingest.lease import LeaseLost
from codex_langfuse.ingest.runs import DeliveryState, RunStore
from codex_langfuse.ingest.settings import Settings, get_settings
from codex_langfuse.ingest.transport import RETRIES_EXHAUSTED, Transport, make_transport

log = logging.getLogger("codex_langfuse.worker")

# A job that crashes (worker killed, Redis hiccup) runs again; past that the dispatcher's
# sweep wakes the run up again, so no run depends on one job surviving.
JOB_RETRY = Retry(max=3, interval=[5, 30, 120])


@dataclass
class WorkerContext:
    settings: Settings
    redis: redis.Redis
    keys: Keys
    store: RunStore
    ledger: Ledger
    dead_letters: DeadLetters
    transport: Transport
    delivery: Delivery
    queue: Queue
    prices: PriceTable
    policy: ContentPolicy

    @classmethod
    def build(cls, settings: Settings, transport: Transport | None = None) -> "WorkerContext":
        connection = connections.redis_client(settings)
        keys = connections.keys(settings)
        ledger = Ledger(connection, keys, settings.ledger_ttl)
        transport = transport or make_transport(settings)
        return cls(
            settings=settings,
            redis=connection,
            keys=keys,
            store=RunStore(connection, keys, settings.lease_seconds, settings.done_ttl),
            ledger=ledger,
            dead_letters=DeadLetters(connection, keys),
            transport=transport,
            delivery=Delivery(transport, ledger, settings.batch_max_spans, settings.batch_max_bytes),
            queue=connections.queue(settings, connection),
            prices=PriceTable.load(settings.prices_file),
            policy=ContentPolicy(capture=settings.capture_content, max_field_chars=settings.max_field_chars,
                                 redact=settings.redact, extra_patterns=settings.redact_patterns),
        )

    def fold_context(self) -> FoldContext:
        return FoldContext(prices=self.prices, thread_baseline=self.store.thread_baseline,
                           trace_name=self.settings.trace_name, environment=self.settings.environment,
                           max_output_chars=self.settings.max_output_chars)


_context: WorkerContext | None = None


def context() -> WorkerContext:
    """The process's context, built on first use (a forked work horse inherits its parent's)."""
    global _context
    if _context is None:
        _context = WorkerContext.build(get_settings())
    return _context


def use_context(ctx: WorkerContext | None) -> None:
    global _context
    _context = ctx


JOB_OPTIONS: dict[str, Any] = {"retry": JOB_RETRY, "result_ttl": 300, "failure_ttl": 7 * 86400}


def enqueue_runs(store: RunStore, queue: Queue, runs: list[str]) -> int:
    """Queue a job for each run that has none queued yet; returns how many were queued."""
    wanted = [run for run in runs if store.request_wake(run)]
    if wanted:
        queue.enqueue_many([Queue.prepare_data(process_run, args=(run,), description=f"process_run {run}",
                                               **JOB_OPTIONS) for run in wanted])
    return len(wanted)


def process_run(run_id: str) -> dict[str, Any]:
    ctx = context()
    store = ctx.store
    store.clear_wake(run_id)
    token = store.acquire(run_id)
    if token is None:
        # The holder re-checks for new entries after releasing, so nothing is left behind.
        return {"run": run_id, "skipped": "another worker holds the run"}
    summary: dict[str, Any] = {"run": run_id, "observations": 0, "scores": 0}
    state: RunState | None = None
    try:
        state = fold_new_entries(ctx, run_id, token, summary)
        store.renew(run_id, token)
        deliver_outbox(ctx, run_id, state.trace_id, summary, keep_alive=lambda: store.renew(run_id, token))
    except LeaseLost:
        summary["lease_lost"] = True
        log.warning("run %s: lease lost, another worker continues", run_id)
        return summary
    finally:
        store.release(run_id, token)
    if store.has_unfolded(run_id, state.next_seq):
        enqueue_runs(store, ctx.queue, [run_id])
    else:
        store.forget_if_idle(run_id)
    return summary


def fold_new_entries(ctx: WorkerContext, run_id: str, token: str, summary: dict[str, Any]) -> RunState:
    store, settings = ctx.store, ctx.settings
    state = store.load_state(run_id) or new_state(run_id)
    budget_ends = time.monotonic() + settings.lease_seconds / 2
    while time.monotonic() < budget_ends:
        now = time.time()
        entries = store.read(run_id, state.next_seq, settings.fold_batch)
        result: FoldResult
        if entries:
            result = fold(state, entries, ctx.fold_context())
        else:
            waiting, stale = store.waiting_after_gap(run_id, state.next_seq)
            store.drop_stale(run_id, stale)
            if waiting is not None:
                if state.gap_since is None:
                    state.gap_since = now
                    store.commit(run_id, token, state, [], [], [], {})
                    break
                if now - state.gap_since < settings.gap_timeout:
                    break
                result = skip_gap(state, waiting, int(now * 1e6), ctx.fold_context())
            elif not state.closed and is_idle(store.last_activity(run_id), now, settings.idle_timeout):
                result = close(state, state.last_us or int(now * 1e6), "idle", ctx.fold_context())
            else:
                break
        spans = [encode_span(o, ctx.policy) for o in result.observations]
        scores = [score_payload(s) for s in result.scores]
        store.commit(run_id, token, result.state, spans, scores, [e.seq for e in entries], result.thread_totals)
        summary["observations"] += len(spans)
        summary["scores"] += len(scores)
        state = result.state
        store.renew(run_id, token)
    return state


def is_idle(last_activity: float | None, now: float, idle_timeout: float) -> bool:
    return last_activity is not None and now - last_activity >= idle_timeout


def backoff(settings: Settings, attempts: int, retry_after: float | None) -> float:
    """Exponential with full jitter around the step, never sooner than Langfuse asked."""
    step = min(settings.retry_cap, settings.retry_base * 2 ** max(attempts - 1, 0))
    delay = step * random.uniform(0.5, 1.5)
    return max(delay, retry_after or 0.0)


def deliver_outbox(ctx: WorkerContext, run_id: str, trace_id: str, summary: dict[str, Any],
                   keep_alive: Callable[[], None]) -> None:
    store, settings = ctx.store, ctx.settings
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
    store.mark_in_flight(run_id)
    in_doubt = previous.in_doubt or previous.in_flight
    span_report = ctx.delivery.send_spans(trace_id, spans, in_doubt=in_doubt, keep_alive=keep_alive)
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
    settled_spans = span_report.accepted + span_report.skipped + [s["spanId"] for b, _ in span_report.rejected for s in b]
    done_scores = set(score_report.accepted + score_report.skipped)
    settled_scores = [s["id"] for s in scores if score_key(s) in done_scores]
    settled_scores += [s["id"] for b, _ in score_report.rejected for s in b]
    retry_in = None
    with ctx.redis.pipeline(transaction=True) as pipe:
        if transient is not None and now - first_failure >= settings.retry_for:
            message = f"gave up after {attempts} attempts over {now - first_failure:.0f} s: {transient.message}"
            if span_report.unsent:
                letters.append(DeadLetter.new(run_id, trace_id, "spans", span_report.unsent, RETRIES_EXHAUSTED,
                                              message, attempts, first_failure))
                settled_spans += [s["spanId"] for s in span_report.unsent]
            if score_report.unsent:
                letters.append(DeadLetter.new(run_id, trace_id, "scores", score_report.unsent, RETRIES_EXHAUSTED,
                                              message, attempts, first_failure))
                settled_scores += [s["id"] for s in score_report.unsent]
            transient = None
        ctx.dead_letters.add(letters, pipe)
        store.settle(pipe, run_id, settled_spans, settled_scores)
        if transient is None:
            store.record_success(pipe, run_id)
        else:
            retry_in = backoff(settings, attempts, transient.retry_after)
            store.record_failure(pipe, run_id, DeliveryState(
                attempts=attempts, first_failure=first_failure, last_failure=now, next_attempt_at=now + retry_in,
                last_error=transient.message, in_doubt=transient.in_doubt or in_doubt,
            ))
        pipe.execute()
    summary.update(delivered=len(span_report.accepted), skipped=len(span_report.skipped),
                   dead_lettered=sum(len(letter.items) for letter in letters))
    if retry_in is not None:
        summary["retry_in"] = retry_in
        log.warning("run %s: delivery failed (%s), attempt %d, retrying in %.1f s",
                    run_id, transient.message if transient else "", attempts, retry_in)
        # RQ's scheduler keeps whole seconds (it truncates): round up, never run early.
        at = datetime.fromtimestamp(math.ceil(now + retry_in), tz=timezone.utc)
        ctx.queue.enqueue_at(at, process_run, run_id, description=f"process_run {run_id} (delivery retry)",
                             **JOB_OPTIONS)
    for letter in letters:
        log.error("run %s: %d %s dead-lettered (%s): %s", run_id, len(letter.items), letter.kind, letter.reason,
                  letter.message[:300])
