"""A run's books in Redis: its log of filed entries, its fold state, its outbox of complete
spans and scores, the lease that lets one worker at a time advance it, and its delivery state.

The dispatcher files entries (`file`), workers fold and deliver (`commit`, `outbox`, ...).
Every write a fold step makes is one transaction, guarded by the lease: a worker that lost its
lease (it stalled past the lease time and another took over) commits nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable

import redis

from codex_langfuse.ingest.entries import Entry
from codex_langfuse.ingest.events import Usage
from codex_langfuse.ingest.items import is_score_slot, slot
from codex_langfuse.ingest.state import RunState
from codex_langfuse.ingest.keys import Keys
from codex_langfuse.ingest.lease import Leases, LeaseLost

@dataclass
class DeliveryState:
    attempts: int = 0
    first_failure: float | None = None
    last_failure: float | None = None
    next_attempt_at: float | None = None
    last_error: str | None = None

    @classmethod
    def from_hash(cls, raw: dict[bytes, bytes]) -> "DeliveryState":
        def num(name: str) -> float | None:
            value = raw.get(name.encode())
            return float(value) if value else None

        return cls(
            attempts=int(raw.get(b"attempts", 0) or 0),
            first_failure=num("first_failure"),
            last_failure=num("last_failure"),
            next_attempt_at=num("next_attempt_at"),
            last_error=raw[b"last_error"].decode() if raw.get(b"last_error") else None,
        )


class RunStore:
    def __init__(self, connection: redis.Redis, keys: Keys, lease_seconds: int = 60, done_ttl: int = 7 * 86400,
                 thread_ttl: int = 30 * 86400):
        self.redis = connection
        self.keys = keys
        self.done_ttl = done_ttl
        self.thread_ttl = thread_ttl
        self.leases = Leases(connection, lease_seconds)

    # ---- dispatcher side ----

    def file(self, pipe: Any, entry: Entry, now: float) -> None:
        """File one entry under its run (idempotent: a redelivered entry changes nothing)."""
        pipe.hsetnx(self.keys.log(entry.run), str(entry.seq), entry.pack())
        pipe.zadd(self.keys.active, {entry.run: now}, gt=True)
        pipe.zadd(self.keys.backlog, {entry.run: now}, nx=True)

    def request_wake(self, run: str, ttl: int = 60) -> bool:
        """True when the caller should enqueue a job: none is queued for this run yet."""
        return bool(self.redis.set(self.keys.wake(run), b"1", nx=True, ex=ttl))

    # ---- lease ----

    def acquire(self, run: str) -> str | None:
        return self.leases.acquire(self.keys.lease(run))

    def renew(self, run: str, token: str) -> None:
        self.leases.renew(self.keys.lease(run), token)

    def release(self, run: str, token: str) -> None:
        self.leases.release(self.keys.lease(run), token)

    def clear_wake(self, run: str) -> None:
        self.redis.delete(self.keys.wake(run))

    # ---- folding ----

    def load_state(self, run: str) -> RunState | None:
        raw = self.redis.get(self.keys.state(run))
        return RunState.model_validate_json(raw) if raw else None

    def read(self, run: str, from_seq: int, limit: int) -> list[Entry]:
        """Entries from `from_seq` on, stopping at the first missing sequence number."""
        wanted = min(self.redis.hlen(self.keys.log(run)), limit)  # no more can be there
        seqs = list(range(from_seq, from_seq + wanted))
        entries: list[Entry] = []
        for seq, value in zip(seqs, self.redis.hmget(self.keys.log(run), [str(s) for s in seqs]) if seqs else []):
            if value is None:
                break
            entries.append(Entry.unpack(run, seq, value))
        return entries

    def waiting_after_gap(self, run: str, next_seq: int) -> tuple[int | None, list[int]]:
        """(the lowest filed seq above `next_seq`, seqs below it that were folded already)."""
        seqs = [int(k) for k in self.redis.hkeys(self.keys.log(run))]
        stale = [s for s in seqs if s < next_seq]
        later = [s for s in seqs if s > next_seq]
        return (min(later) if later else None), stale

    def last_activity(self, run: str) -> float | None:
        return self.redis.zscore(self.keys.active, run)

    def thread_baseline(self, thread: str) -> Usage | None:
        raw = self.redis.get(self.keys.thread_usage(thread))
        return Usage.model_validate_json(raw) if raw else None

    def commit(self, run: str, token: str, state: RunState, spans: Iterable[dict[str, Any]],
               scores: Iterable[dict[str, Any]], consumed: Iterable[int], thread_totals: dict[str, Usage]) -> None:
        """Write a fold step at once: new state, new outbox items, folded entries removed."""
        consumed = [str(s) for s in consumed]
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.watch(self.keys.lease(run))
            if pipe.get(self.keys.lease(run)) != token.encode():
                raise LeaseLost(run)
            pipe.multi()
            pipe.set(self.keys.state(run), state.model_dump_json())
            self.add_to_outbox(pipe, run, spans, scores)
            if consumed:
                pipe.hdel(self.keys.log(run), *consumed)
            for thread, usage in thread_totals.items():
                pipe.set(self.keys.thread_usage(thread), usage.model_dump_json(), ex=self.thread_ttl)
            if state.closed:
                pipe.zrem(self.keys.active, run)
                pipe.expire(self.keys.state(run), self.done_ttl)
            pipe.pexpire(self.keys.lease(run), self.leases.ms)
            try:
                pipe.execute()
            except redis.WatchError:
                raise LeaseLost(run) from None

    def add_to_outbox(self, pipe: Any, run: str, spans: Iterable[dict[str, Any]],
                      scores: Iterable[dict[str, Any]]) -> None:
        outbox = {slot(item): _dumps(item) for item in (*spans, *scores)}
        if outbox:
            pipe.hset(self.keys.outbox(run), mapping=outbox)

    def drop_stale(self, run: str, seqs: list[int]) -> None:
        if seqs:
            self.redis.hdel(self.keys.log(run), *[str(s) for s in seqs])

    def has_unfolded(self, run: str, next_seq: int) -> bool:
        return bool(self.redis.hexists(self.keys.log(run), str(next_seq)))

    # ---- delivery ----

    def outbox(self, run: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        spans, scores = [], []
        for key, value in self.redis.hgetall(self.keys.outbox(run)).items():
            (scores if is_score_slot(key) else spans).append(json.loads(value))
        spans.sort(key=lambda span: int(span["startTimeUnixNano"]))
        return spans, scores

    def delivery_state(self, run: str) -> DeliveryState:
        return DeliveryState.from_hash(self.redis.hgetall(self.keys.delivery(run)))

    def settle(self, pipe: Any, run: str, slots: Iterable[str]) -> None:
        """Items that need no more sending (accepted, or dead-lettered) leave the outbox."""
        slots = list(slots)
        if slots:
            pipe.hdel(self.keys.outbox(run), *slots)

    def record_success(self, pipe: Any, run: str) -> None:
        pipe.delete(self.keys.delivery(run))
        pipe.zrem(self.keys.retrying, run)

    def record_failure(self, pipe: Any, run: str, state: DeliveryState) -> None:
        mapping = {
            "attempts": state.attempts,
            "first_failure": state.first_failure or "",
            "last_failure": state.last_failure or "",
            "next_attempt_at": state.next_attempt_at or "",
            "last_error": (state.last_error or "")[:2000],
        }
        pipe.hset(self.keys.delivery(run), mapping=mapping)
        if state.next_attempt_at:
            pipe.zadd(self.keys.retrying, {run: state.next_attempt_at})

    def forget_if_idle(self, run: str) -> None:
        """Leave the backlog once nothing of the run waits to be folded or delivered."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.watch(self.keys.log(run), self.keys.outbox(run))
            if pipe.hlen(self.keys.log(run)) or pipe.hlen(self.keys.outbox(run)):
                pipe.reset()
                return
            pipe.multi()
            pipe.zrem(self.keys.backlog, run)
            try:
                pipe.execute()
            except redis.WatchError:
                pass


def _dumps(item: dict[str, Any]) -> str:
    return json.dumps(item, ensure_ascii=False, separators=(",", ":"))
