"""Connections to Redis and the RQ objects, all built with the project's settings.

Every RQ object uses the JSON serializer: with pickle, anyone able to write to Redis could run
code in a worker.
"""

from __future__ import annotations

import redis
from rq import Queue
from rq.serializers import JSONSerializer

from codex_langfuse.ingest.keys import Keys
from codex_langfuse.ingest.settings import Settings


def redis_client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, socket_timeout=30, socket_connect_timeout=5,
                                health_check_interval=30)


def keys(settings: Settings) -> Keys:
    return Keys(settings.key_prefix)


def queue(settings: Settings, connection: redis.Redis) -> Queue:
    return Queue(settings.queue, connection=connection, serializer=JSONSerializer,
                 default_timeout=settings.job_timeout)
