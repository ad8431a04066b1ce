"""The RQ job: advance the woken runs (`wake`). A job is a wake-up for workers, not a carrier of events.

`process_woken` pops the runs that are due, a few dozen at a time (`advance_runs`): it takes the
lease of each that no other worker holds (one worker at a time per run, so its events are applied
in order), folds every entry filed since the run's last step, commits the new states with the
spans and scores that completed, and delivers the runs' outboxes together (their spans share
export requests). Then it lets them go, wakes again those whose next entries came meanwhile, and
pops again, until no run is due or `DRAIN_SECONDS` passed. Runs proceed in parallel on any number
of workers; a killed worker's leases expire and the next job for a run takes over from its last
commit.

Live, not batched: a step folds for at most `STEP_SECONDS` before it delivers what completed (a
run with a longer backlog is woken again for the rest), and a run that keeps writing is popped
again at a next step, so an item reaches Langfuse a step or two after the line that completed it,
whatever else the workers are doing. A step's delivery runs on a thread of its own while the next
step is read and folded (`Handover`): waiting on Langfuse and Redis overlaps folding.

Entries that come for a closed run (or after their gap was given up) are folded as late: they
never re-open it, and the run leaves the open runs either way. When a run is closed and all of
it delivered, one line says so: `run X: 14 spans, $0.0085`.

No run loops forever, and no run holds back the others of its job. A fold step that raises
(content the edge let through, a bug) is tried again `FOLD_ATTEMPTS` times, a second apart and
more; then its entries are folded one by one and those that still raise are set aside as a
`fold_failed` dead letter, so the rest of the run, its root included, is delivered. A run whose
step fails for any other reason (its books unreadable or of the wrong type) is tried again by a
job scheduled for it (`JOB_RETRY`'s intervals) and set aside after `JOB_ATTEMPTS` failures in a
row, with what it held in dead letters. Redis errors are the infrastructure's: the whole job is
tried again by RQ, its runs woken for then.
"""

from __future__ import annotations

import contextvars
import logging
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

import redis

from codex_langfuse.ingest import logs, metrics
from codex_langfuse.ingest.context import WorkerContext, context
from codex_langfuse.ingest.deadletters import FOLD_FAILED, JOB_FAILED, DeadLetter
from codex_langfuse.ingest.delivery import score_payload
from codex_langfuse.ingest.entries import Entry
from codex_langfuse.ingest.fold import FoldContext, FoldResult, abandon, close, fold, new_state, set_aside, skip_gap
from codex_langfuse.ingest.items import Span
from codex_langfuse.ingest.lease import LeaseLost
from codex_langfuse.ingest.otlp import encode_span
from codex_langfuse.ingest.outbox import Delivered, Parcel, Settlement, deliver, parcel
from codex_langfuse.ingest.retry import JOB_RETRY
from codex_langfuse.ingest.runs import Committed, Step, Taken
from codex_langfuse.ingest.state import RunState
from codex_langfuse.ingest.wake import schedule_runs, wake_runs

log = logging.getLogger("codex_langfuse.worker")

# Folding stops this long after a step started (or delivered last), and what completed is delivered.
STEP_SECONDS = 0.2
# Entries folded between two looks at the clock.
CHUNK = 256
# Runs popped per step: their spans share export requests.
RUNS_PER_STEP = 64
# A job pops for this long at most, then leaves what is due to a job of its own (so a worker asked
# to stop is not kept waiting).
DRAIN_SECONDS = 5.0
# A fold step that raises is tried this many times, a job step of a run that fails otherwise this many.
FOLD_ATTEMPTS = 3
JOB_ATTEMPTS = 3


def process_woken() -> dict[str, Any]:
    """Advance the woken runs that are due, step by step, until none is or DRAIN_SECONDS passed."""
    ctx = context()
    summary = Summary()
    deadline = time.monotonic() + DRAIN_SECONDS
    with Handover(summary) as handover:
        runs = ctx.store.pop_woken(RUNS_PER_STEP, time.time(), job_started=True)
        while runs:
            try:
                advance_runs(ctx, runs, summary, handover)
            except Exception:
                # They are no longer woken: woken again for when RQ tries this job again (`JOB_RETRY`).
                ctx.store.wake(runs, time.time() + JOB_RETRY.intervals[0], time.time())
                raise
            if time.monotonic() >= deadline:
                handover.wait()
                wake_runs(ctx.store, ctx.queue, [])  # a job of its own for what is due now, if anything is
                break
            runs = ctx.store.pop_woken(RUNS_PER_STEP, time.time())
    return summary


def process_run(run_id: str) -> dict[str, Any]:
    """Jobs queued by earlier versions name one run."""
    summary = Summary()
    with Handover(summary) as handover:
        advance_runs(context(), [run_id], summary, handover)
    return summary


class Summary(dict):
    """What a job did, in numbers (RQ keeps it as the job's result)."""

    def __init__(self) -> None:
        super().__init__(steps=0, runs=0, held_elsewhere=0, observations=0, scores=0, delivered=0, lease_lost=0,
                         fold_retries=0, step_retries=0, set_aside=0)

    def add(self, other: dict[str, int]) -> None:
        for name, count in other.items():
            self[name] = self.get(name, 0) + count


class Handover:
    """A step's delivery runs on a thread of its own while the next step is read and folded: the
    worker folds while it waits on Langfuse and Redis. One delivery at a time; the job ends once
    the last is done."""

    def __init__(self, summary: Summary):
        self.summary = summary
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="delivery")
        self.pending: Future[dict[str, int]] | None = None

    def __enter__(self) -> "Handover":
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.wait()
        finally:
            self.pool.shutdown()

    def hand(self, work: Callable[[], dict[str, int]]) -> None:
        self.wait()
        self.pending = self.pool.submit(contextvars.copy_context().run, work)

    def wait(self) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            self.summary.add(pending.result())


def advance_runs(ctx: WorkerContext, runs: list[str], summary: Summary, handover: Handover) -> None:
    """Advance the runs filed under these run keys: one step each."""
    taken = ctx.store.take(list(dict.fromkeys(runs)), ctx.settings.fold_batch)
    summary["steps"] += 1
    summary["runs"] += len(taken)
    # The holder of a run this step could not take (another worker, or this one's delivery in
    # flight) looks for new entries after letting it go, so nothing is left behind.
    summary["held_elsewhere"] += len(runs) - len(taken)
    pending: list[tuple[Taken, Step]] = []
    try:
        started = time.monotonic()
        for index, t in enumerate(taken):
            with logs.for_run(t.run):
                try:
                    pending.append((t, advance(ctx, t, started + STEP_SECONDS, summary)))
                except redis.RedisError:
                    raise  # Redis unreachable or refusing: the infrastructure's, RQ tries the job again
                except Exception as exc:  # noqa: BLE001 - this run's, not the job's
                    step_failed(ctx, t.run, t.token, exc, summary)
            if time.monotonic() - started >= STEP_SECONDS and index + 1 < len(taken):
                handover.hand(commit(ctx, pending, summary))
                pending = []
                started = time.monotonic()
        handover.hand(commit(ctx, pending, summary))
        pending = []
    finally:
        if pending:  # an error before they were committed: let them go, another job takes over
            release(ctx, [(t.run, t.token) for t, _ in pending])


def release(ctx: WorkerContext, runs: list[tuple[str, str]]) -> None:
    """Let these runs (run, lease token) go, without asking what waits for them."""
    with ctx.redis.pipeline(transaction=False) as pipe:
        for run, token in runs:
            ctx.store.finish(pipe, run, token, -1, False)
        pipe.execute()


def commit(ctx: WorkerContext, pending: list[tuple[Taken, Step]], summary: Summary
           ) -> Callable[[], dict[str, int]]:
    """Commit the steps; then what delivers them (`deliver_runs`), for the handover."""
    committed = ctx.store.commit([step for _, step in pending]) if pending else {}
    live: list[tuple[Taken, Step, RunState]] = []
    for t, step in pending:
        answer = committed[t.run]
        if isinstance(answer, Exception):
            with logs.for_run(t.run):
                step_failed(ctx, t.run, t.token, answer, summary)
            continue
        if answer is None:
            summary["lease_lost"] += 1
            with logs.for_run(t.run):
                log.warning("run %s: lease lost, another worker continues", t.run)
            continue
        live.append((t, step, step.state or t.state or new_state(t.run)))
    return lambda: deliver_runs(ctx, live, {t.run: committed[t.run] for t, _, _ in live})


def deliver_runs(ctx: WorkerContext, live: list[tuple[Taken, Step, RunState]],
                 committed: dict[str, Committed]) -> dict[str, int]:
    """Deliver the runs' outboxes, let the runs go, wake those with more to fold; the counts."""
    counts = {"delivered": 0, "lease_lost": 0}
    if not live:
        return counts
    store = ctx.store
    try:
        now = time.time()
        parcels: list[Parcel] = []
        outcomes: dict[str, Delivered] = {}
        readable = []
        for t, step, state in live:
            try:
                found = parcel(ctx, t.run, state.trace_id, committed[t.run], step.spans, step.scores, now)
            except redis.RedisError:
                raise
            except Exception as exc:  # noqa: BLE001 - its outbox unreadable: this run's fault, not the job's
                with logs.for_run(t.run):
                    step_failed(ctx, t.run, t.token, exc, counts)
                continue
            readable.append((t, step, state))
            if isinstance(found, Parcel):
                parcels.append(found)
            elif isinstance(found, Delivered):
                outcomes[t.run] = found
        live = readable
        settlement = Settlement()
        try:
            settlement = deliver(ctx, parcels, keep_alive=Renewal(ctx, {t.run: t.token for t, _, _ in live}))
        except LeaseLost as lost:
            counts["lease_lost"] += 1
            log.warning("%s: lease lost during delivery, another worker continues", lost)
        outcomes.update(settlement.outcomes)
        # The delivery's books and the runs let go, at once.
        with store.redis.pipeline(transaction=True) as pipe:
            settlement.write(pipe)
            first = len(pipe)
            for t, _, state in live:
                store.finish(pipe, t.run, t.token, state.next_seq, state.closed)
            answers = pipe.execute()[first:]
    except Exception:
        # Let them go and wake them for when RQ tries the job again; the leases would expire anyway.
        release(ctx, [(t.run, t.token) for t, _, _ in live])
        store.wake([t.run for t, _, _ in live], time.time() + JOB_RETRY.intervals[0], time.time())
        raise
    settlement.after(ctx)
    again, not_due = [], []
    for (t, step, state), (more, left) in zip(live, answers):
        outcome = outcomes.get(t.run)
        if outcome is not None:
            counts["delivered"] += outcome.delivered
            if outcome.retry_at and not outcome.attempted:
                not_due.append((t.run, outcome.retry_at))
        if step.retry_at is not None:  # its fold raised: tried again then
            schedule_runs(store, ctx.queue, [t.run], step.retry_at, "fold retry")
        elif more:
            again.append(t.run)
        elif state.closed and not left and outcome is not None and outcome.delivered:
            metrics.runs_delivered.inc()
            with logs.for_run(t.run):
                log.info("run %s: %d spans, $%.4f", t.run, state.spans, state.cost)
    for run, at in not_due:  # its delivery waits: woken again when its attempt is due
        store.wake([run], at, time.time())
    if again:
        wake_runs(store, ctx.queue, again)
    return counts


class Renewal:
    """`keep_alive` of a delivery: before a request, the job's leases must hold for its whole
    length. The last commit renewed them; they are renewed again (and a lost one stops the
    delivery) once a quarter of the lease went by, which leaves more than the request timeout
    (at most half the lease, `Settings`)."""

    def __init__(self, ctx: WorkerContext, leases: dict[str, str]):
        self.ctx = ctx
        self.leases = leases
        self.renewed = time.monotonic()

    def __call__(self) -> None:
        if time.monotonic() - self.renewed < self.ctx.settings.lease_seconds / 4:
            return
        lost = self.ctx.store.renew(self.leases)
        if lost:
            raise LeaseLost(", ".join(sorted(lost)))
        self.renewed = time.monotonic()


def advance(ctx: WorkerContext, t: Taken, deadline: float, summary: Summary) -> Step:
    """The fold step of one run: what to commit (its state None when nothing changed)."""
    store, settings = ctx.store, ctx.settings
    if t.broken is not None:
        raise t.broken
    state = t.state
    if state is None:
        state = new_state(t.run)
        if state.instance is not None:
            log.warning("run %s: this run reused run id %s, which another run used first; both are delivered "
                        "complete to trace %s, each with observations of its own", t.run, state.run_id,
                        state.trace_id)
    fctx = ctx.fold_context()
    now = time.time()
    entries: list[Entry] = t.entries
    conflicts = list(t.conflicts.values())
    step: Callable[[RunState], tuple[FoldResult, list[Entry]]] | None = None
    if entries or conflicts:
        step = lambda s: fold_until(s, entries, fctx, deadline, conflicts)  # noqa: E731
    elif t.filed:
        waiting, stale = store.waiting_after_gap(t.run, state.next_seq)
        if stale:  # copies of folded entries, or late ones: `fold` tells them apart
            entries = store.read_seqs(t.run, stale[:settings.fold_batch])
            step = lambda s: (fold(s, entries, fctx), entries)  # noqa: E731
        elif waiting is not None and state.closed:
            step = lambda s: (skip_gap(s, waiting, int(now * 1e6), fctx), [])  # noqa: E731 - nothing waits on it
        elif waiting is not None:
            if state.gap_since is None:
                return Step(t.run, t.token, state.model_copy(update={"gap_since": now}))
            if now - state.gap_since < settings.gap_timeout:
                return Step(t.run, t.token, None)
            step = lambda s: (skip_gap(s, waiting, int(now * 1e6), fctx), [])  # noqa: E731
    if step is None:
        if state.closed or not is_idle(t.last_activity, now, settings.idle_timeout):
            return Step(t.run, t.token, None)
        step = lambda s: (close(s, s.last_us or int(now * 1e6), "idle", fctx), [])  # noqa: E731
    try:
        result, entries = step(state)
        spans, scores = encoded(ctx, result)
    except redis.RedisError:
        raise
    except Exception as exc:  # noqa: BLE001 - content the edge let through, or a bug: never fatal
        failures = store.count_fault(t.run, "fold")
        log.error("run %s: folding from seq %d failed (attempt %d of %d): %s", t.run, state.next_seq,
                  failures, FOLD_ATTEMPTS, _error(exc))
        if failures < FOLD_ATTEMPTS:
            summary["fold_retries"] += 1
            return Step(t.run, t.token, None, retry_at=time.time() + failures)
        store.clear_faults(t.run, "fold")
        entries = t.entries or entries
        result, spans, scores, letters = fold_around(ctx, state, entries, conflicts, lambda s: step(s)[0], exc)
        if letters:  # before the step: written again under the same ids if the step is lost
            store.guarded(t.run, t.token, lambda pipe: ctx.dead_letters.add(letters, pipe))
        for letter in letters:
            log.error("run %s: %d entries could not be folded, kept as dead letter %s (%s): %s", t.run,
                      len(letter.items), letter.id, letter.reason, letter.message[:300])
    late = result.state.counters.late_entries - state.counters.late_entries
    if late:
        metrics.entries_late.inc(late)
        log.warning("run %s: %d entries arrived after the run was closed or given up; kept as late events",
                    t.run, late)
    result.state.spans += len(spans)
    metrics.events_folded.inc(len(entries))
    summary["observations"] += len(spans)
    summary["scores"] += len(scores)
    return Step(t.run, t.token, result.state, spans, scores, [e.seq for e in entries], result.thread_totals,
                shown=list(t.conflicts))


def fold_until(state: RunState, entries: list[Entry], fctx: FoldContext, deadline: float,
               conflicts: list[dict[str, Any]]) -> tuple[FoldResult, list[Entry]]:
    """Fold `entries` a chunk at a time until they are done or `deadline` (monotonic) passed, and
    show `conflicts`: (the result, the entries folded)."""
    total = FoldResult(state=state)
    done = 0
    while True:
        chunk = entries[done:done + CHUNK]
        result = fold(total.state, chunk, fctx, conflicts if done == 0 else ())
        total.state = result.state
        total.observations += result.observations
        total.scores += result.scores
        total.thread_totals.update(result.thread_totals)
        done += len(chunk)
        if done >= len(entries) or time.monotonic() >= deadline:
            break
    return total, entries[:done]


def encoded(ctx: WorkerContext, result: FoldResult) -> tuple[list[Span], list[dict[str, Any]]]:
    """A step's spans, encoded once (as they are stored and sent), and its scores."""
    return ([Span.encode(encode_span(o, ctx.policy)) for o in result.observations],
            [score_payload(s) for s in result.scores])


def fold_around(ctx: WorkerContext, state: RunState, entries: list[Entry], conflicts: list[dict[str, Any]],
                step: Callable[[RunState], FoldResult], error: Exception
                ) -> tuple[FoldResult, list[Span], list[dict[str, Any]], list[DeadLetter]]:
    """Fold what can be folded, one entry at a time; set aside, as one `fold_failed` dead letter,
    each entry (and the conflicts, or the close) that still raises."""
    fctx = ctx.fold_context()
    total = FoldResult(state=state)
    spans: list[Span] = []
    scores: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []

    def apply(one: Callable[[RunState], FoldResult]) -> Exception | None:
        try:
            result = one(total.state)
            more_spans, more_scores = encoded(ctx, result)
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


def step_failed(ctx: WorkerContext, run: str, token: str, error: Exception, summary: dict[str, int]) -> None:
    """A run's step failed otherwise than by folding (its books unreadable, refused by Redis, a
    bug): the other runs of the job go on; this one is tried again later, by a job scheduled for
    it, and set aside after `JOB_ATTEMPTS` failures in a row. Its lease is let go."""
    store = ctx.store
    failures = store.count_fault(run, "job")
    if failures < JOB_ATTEMPTS:
        log.error("run %s: its step failed (attempt %d of %d): %s", run, failures, JOB_ATTEMPTS, _error(error),
                  exc_info=error)
        summary["step_retries"] = summary.get("step_retries", 0) + 1
        release(ctx, [(run, token)])
        schedule_runs(store, ctx.queue, [run], time.time() + JOB_RETRY.intervals[failures - 1], "step retry")
        return
    give_up(ctx, run, error, failures)
    summary["set_aside"] = summary.get("set_aside", 0) + 1
    release(ctx, [(run, token)])


def give_up(ctx: WorkerContext, run_id: str, error: Exception, failures: int) -> None:
    """A run whose job failed `failures` times in a row: everything it holds goes to dead letters
    (the outbox as spans and scores, replayable; unfolded entries as `fold_failed`), and nobody
    works on it again."""
    store = ctx.store
    trace = new_state(run_id).trace_id
    message = f"the job failed {failures} times in a row: {_error(error)}"
    unreadable: list[dict[str, Any]] = []
    spans: list[dict[str, Any]] = []
    scores: list[dict[str, Any]] = []
    try:
        stored, scores = store.outbox(run_id, trace)
        spans = [span.decode() for span in stored]
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
