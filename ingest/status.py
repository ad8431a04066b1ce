"""`codex-langfuse status`: where everything is in the pipeline, in numbers."""

from __future__ import annotations

import time
from typing import Any

import redis
from rq import Worker
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

from codex_langfuse.ingest import connections
from codex_langfuse.ingest.deadletters import DeadLetters
from codex_langfuse.ingest.settings import Settings


def collect(settings: Settings, connection: redis.Redis | None = None) -> dict[str, Any]:
    connection = connection or connections.redis_client(settings)
    keys = connections.keys(settings)
    queue = connections.queue(settings, connection)
    now = time.time()

    stream: dict[str, Any] = {"name": settings.stream, "length": connection.xlen(settings.stream),
                              "lag": None, "pending": 0, "consumers": 0,
                              "poison": connection.xlen(keys.poison)}
    oldest_pending_ms = None
    try:
        group = next((g for g in connection.xinfo_groups(settings.stream) if g["name"].decode() == keys.group), None)
    except redis.ResponseError:
        group = None
    if group is not None:
        stream.update(lag=group.get("lag"), pending=group["pending"], consumers=group["consumers"])
        if group["pending"]:
            oldest_pending_ms = int(connection.xpending(settings.stream, keys.group)["min"].split(b"-")[0])
    unread_ms = _oldest_unread_ms(connection, settings.stream, group)
    oldest_backlog = connection.zrange(keys.backlog, 0, 0, withscores=True)
    candidates = [t for t in (
        oldest_pending_ms / 1000 if oldest_pending_ms else None,
        unread_ms / 1000 if unread_ms else None,
        oldest_backlog[0][1] if oldest_backlog else None,
    ) if t is not None]

    workers = Worker.all(queue=queue)
    return {
        "sending_to": "langfuse" if settings.langfuse_enabled else "sink",
        "sink_dir": None if settings.langfuse_enabled else str(settings.sink_dir),
        "stream": stream,
        "queue": {
            "name": settings.queue,
            "depth": queue.count,
            "in_progress": StartedJobRegistry(queue=queue).count,
            "scheduled": ScheduledJobRegistry(queue=queue).count,
            "failed_jobs": FailedJobRegistry(queue=queue).count,
        },
        "runs": {
            "open": connection.zcard(keys.active),
            "with_backlog": connection.zcard(keys.backlog),
            "retrying": connection.zcard(keys.retrying),
        },
        "dead_letters": DeadLetters(connection, keys).counts_by_reason(),
        "workers": {"alive": len(workers), "names": sorted(w.name for w in workers),
                    "busy": sum(1 for w in workers if w.get_state() == "busy")},
        "oldest_undelivered_age_seconds": round(now - min(candidates), 3) if candidates else None,
    }


def _oldest_unread_ms(connection: redis.Redis, stream: str, group: dict[str, Any] | None) -> int | None:
    """Time of the first entry no dispatcher has read yet."""
    last = group["last-delivered-id"] if group else b"0-0"
    entries = connection.xrange(stream, min=f"({last.decode()}", count=1) if last != b"0-0" else \
        connection.xrange(stream, count=1)
    return int(entries[0][0].split(b"-")[0]) if entries else None


def render(report: dict[str, Any]) -> str:
    stream, queue, runs, workers = report["stream"], report["queue"], report["runs"], report["workers"]
    lines = [
        f"sending to     {report['sending_to']}" + (f" ({report['sink_dir']})" if report["sink_dir"] else ""),
        f"stream         {stream['name']}: {stream['length']} entries, lag {stream['lag']}, "
        f"pending {stream['pending']}, poison {stream['poison']}",
        f"queue          {queue['name']}: depth {queue['depth']}, in progress {queue['in_progress']}, "
        f"scheduled {queue['scheduled']}, failed jobs {queue['failed_jobs']}",
        f"runs           open {runs['open']}, with backlog {runs['with_backlog']}, retrying {runs['retrying']}",
        f"workers        {workers['alive']} alive, {workers['busy']} busy",
    ]
    age = report["oldest_undelivered_age_seconds"]
    lines.append(f"oldest waiting {'-' if age is None else f'{age:.1f} s'}")
    if report["dead_letters"]:
        parts = ", ".join(f"{reason}: {c['letters']} letters / {c['items']} items"
                          for reason, c in sorted(report["dead_letters"].items()))
        lines.append(f"dead letters   {parts}")
    else:
        lines.append("dead letters   none")
    return "\n".join(lines)
