"""`codex-langfuse status`: where everything is in the pipeline, in numbers, and who works on it.

Workers and dispatchers are those whose heartbeat is alive (`registry`), each with the destination
and settings it registered at start: what the back end really does, not what the caller's own
environment says. `check` turns a report into the problems a health probe fails on.
"""

from __future__ import annotations

import time
from typing import Any

import redis
from rq import Worker
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

from codex_langfuse.ingest import connections
from codex_langfuse.ingest.deadletters import DeadLetters
from codex_langfuse.ingest.registry import Registry
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

    processes = Registry(connection, keys).alive()
    workers = [p for p in processes if p.get("role") == "worker"]
    dispatchers = [p for p in processes if p.get("role") == "dispatcher"]
    busy = _busy(connection, queue, workers)
    for worker in workers:
        worker["busy"] = worker["name"] in busy
    destinations = sorted({w.get("destination") or "?" for w in workers})
    dead_letters = DeadLetters(connection, keys)
    return {
        "sending_to": destinations,
        "stream": stream,
        "queue": {
            "name": settings.queue,
            "depth": queue.count,
            "in_progress": StartedJobRegistry(queue=queue).count,
            "scheduled": ScheduledJobRegistry(queue=queue).count,
            "failed_jobs": FailedJobRegistry(queue=queue).count,
        },
        "runs": {
            "waiting": connection.zcount(keys.woken, "-inf", now),  # due for a worker, none on them yet
            "open": connection.zcard(keys.active),
            "with_backlog": connection.zcard(keys.backlog),
            "retrying": connection.zcard(keys.retrying),
            "reused_run_ids": connection.zcard(keys.reused),
        },
        "dead_letters": dead_letters.counts_by_reason(),
        "dead_letters_last_failure": dead_letters.newest(),
        "workers": {"alive": len(workers), "busy": len(busy), "names": [w["name"] for w in workers],
                    "registered": workers},
        "dispatchers": {"alive": len(dispatchers), "names": [d["name"] for d in dispatchers],
                        "consumers": stream["consumers"]},
        "oldest_undelivered_age_seconds": round(now - min(candidates), 3) if candidates else None,
        "time": now,
    }


def _busy(connection: redis.Redis, queue: Any, workers: list[dict[str, Any]]) -> set[str]:
    """Names of live workers RQ says are in a job (RQ's own view alone keeps a killed one busy)."""
    busy = set()
    for entry in workers:
        worker = Worker.find_by_key(f"{Worker.redis_worker_namespace_prefix}{entry['name']}", connection=connection,
                                    serializer=queue.serializer)
        if worker is not None and worker.get_state() == "busy":
            busy.add(entry["name"])
    return busy


def check(report: dict[str, Any], max_age: float, window: float) -> list[str]:
    """What a health probe fails on, one line each; empty when healthy."""
    problems = []
    if not report["workers"]["alive"]:
        problems.append("no live worker: nothing delivers (start `codex-langfuse worker`)")
    if not report["dispatchers"]["alive"]:
        problems.append("no live dispatcher: nothing reads the stream (start `codex-langfuse dispatch`)")
    if len(report["sending_to"]) > 1:
        problems.append(f"workers send to different destinations: {', '.join(report['sending_to'])}")
    last = report.get("dead_letters_last_failure")
    if last is not None and report["time"] - last <= window:
        problems.append(f"dead letters are growing: the latest {report['time'] - last:.0f} s ago "
                        f"(see `codex-langfuse replay --dry-run`)")
    age = report["oldest_undelivered_age_seconds"]
    if age is not None and age > max_age:
        problems.append(f"the oldest undelivered event waits for {age:.0f} s (more than {max_age:.0f} s)")
    return problems


def _oldest_unread_ms(connection: redis.Redis, stream: str, group: dict[str, Any] | None) -> int | None:
    """Time of the first entry no dispatcher has read yet."""
    last = group["last-delivered-id"] if group else b"0-0"
    entries = connection.xrange(stream, min=f"({last.decode()}", count=1) if last != b"0-0" else \
        connection.xrange(stream, count=1)
    return int(entries[0][0].split(b"-")[0]) if entries else None


def render(report: dict[str, Any]) -> str:
    stream, queue, runs, workers = report["stream"], report["queue"], report["runs"], report["workers"]
    lines = [
        f"sending to     {', '.join(report['sending_to']) or '- (no live worker)'}",
        f"stream         {stream['name']}: {stream['length']} entries, lag {stream['lag']}, "
        f"pending {stream['pending']}, poison {stream['poison']}",
        f"queue          {queue['name']}: depth {queue['depth']}, in progress {queue['in_progress']}, "
        f"scheduled {queue['scheduled']}, failed jobs {queue['failed_jobs']}",
        f"runs           open {runs['open']}, waiting for a worker {runs['waiting']}, "
        f"with backlog {runs['with_backlog']}, retrying {runs['retrying']}"
        + (f", reused run ids {runs['reused_run_ids']}" if runs["reused_run_ids"] else ""),
        f"workers        {workers['alive']} alive, {workers['busy']} busy",
        f"dispatchers    {report['dispatchers']['alive']} alive",
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
