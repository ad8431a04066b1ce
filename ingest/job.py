"""The RQ job: advance one run. A job is a wake-up for a run, not a carrier of events.

`process_run` takes the run's lease (one worker at a time per run, so its events are applied in
order), folds every entry filed since the last step, commits the new state with the spans and
scores that completed, then delivers the run's outbox. Runs proceed in parallel on any number
of workers; a killed worker's lease expires and the next job for the run takes over from the
last commit.

Entries that come for a closed run (or after their gap was given up) are folded as late: they
never re-open it, and the run leaves the open runs either way. When a run is closed and all of
it delivered, one line says so: `run X: 14 spans, $0.0085`.

No run loops forever. A fold step that raises (content the edge let through, a bug) is tried
again `FOLD_ATTEMPTS` times, a second apart and more; then its entries are folded one by one and
those that still raise are set aside as a `fold_failed` dead letter, so the rest of the run, its
root included, is delivered. A job that keeps failing for any other reason (Redis errors aside:
those are the infrastructure's, retried) sets the run aside after `JOB_ATTEMPTS` failures in a
row, with what it held in dead letters.
"""

from __future__ import annotations

import logging
import time
import traceback
from typing import Any, Callable

import redis

from codex_langfuse.ingest import logs, metrics
from codex_langfuse.ingest.context import WorkerContext, context
from codex_langfuse.ingest.deadletters import FOLD_FAILED, JOB_FAILED, DeadLetter
from codex_langfuse.ingest.delivery import score_payload
from codex_langfuse.ingest.entries import Entry
from codex_langfuse.ingest.fold import FoldResult, RunState, abandon, close, fold, new_state, set_aside, skip_gap
from codex_langfuse.ingest.lease import LeaseLost
from codex_langfuse.ingest.otlp import encode_span
from codex_langfuse.ingest.outbox import deliver_outbox
from codex_langfuse.ingest.retry import not_before
from codex_langfuse.ingest.wake import enqueue_runs, schedule_run

log = logging.getLogger("codex_langfuse.worker")

FOLD_ATTEMPTS = 3
JOB_ATTEMPTS = 3


def process_run(run_id: str) -> dict[str, Any]:
    """Advance the run filed under run key `run_id`."""
    with logs.for_run(run_id):
        return _process_run(run_id)


def _process_run(run_id: str) -> dict[str, Any]:
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
    except redis.RedisError:
        raise  # Redis unreachable or refusing: RQ retries the job, the sweep wakes the run later
    except Exception as exc:  # noqa: BLE001 - counted; past JOB_ATTEMPTS the run is set aside
        failures = store.count_fault(run_id, "job")
        if failures < JOB_ATTEMPTS:
            raise
        give_up(ctx, run_id, exc, failures)
        summary["set_aside"] = True
        return summary
    finally:
        store.release(run_id, token)
    if state.closed:
        store.leave_active(run_id)
        if summary.get("delivered") and not store.has_outbox(run_id):
            metrics.runs_delivered.inc()
            log.info("run %s: %d spans, $%.4f", run_id, state.spans, state.cost)
    if "fold_retry" in summary:
        return summary  # its next attempt is scheduled
    if store.has_unfolded(run_id, state.next_seq):
        enqueue_runs(store, ctx.queue, [run_id])
    else:
        store.forget_if_idle(run_id)
    return summary


def fold_new_entries(ctx: WorkerContext, run_id: str, token: str, summary: dict[str, Any]) -> RunState:
    store, settings = ctx.store, ctx.settings
    state = store.load_state(run_id)
    if state is None:
        state = new_state(run_id)
        if state.instance is not None:
            log.warning("run %s: this run reused run id %s, which another run used first; both are delivered "
                        "complete to trace %s, each with observations of its own", run_id, state.run_id,
                        state.trace_id)
    budget_ends = time.monotonic() + settings.lease_seconds / 2
    while time.monotonic() < budget_ends:
        now = time.time()
        waiting = store.read(run_id, state.next_seq, settings.fold_batch)
        entries, conflicts = waiting.entries, list(waiting.conflicts.values())
        if entries or conflicts:
            step: Callable[[RunState], FoldResult] = lambda s: fold(s, entries, ctx.fold_context(), conflicts)
        else:
            waiting_seq, stale = store.waiting_after_gap(run_id, state.next_seq)
            if stale:  # copies of folded entries, or late ones: `fold` tells them apart
                entries = store.read_seqs(run_id, stale[:settings.fold_batch])
                step = lambda s: fold(s, entries, ctx.fold_context())
            elif waiting_seq is not None and state.closed:
                step = lambda s: skip_gap(s, waiting_seq, int(now * 1e6), ctx.fold_context())  # nothing waits on it
            elif waiting_seq is not None:
                if state.gap_since is None:
                    state.gap_since = now
                    store.commit(run_id, token, state, [], [], [], {})
                    break
                if now - state.gap_since < settings.gap_timeout:
                    break
                step = lambda s: skip_gap(s, waiting_seq, int(now * 1e6), ctx.fold_context())
            elif not state.closed and is_idle(store.last_activity(run_id), now, settings.idle_timeout):
                step = lambda s: close(s, s.last_us or int(now * 1e6), "idle", ctx.fold_context())
            else:
                break
        try:
            result, spans, scores = encoded(ctx, step(state))
            letters: list[DeadLetter] = []
        except redis.RedisError:
            raise
        except Exception as exc:  # noqa: BLE001 - content the edge let through, or a bug: never fatal
            failures = store.count_fault(run_id, "fold")
            log.error("run %s: folding from seq %d failed (attempt %d of %d): %s", run_id, state.next_seq,
                      failures, FOLD_ATTEMPTS, _error(exc))
            if failures < FOLD_ATTEMPTS:
                schedule_run(ctx.queue, run_id, not_before(time.time() + failures), "fold retry")
                summary["fold_retry"] = failures
                break
            store.clear_faults(run_id, "fold")
            result, spans, scores, letters = fold_around(ctx, state, entries, conflicts, step, exc)
        late = result.state.counters.late_entries - state.counters.late_entries
        if late:
            metrics.entries_late.inc(late)
            log.warning("run %s: %d entries arrived after the run was closed or given up; kept as late events",
                        run_id, late)
        result.state.spans += len(spans)
        store.commit(run_id, token, result.state, spans, scores, [e.seq for e in entries], result.thread_totals,
                     shown=waiting.conflicts, also=lambda pipe: ctx.dead_letters.add(letters, pipe))
        metrics.events_folded.inc(len(entries))
        for letter in letters:
            log.error("run %s: %d entries could not be folded, kept as dead letter %s (%s): %s", run_id,
                      len(letter.items), letter.id, letter.reason, letter.message[:300])
        summary["observations"] += len(spans)
        summary["scores"] += len(scores)
        state = result.state
        store.renew(run_id, token)
    return state


def encoded(ctx: WorkerContext, result: FoldResult) -> tuple[FoldResult, list[dict[str, Any]], list[dict[str, Any]]]:
    return (result, [encode_span(o, ctx.policy) for o in result.observations],
            [score_payload(s) for s in result.scores])


def fold_around(ctx: WorkerContext, state: RunState, entries: list[Entry], conflicts: list[dict[str, Any]],
                step: Callable[[RunState], FoldResult], error: Exception
                ) -> tuple[FoldResult, list[dict[str, Any]], list[dict[str, Any]], list[DeadLetter]]:
    """Fold what can be folded, one entry at a time; set aside, as one `fold_failed` dead letter,
    each entry (and the conflicts, or the close) that still raises."""
    fctx = ctx.fold_context()
    total = FoldResult(state=state)
    spans: list[dict[str, Any]] = []
    scores: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []

    def apply(one: Callable[[RunState], FoldResult]) -> Exception | None:
        try:
            result, more_spans, more_scores = encoded(ctx, one(total.state))
        except redis.RedisError:
            raise
        except Exception as exc:  # noqa: BLE001
            return exc
        total.state = result.state
        total.observations += result.observations
        total.scores += result.scores
        total.thread_totals.update(result.thread_totals)
        spans.extend(more_spans)
        scores.extend(more_scores)
        return None

    if not entries and not conflicts:
        if apply(step) is not None:  # closing or skipping a gap raised: the run ends here, without its root
            total.state = abandon(total.state, f"fold failed: {_error(error)}")
            failed.append({"run": state.run_id, "step": "close", "error": _error(error)})
    for entry in entries:
        problem = apply(lambda s, entry=entry: fold(s, [entry], fctx))
        if problem is None:
            continue
        failed.append({**entry.model_dump(), "error": _error(problem)})
        total.state = set_aside(total.state, entry)
        if entry.kind == "end" and not total.state.closed:
            closing = apply(lambda s, at=entry.ts: close(s, at, "fold_failed", fctx))
            if closing is not None:
                total.state = abandon(total.state, f"fold failed: {_error(closing)}")
    if conflicts and apply(lambda s: fold(s, [], fctx, conflicts)) is not None:
        failed += [{"conflict": conflict, "error": "showing it failed"} for conflict in conflicts]
    letters = []
    if failed:
        letters.append(DeadLetter.new(state.run_id, state.trace_id, "entries", failed, FOLD_FAILED,
                                      f"folding raised {_error(error)}", attempts=FOLD_ATTEMPTS))
    return total, spans, scores, letters


def give_up(ctx: WorkerContext, run_id: str, error: Exception, failures: int) -> None:
    """A run whose job failed `failures` times in a row: everything it holds goes to dead letters
    (the outbox as spans and scores, replayable; unfolded entries as `fold_failed`), and nobody
    works on it again."""
    store = ctx.store
    trace = new_state(run_id).trace_id
    message = f"the job failed {failures} times in a row: {_error(error)}"
    unreadable: list[dict[str, Any]] = []
    try:
        spans, scores = store.outbox(run_id)
    except ValueError:  # not JSON: kept as it is, with the entries
        spans, scores = [], []
        unreadable = [{"outbox": slot, "raw": raw} for slot, raw in store.raw_outbox(run_id).items()]

    def letters(entries: list[dict[str, Any]]) -> Callable[[Any], None]:
        kept = [DeadLetter.new(run_id, trace, kind, items, JOB_FAILED, message, attempts=failures)
                for kind, items in (("spans", spans), ("scores", scores)) if items]
        entries = entries + unreadable
        if entries:
            kept.append(DeadLetter.new(run_id, trace, "entries", entries, FOLD_FAILED, message, attempts=failures))
        return lambda pipe: ctx.dead_letters.add(kept, pipe)

    store.set_aside(run_id, letters)
    log.error("run %s set aside: %s\n%s", run_id, message, "".join(traceback.format_exception(error))[-3000:])


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:1000]


def is_idle(last_activity: float | None, now: float, idle_timeout: float) -> bool:
    return last_activity is not None and now - last_activity >= idle_timeout
