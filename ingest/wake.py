"""Waking runs: a run due for a worker is put in one sorted set, `woken`, by when it is due; one
RQ job at a time is queued to work through it, never one per event or per run.

A job is a wake-up for workers, not a carrier of events: the worker that takes it pops the runs
that are due, the longest waiting first, folds whatever was filed for them and delivers them
together, and goes on popping while runs are due (`job.process_woken`). The first pop frees the
`drain` flag, so runs woken after that get a job of their own, which any free worker takes: as
many workers work as there are runs to work on. A delivery retry wakes its runs at a later time
and schedules a job for then. Jobs name their function by its dotted path, so whoever queues
them (the dispatcher, `score`) never imports the worker side (the langfuse SDK, httpx).
"""

from __future__ import annotations

import time
from typing import Any

from rq import Queue

from codex_langfuse.ingest.retry import JOB_RETRY, not_before
from codex_langfuse.ingest.runs import RunStore

# The function a worker runs (see `ingest.job`); `process_run` (one run) is what jobs queued by
# earlier versions name.
PROCESS_WOKEN = "codex_langfuse.ingest.job.process_woken"
PROCESS_RUN = "codex_langfuse.ingest.job.process_run"
JOB_OPTIONS: dict[str, Any] = {"retry": JOB_RETRY, "result_ttl": 300, "failure_ttl": 7 * 86400}


def wake_runs(store: RunStore, queue: Queue, runs: list[str]) -> int:
    """Wake `runs` now, and queue a job unless one is queued already; returns the jobs queued."""
    now = time.time()
    return queue_job(queue) if store.wake(runs, now, now) else 0


def queue_job(queue: Queue) -> int:
    """Queue a job for the woken runs (the caller found none queued); returns 1."""
    queue.enqueue_many([Queue.prepare_data(PROCESS_WOKEN, description="process_woken", **JOB_OPTIONS)])
    return 1


def schedule_runs(store: RunStore, queue: Queue, runs: list[str], at: float, why: str) -> None:
    """Wake `runs` at `at` (a delivery retry), with a job then: RQ's scheduler queues it."""
    store.wake(runs, at, time.time())
    queue.enqueue_at(not_before(at), PROCESS_WOKEN, description=f"process_woken ({why})", **JOB_OPTIONS)
