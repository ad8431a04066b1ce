"""Workers run their own jobs and nothing else.

RQ imports and calls whatever dotted name a job holds, imports its callbacks and sends its
webhooks: whoever can write RQ's keys in Redis could queue `subprocess.getoutput` and run it as
the worker, next to the Langfuse secret key. The JSON serializer closes pickle, not this.

So every queue and worker of this project reads jobs as `OwnJob`, which checks a job before any
of it is imported: its function must be one of `ALLOWED`, called with what it takes (nothing; one
run key, a run id or `<run id>/<inst>`, for jobs queued by earlier versions) and nothing else, with no instance, callbacks or webhooks. A job that is not
is failed with that reason (`ForeignJob`, in the failed-job registry), never retried, its
callbacks never imported and its webhooks never sent, and the worker logs it as a security event
(`codex_langfuse.security`).
Redis ACLs (`ingest.acl`) keep runners from writing RQ's keys in the first place; this holds
even when they are not set up.
"""

from __future__ import annotations

import logging
from typing import Any

from rq import SimpleWorker, Worker
from rq.job import Job

from codex_langfuse.ingest.wake import PROCESS_RUN, PROCESS_WOKEN
from codex_langfuse.ingest.entries import is_run_key

# function -> how many run keys it is called with
ALLOWED = {PROCESS_WOKEN: 0, PROCESS_RUN: 1}

security_log = logging.getLogger("codex_langfuse.security")


class ForeignJob(Exception):
    """A job this worker does not run; the message says why."""


class OwnJob(Job):
    def refusal(self) -> str | None:
        """Why this job is not one of ours, or None when it is. Imports nothing."""
        try:
            name, instance, args, kwargs = self.func_name, self.instance, self.args, self.kwargs
        except Exception as exc:  # noqa: BLE001 - unreadable data is a refusal, not a crash
            return f"its data cannot be read ({type(exc).__name__})"
        if name not in ALLOWED:
            return f"function {str(name)[:200]!r} is not one this worker runs ({', '.join(sorted(ALLOWED))})"
        if instance is not None:
            return "it names an instance to call the function on"
        wanted = ALLOWED[name]
        if kwargs or not isinstance(args, (list, tuple)) or len(args) != wanted or not all(map(is_run_key, args)):
            return "it takes no arguments" if wanted == 0 else "its arguments are not one run key"
        if self._success_callback_name or self._failure_callback_name or self._stopped_callback_name:
            return "it carries callbacks"
        if self.webhooks:
            return "it carries webhooks"
        return None

    @property
    def func(self) -> Any:
        reason = self.refusal()
        if reason is not None:
            raise ForeignJob(f"refused: {reason}")
        return super().func

    # Our jobs have no callbacks and no webhooks: those of anyone else's are never imported or sent.
    @property
    def success_callback(self) -> None:
        return None

    @property
    def failure_callback(self) -> None:
        return None

    @property
    def stopped_callback(self) -> None:
        return None

    def send_webhooks(self, *args: Any, **kwargs: Any) -> None:
        return None

    @property
    def should_retry(self) -> bool:
        return self.refusal() is None and super().should_retry


class _Guard:
    """Logs a foreign job as a security event; `OwnJob.func` then fails it."""

    def perform_job(self, job: Job, queue: Any, execution: Any) -> bool:
        reason = job.refusal() if isinstance(job, OwnJob) else "not read as this project's job class"
        if reason is not None:
            security_log.error("security: refused job %s on queue %s: %s (description %r, enqueued at %s)",
                               job.id, job.origin, reason, str(job.description)[:200], job.enqueued_at)
        return super().perform_job(job, queue, execution)  # type: ignore[misc]


class OwnJobsWorker(_Guard, Worker):
    """Forks a work horse per job; runs only `ALLOWED` functions."""


class OwnJobsSimpleWorker(_Guard, SimpleWorker):
    """Runs jobs in its own process; only `ALLOWED` functions."""
