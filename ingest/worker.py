"""The RQ worker with the project's settings, kept running through outages.

Tuned so a dead worker's job is taken over in about a minute and a half, not a quarter of an
hour: RQ requeues an abandoned job (one enqueued with `Retry`) once the worker's heartbeat
expired (worker_ttl, with RQ's own 60 s floor on the job heartbeat) and another worker on the
queue ran its maintenance pass. The scheduler runs in every worker: delivery retries are
scheduled jobs. Workers run only their own job function (`ingest.own_jobs`).

At start it refuses to run without a chosen destination (`NoDestination`) or when Langfuse
refuses its keys or is not at its URL (`DestinationRefused`), instead of dead-lettering run after
run; it registers itself (`registry`) so `status` shows what the workers really do. A lost Redis
never ends it: RQ's worker gives up on a lost connection, so it is started again once Redis
answers, under the same name; the job that was cut off is taken over by the lease and the sweep.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from typing import Any

import redis
from rq import Worker
from rq.serializers import JSONSerializer
from rq.worker_registration import unregister

from codex_langfuse.ingest import connections, metrics
from codex_langfuse.ingest.context import WorkerContext, use_context
from codex_langfuse.ingest.registry import Heartbeat, Registry, describe
from codex_langfuse.ingest.own_jobs import OwnJob, OwnJobsSimpleWorker, OwnJobsWorker
from codex_langfuse.ingest.settings import Settings
from codex_langfuse.ingest.transport import DeliveryError, Transport, make_transport

log = logging.getLogger("codex_langfuse.worker")


class DestinationRefused(Exception):
    """The destination cannot work with these settings (keys refused, no Langfuse at the URL)."""


def make_worker(settings: Settings, name: str | None = None, connection: redis.Redis | None = None) -> Worker:
    connection = connection or connections.redis_client(settings)
    worker_class = OwnJobsWorker if settings.worker_class == "forking" else OwnJobsSimpleWorker
    return worker_class(
        [connections.queue(settings, connection)],
        name=name,
        connection=connection,
        serializer=JSONSerializer,
        job_class=OwnJob,
        worker_ttl=settings.worker_ttl,
        job_monitoring_interval=settings.job_monitoring_interval,
        maintenance_interval=settings.maintenance_interval,
    )


def check_destination(transport: Transport) -> str:
    """Ask the destination once. Refusals stop the worker; an unreachable Langfuse does not (an
    outage: deliveries wait and retry)."""
    try:
        answer = transport.check()
    except DeliveryError as error:
        if error.transient:
            log.warning("%s cannot be reached now (%s); starting anyway, deliveries will retry",
                        transport.describe(), error.message)
            return "unreachable"
        raise DestinationRefused(f"{transport.describe()} refused: {error.message}") from None
    return answer


def wait_for_redis(connection: redis.Redis, url: str, backoff: connections.Backoff | None = None) -> bool:
    """True once Redis answers; False when stopped (SIGTERM/SIGINT) while waiting."""
    backoff = backoff or connections.Backoff()
    while True:
        try:
            connection.ping()
            return True
        except redis.RedisError as exc:
            delay = backoff.next()
            log.warning("Redis at %s unavailable (%s); trying again in %.1f s", connections.safe_url(url), exc, delay)
            if not backoff.sleep(delay):
                return False


def run_worker(settings: Settings, burst: bool = False, name: str | None = None,
               transport: Transport | None = None) -> None:
    transport = transport or make_transport(settings)
    log.info("worker sending to %s: %s", transport.describe(), check_destination(transport))
    stop = threading.Event()
    _stop_on_signals(stop)
    connection = connections.redis_client(settings)
    if not wait_for_redis(connection, settings.redis_url, connections.Backoff(stop=stop)):
        return
    # Built before forking: every work horse inherits the price table and the transport setup.
    use_context(WorkerContext.build(settings, transport))
    name = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    heartbeat = Heartbeat(Registry(connection, connections.keys(settings)),
                          describe(settings, "worker", name, transport.describe())).start()
    level = logging.getLevelName(logging.getLogger().level)
    restarts = connections.Backoff(first=1.0, cap=30.0, stop=stop)
    try:
        while not stop.is_set():
            worker = make_worker(settings, name, connection)
            _stop_on_signals(stop, worker)
            started = time.monotonic()
            problem: Exception | None = None
            try:
                worker.work(burst=burst, with_scheduler=True, logging_level=level)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                problem = exc  # from RQ's teardown, after its loop gave up
            # RQ's loop ends on a stop signal, in burst mode when the queue is empty, and on any
            # error (a lost Redis among them): only the first two are meant to end the worker.
            if burst or stop.is_set() or worker._shutdown_requested_date is not None:
                return
            _stop_on_signals(stop)  # RQ's handlers need Redis; ours only set `stop`
            metrics.redis_reconnects.labels("worker").inc()
            log.warning("worker %s stopped working (%s); it starts again once Redis answers", name,
                        problem or "see the error above")
            if time.monotonic() - started > 60:
                restarts.reset()
            if not restarts.sleep(restarts.next()) or not wait_for_redis(connection, settings.redis_url,
                                                                        connections.Backoff(stop=stop)):
                return
            _forget(worker)
    finally:
        heartbeat.stop()


def _stop_on_signals(stop: threading.Event, worker: Worker | None = None) -> None:
    """Until RQ's `work` installs its own handlers (after it started the scheduler process), a stop
    signal sets `stop` and asks `worker`'s loop to end before its first job: else a signal in that
    window went unheeded, and the worker and its scheduler outlived a SIGTERM."""
    def on_signal(*_: Any) -> None:
        stop.set()
        if worker is not None:
            worker._stop_requested = True

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)


def _forget(worker: Worker) -> None:
    """Drop the cut-off worker's RQ registration, so one of the same name can register."""
    try:
        unregister(worker)
        worker.connection.delete(worker.key)
    except redis.RedisError:
        pass
