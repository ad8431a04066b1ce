"""The record of what Langfuse accepted, consulted before every send, retry and replay.

Langfuse v4 keeps every copy it receives, so at-least-once inside the pipeline becomes
exactly-once only here: an item's `items.ledger_key` is added once Langfuse answered success, and
nothing in the ledger is sent again. One ledger per destination (`Settings.destination_id`): what
a local sink or another Langfuse project accepted says nothing about this one.

Beside it, the doubts: a span is marked before its request goes out and unmarked once the answer
says whether Langfuse stored it. A mark that outlives its request (a timeout, a reset, a gateway
error, a worker killed mid-request) says when the send began: `delivery` asks Langfuse about that
span before sending it again, and sends it again unasked only once that is long enough ago.
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
        """Langfuse accepted these: never send them again (and they are no longer in doubt)."""
        ids = list(ids)
        if not ids:
            return
        target = pipe if pipe is not None else self.redis.pipeline(transaction=True)
        target.sadd(self.keys.ledger(self.destination, trace_id), *ids)
        target.expire(self.keys.ledger(self.destination, trace_id), self.ttl)
        target.hdel(self.keys.doubts(self.destination, trace_id), *ids)
        if pipe is None:
            target.execute()

    def forget(self, trace_id: str, ids: Iterable[str]) -> None:
        """Ids Langfuse turned out not to hold (`verify`): the next delivery sends them again."""
        ids = list(ids)
        if ids:
            self.redis.srem(self.keys.ledger(self.destination, trace_id), *ids)

    def doubt(self, trace_id: str, ids: Iterable[str], at: float) -> None:
        """A request carrying these is about to go out: until its answer says otherwise, Langfuse
        may have stored them."""
        ids = list(ids)
        if not ids:
            return
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.doubts(self.destination, trace_id), mapping={i: repr(at) for i in ids})
            pipe.expire(self.keys.doubts(self.destination, trace_id), self.ttl)
            pipe.execute()

    def settle(self, trace_id: str, ids: Iterable[str]) -> None:
        """The answer says Langfuse did not store these (refused, or never reached it)."""
        ids = list(ids)
        if ids:
            self.redis.hdel(self.keys.doubts(self.destination, trace_id), *ids)

    def doubtful(self, trace_id: str, ids: Iterable[str]) -> dict[str, float]:
        """Of `ids`, those whose last send may have been stored unseen: id -> when that send began."""
        return self.lookup(trace_id, ids)[1]

    def lookup(self, trace_id: str, ids: Iterable[str]) -> tuple[set[str], dict[str, float]]:
        """(those of `ids` Langfuse accepted, those in doubt with when their send began), in one round trip."""
        ids = list(ids)
        if not ids:
            return set(), {}
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.smismember(self.keys.ledger(self.destination, trace_id), ids)
            pipe.hmget(self.keys.doubts(self.destination, trace_id), ids)
            flags, values = pipe.execute()
        accepted = {i for i, flag in zip(ids, flags) if flag}
        return accepted, {i: float(v) for i, v in zip(ids, values) if v is not None and i not in accepted}
