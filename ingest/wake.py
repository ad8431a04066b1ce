"""Waking a run: one RQ job per run that has none queued, never one per event.

A job is a wake-up for a run, not a carrier of events: it names the run and the worker folds
whatever was filed for it. Jobs name their function by its dotted path, so whoever queues them
(the dispatcher, `score`) never imports the worker side (the langfuse SDK, httpx).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rq import Queue

from codex_langfuse.ingest.retry import JOB_RETRY
from codex_langfuse.ingest.runs import RunStore

# The one function a worker runs (see `ingest.job`).
PROCESS_RUN = "codex_langfuse.ingest.job.process_run"
JOB_OPTIONS: dict[str, Any] = {"retry": JOB_RETRY, "result_ttl": 300, "failure_ttl": 7 * 86400}


def enqueue_runs(store: RunStore, queue: Queue, runs: list[str]) -> int:
    """Queue a job for each run that has none queued yet; returns how many were queued."""
    wanted = [run for run in runs if store.request_wake(run)]
    if wanted:
        queue.enqueue_many([Queue.prepare_data(PROCESS_RUN, args=(run,), description=f"process_run {run}",
                                               **JOB_OPTIONS) for run in wanted])
    return len(wanted)


def schedule_run(queue: Queue, run: str, at: datetime, why: str) -> None:
    """A job for `run` at `at` (a delivery retry): RQ's scheduler queues it then."""
    queue.enqueue_at(at, PROCESS_RUN, run, description=f"process_run {run} ({why})", **JOB_OPTIONS)
