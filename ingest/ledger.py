"""The record of what Langfuse accepted, consulted before every send, retry and replay.

Langfuse v4 keeps every copy it receives, so at-least-once inside the pipeline becomes
exactly-once only here: an item's `items.ledger_key` is added once Langfuse answered success, and
nothing in the ledger is sent again. One ledger per destination (`Settings.destination_id`): what
a local sink or another Langfuse project accepted says nothing about this one.
"""

from __future__ import annotations

from typing import Any, Iterable

import redis

from codex_langfuse.ingest.keys import Keys


class Ledger:
    def __init__(self, connection: redis.Redis, keys: Keys, ttl: int, destination: str):
        self.redis = connection
        self.keys = keys
        self.ttl = ttl
        self.destination = destination

    def accepted(self, trace_id: str, ids: Iterable[str]) -> set[str]:
        ids = list(ids)
        if not ids:
            return set()
        flags = self.redis.smismember(self.keys.ledger(self.destination, trace_id), ids)
        return {i for i, flag in zip(ids, flags) if flag}

    def record(self, trace_id: str, ids: Iterable[str], pipe: Any = None) -> None:
        ids = list(ids)
        if not ids:
            return
        target = pipe if pipe is not None else self.redis.pipeline(transaction=True)
        target.sadd(self.keys.ledger(self.destination, trace_id), *ids)
        target.expire(self.keys.ledger(self.destination, trace_id), self.ttl)
        if pipe is None:
            target.execute()
