"""Waking runs: one RQ job for the runs that have none queued, never one per event.

A job is a wake-up for runs, not a carrier of events: it names its runs and the worker folds
whatever was filed for them. The runs woken together share a job (up to `RUNS_PER_JOB`): a
worker's cost per job (RQ's own bookkeeping, the export requests) is paid once for all of them.
Jobs name their function by its dotted path, so whoever queues them (the dispatcher, `score`)
never imports the worker side (the langfuse SDK, httpx).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rq import Queue

from codex_langfuse.ingest.retry import JOB_RETRY
from codex_langfuse.ingest.runs import RunStore

# The function a worker runs (see `ingest.job`); `process_run` (one run) is what jobs queued by
# earlier versions name.
PROCESS_RUNS = "codex_langfuse.ingest.job.process_runs"
JOB_OPTIONS: dict[str, Any] = {"retry": JOB_RETRY, "result_ttl": 300, "failure_ttl": 7 * 86400}
# Enough to spread a dispatcher's batch (500 entries) over a few jobs only when its runs are many.
RUNS_PER_JOB = 64


def enqueue_runs(store: RunStore, queue: Queue, runs: list[str]) -> int:
    """Queue jobs for the runs that have none queued yet; returns how many runs were woken."""
    wanted = store.request_wakes(runs)
    if wanted:
        queue.enqueue_many([Queue.prepare_data(PROCESS_RUNS, args=(chunk,), description=_describe(chunk),
                                               **JOB_OPTIONS)
                            for chunk in (wanted[i:i + RUNS_PER_JOB] for i in range(0, len(wanted), RUNS_PER_JOB))])
    return len(wanted)


def schedule_runs(queue: Queue, runs: list[str], at: datetime, why: str) -> None:
    """A job for `runs` at `at` (a delivery retry): RQ's scheduler queues it then."""
    queue.enqueue_at(at, PROCESS_RUNS, runs, description=f"{_describe(runs)} ({why})", **JOB_OPTIONS)


def _describe(runs: list[str]) -> str:
    """How RQ's log names the job: `process_run <run key>` for one run (`logs` reads its run id
    from there), `process_runs <n> runs: <run keys>` for more."""
    if len(runs) == 1:
        return f"process_run {runs[0]}"
    return f"process_runs {len(runs)} runs: {', '.join(runs[:5])}" + (", ..." if len(runs) > 5 else "")
