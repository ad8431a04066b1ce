"""Dead letters: what Langfuse refused for good, what could not be delivered in time, and
entries that could not be folded.

Each letter holds everything needed to send again (the spans or scores as they were to be
sent), the reason class and Langfuse's message, attempts and times. Letters never expire by
themselves; `codex-langfuse replay` sends them again and removes them once accepted. A letter of
entries (`fold_failed`) holds them as they were filed, with the error: not sendable, kept for a
human.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Iterable, Literal

import redis
from pydantic import BaseModel

from codex_langfuse.ingest.items import Item, Span, slot
from codex_langfuse.ingest.keys import Keys


# Reason classes this module adds to those of `transport` (what Langfuse refused, or retries exhausted).
FOLD_FAILED = "fold_failed"  # entries whose folding raised: kept as they were filed, with the error
JOB_FAILED = "job_failed"  # what a run held when its job kept failing: the run was set aside


class DeadLetter(BaseModel):
    id: str
    run_id: str
    trace_id: str
    # spans and scores are sent again by `replay`; entries (fold_failed) are kept for a human
    kind: Literal["spans", "scores", "entries"]
    items: list[dict[str, Any]]
    reason: str
    message: str
    attempts: int = 1
    first_failure: float
    last_failure: float

    @classmethod
    def new(cls, run_id: str, trace_id: str, kind: str, items: Iterable[Item], reason: str, message: str,
            attempts: int = 1, first_failure: float | None = None) -> "DeadLetter":
        """A letter of these items (encoded spans are kept decoded: a letter is read by people too)."""
        items = [item.decode() if isinstance(item, Span) else item for item in items]
        now = time.time()
        ids = ",".join(slot(item) if kind != "entries" else str(item.get("seq", item.get("step", "?")))
                       for item in items)
        digest = hashlib.sha256(f"{run_id}|{kind}|{ids}".encode()).hexdigest()[:20]
        return cls(id=f"{run_id}:{digest}", run_id=run_id, trace_id=trace_id, kind=kind, items=items,
                   reason=reason, message=message[:4000], attempts=attempts,
                   first_failure=first_failure or now, last_failure=now)


class DeadLetters:
    def __init__(self, connection: redis.Redis, keys: Keys):
        self.redis = connection
        self.keys = keys

    def add(self, letters: Iterable[DeadLetter], pipe: Any = None) -> None:
        target = pipe if pipe is not None else self.redis.pipeline(transaction=True)
        for letter in letters:
            target.hset(self.keys.dead_letters, letter.id, letter.model_dump_json())
            target.zadd(self.keys.dead_letter_index, {letter.id: letter.last_failure})
        if pipe is None:
            target.execute()

    def remove(self, ids: Iterable[str], pipe: Any = None) -> None:
        ids = list(ids)
        if not ids:
            return
        target = pipe if pipe is not None else self.redis.pipeline(transaction=True)
        target.hdel(self.keys.dead_letters, *ids)
        target.zrem(self.keys.dead_letter_index, *ids)
        if pipe is None:
            target.execute()

    def get(self, letter_id: str) -> DeadLetter | None:
        raw = self.redis.hget(self.keys.dead_letters, letter_id)
        return DeadLetter.model_validate_json(raw) if raw else None

    def ids(self, older_than: float | None = None, newer_than: float | None = None) -> list[str]:
        """Ids by time of last failure, oldest first."""
        low = newer_than if newer_than is not None else "-inf"
        high = older_than if older_than is not None else "+inf"
        return [i.decode() for i in self.redis.zrangebyscore(self.keys.dead_letter_index, low, high)]

    def select(self, run_id: str | None = None, reason: str | None = None, older_than: float | None = None,
               newer_than: float | None = None, limit: int | None = None) -> Iterable[DeadLetter]:
        yielded = 0
        ids = self.ids(older_than, newer_than)
        for start in range(0, len(ids), 200):
            chunk = ids[start:start + 200]
            for raw in self.redis.hmget(self.keys.dead_letters, chunk):
                if raw is None:
                    continue
                letter = DeadLetter.model_validate_json(raw)
                if run_id is not None and letter.run_id != run_id:
                    continue
                if reason is not None and letter.reason != reason:
                    continue
                yield letter
                yielded += 1
                if limit is not None and yielded >= limit:
                    return

    def newest(self) -> float | None:
        """Time of the latest failure among the letters."""
        newest = self.redis.zrange(self.keys.dead_letter_index, -1, -1, withscores=True)
        return newest[0][1] if newest else None

    def counts_by_reason(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for _, raw in self.redis.hscan_iter(self.keys.dead_letters, count=500):
            letter = DeadLetter.model_validate_json(raw)
            bucket = counts.setdefault(letter.reason, {"letters": 0, "items": 0})
            bucket["letters"] += 1
            bucket["items"] += len(letter.items)
        return counts
