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


Key = tuple[str, str]  # (trace id, ledger key): what the ledger knows an item by


def by_trace(items: Iterable[Key]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for trace_id, key in items:
        grouped.setdefault(trace_id, []).append(key)
    return grouped


class Ledger:
    """Items of any number of traces at once: each call is one round trip."""

    def __init__(self, connection: redis.Redis, keys: Keys, ttl: int, destination: str):
        self.redis = connection
        self.keys = keys
        self.ttl = ttl
        self.destination = destination

    def accepted(self, items: Iterable[Key]) -> set[Key]:
        """Of `items`, those Langfuse accepted."""
        grouped = by_trace(items)
        if not grouped:
            return set()
        with self.redis.pipeline(transaction=False) as pipe:
            for trace_id, ids in grouped.items():
                pipe.smismember(self.keys.ledger(self.destination, trace_id), ids)
            answers = pipe.execute()
        return {(trace_id, i) for (trace_id, ids), flags in zip(grouped.items(), answers)
                for i, flag in zip(ids, flags) if flag}

    def record(self, items: Iterable[Key], pipe: Any = None) -> None:
        """Langfuse accepted these: never send them again (and they are no longer in doubt)."""
        grouped = by_trace(items)
        if not grouped:
            return
        target = pipe if pipe is not None else self.redis.pipeline(transaction=True)
        for trace_id, ids in grouped.items():
            target.sadd(self.keys.ledger(self.destination, trace_id), *ids)
            target.expire(self.keys.ledger(self.destination, trace_id), self.ttl)
            target.hdel(self.keys.doubts(self.destination, trace_id), *ids)
        if pipe is None:
            target.execute()

    def forget(self, items: Iterable[Key]) -> None:
        """Items Langfuse turned out not to hold (`verify`): the next delivery sends them again."""
        grouped = by_trace(items)
        if not grouped:
            return
        with self.redis.pipeline(transaction=False) as pipe:
            for trace_id, ids in grouped.items():
                pipe.srem(self.keys.ledger(self.destination, trace_id), *ids)
            pipe.execute()

    def doubt(self, items: Iterable[Key], at: float, record: Iterable[Key] = ()) -> None:
        """A request carrying these is about to go out: until its answer says otherwise, Langfuse
        may have stored them. (`record`: accepted ones, recorded in the same transaction.)"""
        grouped, record = by_trace(items), list(record)
        if not grouped and not record:
            return
        with self.redis.pipeline(transaction=True) as pipe:
            self.record(record, pipe)
            for trace_id, ids in grouped.items():
                pipe.hset(self.keys.doubts(self.destination, trace_id), mapping={i: repr(at) for i in ids})
                pipe.expire(self.keys.doubts(self.destination, trace_id), self.ttl)
            pipe.execute()

    def settle(self, items: Iterable[Key]) -> None:
        """The answer says Langfuse did not store these (refused, or never reached it)."""
        grouped = by_trace(items)
        if not grouped:
            return
        with self.redis.pipeline(transaction=False) as pipe:
            for trace_id, ids in grouped.items():
                pipe.hdel(self.keys.doubts(self.destination, trace_id), *ids)
            pipe.execute()

    def doubtful(self, items: Iterable[Key]) -> dict[Key, float]:
        """Of `items`, those whose last send may have been stored unseen: item -> when that send began."""
        return self.lookup(items)[1]

    def lookup(self, items: Iterable[Key]) -> tuple[set[Key], dict[Key, float]]:
        """(those of `items` Langfuse accepted, those in doubt with when their send began)."""
        grouped = by_trace(items)
        if not grouped:
            return set(), {}
        with self.redis.pipeline(transaction=False) as pipe:
            for trace_id, ids in grouped.items():
                pipe.smismember(self.keys.ledger(self.destination, trace_id), ids)
                pipe.hmget(self.keys.doubts(self.destination, trace_id), ids)
            answers = pipe.execute()
        accepted: set[Key] = set()
        doubtful: dict[Key, float] = {}
        for index, (trace_id, ids) in enumerate(grouped.items()):
            flags, values = answers[2 * index], answers[2 * index + 1]
            for i, flag, value in zip(ids, flags, values):
                if flag:
                    accepted.add((trace_id, i))
                elif value is not None:
                    doubtful[(trace_id, i)] = float(value)
        return accepted, doubtful
