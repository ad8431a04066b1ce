"""The RQ job: advance one run. A job is a wake-up for a run, not a carrier of events.

`process_run` takes the run's lease (one worker at a time per run, so its events are applied in
order), folds every entry filed since the last step, commits the new state with the spans and
scores that completed, then delivers the run's outbox. Runs proceed in parallel on any number
of workers; a killed worker's lease expires and the next job for the run takes over from the
last commit.

Entries that come for a closed run (or after their gap was given up) are folded as late: they
never re-open it, and the run leaves the open runs either way. When a run is closed and all of
it delivered, one line says so: `run X: 14 spans, $0.0085`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from codex_langfuse.ingest import logs, metrics
from codex_langfuse.ingest.context import WorkerContext, context
from codex_langfuse.ingest.delivery import score_payload
from codex_langfuse.ingest.fold import FoldResult, RunState, close, fold, new_state, skip_gap
from codex_langfuse.ingest.lease import LeaseLost
from codex_langfuse.ingest.otlp import encode_span
from codex_langfuse.ingest.outbox import deliver_outbox
from codex_langfuse.ingest.wake import enqueue_runs

log = logging.getLogger("codex_langfuse.worker")


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
    finally:
        store.release(run_id, token)
    if state.closed:
        store.leave_active(run_id)
        if summary.get("delivered") and not store.has_outbox(run_id):
            metrics.runs_delivered.inc()
            log.info("run %s: %d spans, $%.4f", run_id, state.spans, state.cost)
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
        entries = store.read(run_id, state.next_seq, settings.fold_batch)
        result: FoldResult
        if entries:
            result = fold(state, entries, ctx.fold_context())
        else:
            waiting, stale = store.waiting_after_gap(run_id, state.next_seq)
            if stale:  # copies of folded entries, or late ones: `fold` tells them apart
                entries = store.read_seqs(run_id, stale[:settings.fold_batch])
                result = fold(state, entries, ctx.fold_context())
            elif waiting is not None and state.closed:
                result = skip_gap(state, waiting, int(now * 1e6), ctx.fold_context())  # nothing waits on it
            elif waiting is not None:
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
        late = result.state.counters.late_entries - state.counters.late_entries
        if late:
            metrics.entries_late.inc(late)
            log.warning("run %s: %d entries arrived after the run was closed or given up; kept as late events",
                        run_id, late)
        result.state.spans += len(spans)
        store.commit(run_id, token, result.state, spans, scores, [e.seq for e in entries], result.thread_totals)
        metrics.events_folded.inc(len(entries))
        summary["observations"] += len(spans)
        summary["scores"] += len(scores)
        state = result.state
        store.renew(run_id, token)
    return state


def is_idle(last_activity: float | None, now: float, idle_timeout: float) -> bool:
    return last_activity is not None and now - last_activity >= idle_timeout
