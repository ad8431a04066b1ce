"""Connections to Redis and the RQ objects, all built with the project's settings, and the one
backoff that long-running processes wait with while Redis is away.

Every RQ object uses the JSON serializer (with pickle, anyone able to write to Redis could run
code in a worker) and reads jobs as `OwnJob` (which refuses any function but the worker's own).
"""

from __future__ import annotations

import random
import threading
from urllib.parse import urlsplit, urlunsplit

import redis
from rq import Queue
from rq.serializers import JSONSerializer

from codex_langfuse.ingest.keys import Keys
from codex_langfuse.ingest.own_jobs import OwnJob
from codex_langfuse.ingest.settings import Settings


def redis_client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, socket_timeout=30, socket_connect_timeout=5,
                                health_check_interval=30)


def keys(settings: Settings) -> Keys:
    return Keys(settings.key_prefix)


def queue(settings: Settings, connection: redis.Redis) -> Queue:
    return Queue(settings.queue, connection=connection, serializer=JSONSerializer, job_class=OwnJob,
                 default_timeout=settings.job_timeout)


def safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username + ':' if parts.username else ':'}***@{parts.hostname}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


class Backoff:
    """Exponential waits with jitter, from `first` up to `cap` seconds; `reset` after a success."""

    def __init__(self, first: float = 0.5, cap: float = 10.0, stop: threading.Event | None = None):
        self.first = first
        self.cap = cap
        self.current = first
        self.stop = stop or threading.Event()

    def next(self) -> float:
        delay = self.current * random.uniform(0.75, 1.25)
        self.current = min(self.current * 2, self.cap)
        return delay

    def sleep(self, seconds: float) -> bool:
        """False when stopped meanwhile."""
        return not self.stop.wait(seconds)

    def reset(self) -> None:
        self.current = self.first
