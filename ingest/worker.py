"""The RQ worker with the project's settings.

Tuned so a dead worker's job is taken over in about a minute and a half, not a quarter of an
hour: RQ requeues an abandoned job (one enqueued with `Retry`) once the worker's heartbeat
expired (worker_ttl, with RQ's own 60 s floor on the job heartbeat) and another worker on the
queue ran its maintenance pass. The scheduler runs in every worker: delivery retries are
scheduled jobs.
"""

from __future__ import annotations

import logging

from rq import SimpleWorker, Worker
from rq.serializers import JSONSerializer

from codex_langfuse.ingest import connections
from codex_langfuse.ingest.context import WorkerContext, context, use_context
from codex_langfuse.ingest.settings import Settings


def make_worker(settings: Settings, name: str | None = None) -> Worker:
    connection = connections.redis_client(settings)
    worker_class = Worker if settings.worker_class == "forking" else SimpleWorker
    return worker_class(
        [connections.queue(settings, connection)],
        name=name,
        connection=connection,
        serializer=JSONSerializer,
        worker_ttl=settings.worker_ttl,
        job_monitoring_interval=settings.job_monitoring_interval,
        maintenance_interval=settings.maintenance_interval,
    )


def run_worker(settings: Settings, burst: bool = False, name: str | None = None) -> bool:
    # Built before forking: every work horse inherits the price table and the transport setup.
    use_context(WorkerContext.build(settings))
    logging.getLogger("codex_langfuse").info("worker sending to %s", context().transport.describe())
    worker = make_worker(settings, name)
    return worker.work(burst=burst, with_scheduler=True, logging_level=logging.getLevelName(logging.getLogger().level))
