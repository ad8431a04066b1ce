"""A run's books in Redis: its log of filed entries, its fold state, its outbox of complete
spans and scores, the lease that lets one worker at a time advance it, and its delivery state.

The dispatcher files entries (`file`) under their run key (`entries.run_key`: one set of books
per run instance, so a reused run id never mixes two runs), workers fold and deliver (`commit`,
`outbox`, ...). `run` below is always a run key.
Every write a fold step makes is one transaction, guarded by the lease: a worker that lost its
lease (it stalled past the lease time and another took over) commits nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import redis

from codex_langfuse.ingest.entries import NO_INST, Entry, run_key
from codex_langfuse.ingest.events import Usage
from codex_langfuse.ingest.items import is_score_slot, slot
from codex_langfuse.ingest.state import RunState
from codex_langfuse.ingest.keys import Keys
from codex_langfuse.ingest.lease import Leases, LeaseLost
from codex_langfuse.producer.entries import trace_id

@dataclass
class Waiting:
    """What a fold step takes from a run's books: entries in sequence from `next_seq` on, and
    conflicts (entries filed again under a folded or filed sequence number, with other data)."""

    entries: list[Entry] = field(default_factory=list)
    conflicts: dict[str, dict[str, Any]] = field(default_factory=dict)  # field -> sample


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
                 thread_ttl: int = 30 * 86400, id_ttl: int = 38 * 86400):
        self.redis = connection
        self.keys = keys
        self.done_ttl = done_ttl
        self.thread_ttl = thread_ttl
        # How long a run id's first instance is remembered: past the ledger's memory of its spans,
        # or a later run reusing the id would take the first one's span ids and be skipped as sent.
        self.id_ttl = id_ttl
        self.leases = Leases(connection, lease_seconds)

    # ---- dispatcher side ----

    def run_keys(self, entries: list[Entry], now: float) -> tuple[list[str], set[str]]:
        """The run key of each entry, and the run ids a new instance reused in this batch.

        The first instance of a run id to reach Redis keeps the run id as its key (and so its
        trace and observation ids); a later one gets `<run id>/<inst>`."""
        claims: dict[str, str] = {}
        for entry in entries:
            claims.setdefault(entry.run, entry.inst or NO_INST)
        with self.redis.pipeline(transaction=False) as pipe:
            for run, inst in claims.items():
                pipe.set(self.keys.first_instance(run), inst, nx=True, ex=self.id_ttl)
                pipe.get(self.keys.first_instance(run))
                pipe.expire(self.keys.first_instance(run), self.id_ttl)
                pipe.set(self.keys.trace_run(trace_id(run)), run, nx=True, ex=self.id_ttl)
            answers = pipe.execute()
        first = {run: answers[i * 4 + 1].decode() for i, run in enumerate(claims)}
        keys = [run_key(entry.run, entry.inst, first[entry.run]) for entry in entries]
        reused = {entry.run for entry, key in zip(entries, keys) if key != entry.run}
        return keys, reused

    def file(self, entries: Sequence[tuple[Entry, str]], now: float) -> int:
        """File entries under their run keys (idempotent: a redelivered entry changes nothing).

        The first entry that reaches a run key's sequence number is the one folded: its digest is
        kept (`seqs`), and an entry that comes later under that number with other data is not
        filed but kept aside as a conflict, to be shown (`conflicts`). Returns how many conflicted."""
        if not entries:
            return 0
        digests = [entry.digest() for entry, _ in entries]
        with self.redis.pipeline(transaction=True) as pipe:
            for (entry, key), digest in zip(entries, digests):
                pipe.hsetnx(self.keys.seqs(key), str(entry.seq), digest)
                pipe.hget(self.keys.seqs(key), str(entry.seq))
            firsts = pipe.execute()[1::2]
        conflicts = 0
        with self.redis.pipeline(transaction=False) as pipe:
            for (entry, key), digest, first in zip(entries, digests, firsts):
                if first is None or first.decode() == digest:
                    pipe.hsetnx(self.keys.log(key), str(entry.seq), entry.pack())
                else:
                    conflicts += 1
                    sample = {**entry.model_dump(exclude_none=True), "digest": digest, "first_digest": first.decode()}
                    pipe.hsetnx(self.keys.conflicts(key), f"{entry.seq}:{digest}", _dumps(sample))
            for key in dict.fromkeys(key for _, key in entries):
                pipe.zadd(self.keys.active, {key: now}, gt=True)
                pipe.zadd(self.keys.backlog, {key: now}, nx=True)
            pipe.execute()
        return conflicts

    def note_reused(self, runs: Iterable[str], now: float) -> int:
        """Record run ids a second instance reused; returns how many were new to the record."""
        runs = list(runs)
        if not runs:
            return 0
        return int(self.redis.zadd(self.keys.reused, {run: now for run in runs}, nx=True) or 0)

    def known_run(self, run: str) -> bool:
        """True when some entry of this run id reached Redis (in the last `id_ttl`)."""
        return bool(self.redis.exists(self.keys.first_instance(run), self.keys.state(run)))

    def run_of_trace(self, trace: str) -> str | None:
        value = self.redis.get(self.keys.trace_run(trace))
        return value.decode() if value is not None else None

    def was_reused(self, run: str) -> bool:
        return self.redis.zscore(self.keys.reused, run) is not None

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

    def read(self, run: str, from_seq: int, limit: int) -> Waiting:
        """Entries from `from_seq` on, stopping at the first missing sequence number; conflicts."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hlen(self.keys.log(run))
            pipe.hgetall(self.keys.conflicts(run))
            filed, conflicts = pipe.execute()
        wanted = min(filed, limit)  # no more can be there
        seqs = list(range(from_seq, from_seq + wanted))
        waiting = Waiting(conflicts={name.decode(): json.loads(sample) for name, sample in sorted(conflicts.items())})
        for seq, value in zip(seqs, self.redis.hmget(self.keys.log(run), [str(s) for s in seqs]) if seqs else []):
            if value is None:
                break
            waiting.entries.append(Entry.unpack(run, seq, value))
        return waiting

    def read_seqs(self, run: str, seqs: list[int]) -> list[Entry]:
        """The entries filed under these sequence numbers (those still there), in order."""
        seqs = sorted(seqs)
        values = self.redis.hmget(self.keys.log(run), [str(s) for s in seqs]) if seqs else []
        return [Entry.unpack(run, seq, value) for seq, value in zip(seqs, values) if value is not None]

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
               scores: Iterable[dict[str, Any]], consumed: Iterable[int], thread_totals: dict[str, Usage],
               shown: Iterable[str] = (), also: Callable[[Any], None] | None = None) -> None:
        """Write a fold step at once: new state, new outbox items, folded entries and shown
        conflicts removed, and whatever `also` adds to the transaction (dead letters)."""
        consumed = [str(s) for s in consumed]
        shown = list(shown)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.watch(self.keys.lease(run))
            if pipe.get(self.keys.lease(run)) != token.encode():
                raise LeaseLost(run)
            pipe.multi()
            pipe.set(self.keys.state(run), state.model_dump_json())
            self.add_to_outbox(pipe, run, spans, scores)
            if consumed:
                pipe.hdel(self.keys.log(run), *consumed)
            if shown:
                pipe.hdel(self.keys.conflicts(run), *shown)
            if also is not None:
                also(pipe)
            for thread, usage in thread_totals.items():
                pipe.set(self.keys.thread_usage(thread), usage.model_dump_json(), ex=self.thread_ttl)
            if state.closed:
                pipe.zrem(self.keys.active, run)
                pipe.expire(self.keys.state(run), self.done_ttl)
                pipe.expire(self.keys.seqs(run), self.done_ttl)
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

    def leave_active(self, run: str) -> None:
        """A closed run is not open, whatever came for it after (the sweep must not wake it)."""
        self.redis.zrem(self.keys.active, run)

    def has_outbox(self, run: str) -> bool:
        return bool(self.redis.exists(self.keys.outbox(run)))

    # ---- faults: a run whose job keeps failing is set aside, never retried forever ----

    def count_fault(self, run: str, what: str, ttl: int = 3600) -> int:
        """One more failure of `what` ("fold", "job") in a row; returns how many so far."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(self.keys.faults(run), what, 1)
            pipe.expire(self.keys.faults(run), ttl)
            return int(pipe.execute()[0])

    def clear_faults(self, run: str, what: str) -> None:
        self.redis.hdel(self.keys.faults(run), what)

    def set_aside(self, run: str, letters: Callable[[list[dict[str, Any]]], Callable[[Any], None]]) -> None:
        """Stop working on a run: what is filed and not folded is handed to `letters` (which
        returns what to add to the transaction: the dead letters holding it), then the run leaves
        the open runs, the backlog and the retries, all in one transaction."""
        while True:
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.watch(self.keys.log(run))
                items = []
                for seq, value in sorted((int(k), v) for k, v in pipe.hgetall(self.keys.log(run)).items()):
                    try:
                        items.append(Entry.unpack(run, seq, value).model_dump())
                    except (ValueError, KeyError, TypeError):
                        items.append({"run": run, "seq": seq, "raw": value.decode("utf-8", "replace")})
                pipe.multi()
                letters(items)(pipe)
                pipe.delete(self.keys.log(run), self.keys.outbox(run), self.keys.conflicts(run),
                            self.keys.delivery(run), self.keys.faults(run))
                pipe.zrem(self.keys.active, run)
                pipe.zrem(self.keys.backlog, run)
                pipe.zrem(self.keys.retrying, run)
                try:
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue  # an entry was filed meanwhile: take it too

    def has_unfolded(self, run: str, next_seq: int) -> bool:
        return bool(self.redis.hexists(self.keys.log(run), str(next_seq)))

    # ---- delivery ----

    def outbox(self, run: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        spans, scores = [], []
        for key, value in self.redis.hgetall(self.keys.outbox(run)).items():
            (scores if is_score_slot(key) else spans).append(json.loads(value))
        spans.sort(key=lambda span: int(span["startTimeUnixNano"]))
        return spans, scores

    def raw_outbox(self, run: str) -> dict[str, str]:
        return {k.decode(): v.decode("utf-8", "replace") for k, v in self.redis.hgetall(self.keys.outbox(run)).items()}

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

    # ---- looking at a run from outside (verify) ----

    def in_progress(self, run: str) -> bool:
        """Entries waiting to be folded, spans to be delivered, a worker on it, or still open."""
        raw = self.redis.get(self.keys.state(run))
        if raw is not None and not RunState.model_validate_json(raw).closed:
            return True
        return bool(self.redis.hlen(self.keys.log(run)) or self.redis.hlen(self.keys.outbox(run))
                    or self.redis.exists(self.keys.lease(run)))

    def closed(self, run: str) -> bool:
        raw = self.redis.get(self.keys.state(run))
        return raw is not None and RunState.model_validate_json(raw).closed

    def forget_run(self, run: str) -> None:
        """Drop a finished run's books, so that its entries, filed again, are folded again (verify
        re-sends a turn Langfuse lost; the ledger still skips what Langfuse has)."""
        self.redis.delete(self.keys.state(run), self.keys.log(run), self.keys.outbox(run), self.keys.delivery(run))

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
