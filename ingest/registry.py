"""Who runs the back end: every worker and dispatcher registers itself in Redis at start (role,
destination, the settings that decide where and how data goes, host, pid) and beats a heartbeat.

`status` reads this, not its caller's own configuration, and a process whose heartbeat stopped
(SIGKILL, a lost host) is dropped within `HEARTBEAT_TTL` seconds, instead of the ~11 minutes RQ
keeps a busy worker's key alive. RQ's own registration is left to RQ.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from typing import Any

import redis

from codex_langfuse.ingest.keys import Keys
from codex_langfuse.ingest.settings import Settings

HEARTBEAT_SECONDS = 5.0
HEARTBEAT_TTL = 15  # three missed beats: the process is gone

log = logging.getLogger("codex_langfuse.registry")


def describe(settings: Settings, role: str, name: str, destination: str | None = None) -> dict[str, Any]:
    """What a process tells the others about itself (no secrets: keys are never stored)."""
    from codex_langfuse.producer import __version__

    entry: dict[str, Any] = {"role": role, "name": name, "host": socket.gethostname(), "pid": os.getpid(),
                             "started_at": round(time.time(), 3), "version": __version__}
    if role == "worker":
        entry.update(
            destination=destination,
            destination_id=settings.destination_id(),
            settings={key: getattr(settings, key) for key in (
                "worker_class", "retry_for", "lease_seconds", "idle_timeout", "gap_timeout", "capture_content",
                "redact", "environment", "release", "trace_name", "job_timeout")},
        )
    else:
        entry["settings"] = {key: getattr(settings, key) for key in (
            "stream", "sweep_interval", "claim_min_idle_ms", "max_deliveries", "idle_timeout")}
    return entry


class Registry:
    def __init__(self, connection: redis.Redis, keys: Keys):
        self.redis = connection
        self.keys = keys

    def register(self, entry: dict[str, Any]) -> None:
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.processes, entry["name"], json.dumps(entry, default=str))
            pipe.set(self.keys.alive(entry["name"]), "1", ex=HEARTBEAT_TTL)
            pipe.execute()

    def beat(self, entry: dict[str, Any]) -> None:
        # The registration too: Redis may have been restarted empty under a running process.
        self.register(entry)

    def leave(self, name: str) -> None:
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(self.keys.processes, name)
            pipe.delete(self.keys.alive(name))
            pipe.execute()

    def alive(self, role: str | None = None) -> list[dict[str, Any]]:
        """Live processes (of `role`); the registrations of dead ones are dropped on the way."""
        entries = {name.decode(): json.loads(raw) for name, raw in self.redis.hgetall(self.keys.processes).items()}
        names = sorted(entries)
        with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.exists(self.keys.alive(name))
            flags = pipe.execute()
        dead = [name for name, flag in zip(names, flags) if not flag]
        if dead:
            self.redis.hdel(self.keys.processes, *dead)
        return [entries[name] for name, flag in zip(names, flags)
                if flag and (role is None or entries[name].get("role") == role)]

    def is_alive(self, name: str) -> bool:
        return bool(self.redis.exists(self.keys.alive(name)))


class Heartbeat:
    """A daemon thread beating for this process until stopped; it outlives Redis outages."""

    def __init__(self, registry: Registry, entry: dict[str, Any]):
        self.registry = registry
        self.entry = entry
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="codex-langfuse-heartbeat", daemon=True)

    def start(self) -> "Heartbeat":
        try:
            self.registry.register(self.entry)
        except redis.RedisError as exc:
            log.warning("cannot register in Redis yet (%s); the heartbeat keeps trying", exc)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self.registry.beat(self.entry)
            except redis.RedisError:
                pass  # Redis is away; the worker and the dispatcher say so themselves

    def stop(self) -> None:
        self._stop.set()
        try:
            self.registry.leave(self.entry["name"])
        except redis.RedisError:
            pass
