"""A run's books in Redis: its log of filed entries, its fold state, its outbox of complete
spans and scores, the lease that lets one worker at a time advance it, and its delivery state.

The dispatcher files entries (`file`) under their run key (`entries.run_key`: one set of books
per run instance, so a reused run id never mixes two runs), workers fold and deliver (`commit`,
`outbox`, ...). `run` below is always a run key.
Every write a fold step makes is one transaction, guarded by the lease: a worker that lost its
lease (it stalled past the lease time and another took over) commits nothing.

A worker advances several runs per job, so the steps of all of them share round trips: one to
take their leases with their states (`take`, a Lua script per run, pipelined), one to read their
entries, one to commit them all (`commit`: a Lua script per run that checks the lease, writes and
renews it), one to settle their deliveries and let them go (`finish`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, NamedTuple

import orjson
import redis

from codex_langfuse.ingest.entries import NO_INST, Entry, run_key
from codex_langfuse.ingest.events import Usage
from codex_langfuse.ingest.items import Span, is_score_slot, slot
from codex_langfuse.ingest.state import RunState
from codex_langfuse.ingest.keys import Keys
from codex_langfuse.ingest.lease import RENEW, LeaseLost
from codex_langfuse.producer.entries import trace_id

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


# KEYS: per run id, its first-instance key and its trace's run key.  ARGV: ttl, then per run id: its
# instance in this batch, the run id. The instance that used each run id first (claimed by this
# batch when none had).
_CLAIM = """
local firsts = {}
for i = 1, #KEYS / 2 do
  redis.call('set', KEYS[2 * i - 1], ARGV[2 * i], 'NX', 'EX', ARGV[1])
  firsts[i] = redis.call('get', KEYS[2 * i - 1])
  redis.call('expire', KEYS[2 * i - 1], ARGV[1])
  redis.call('set', KEYS[2 * i], ARGV[2 * i + 1], 'NX', 'EX', ARGV[1])
end
return firsts
"""

# Runs are woken in one sorted set, by when they are due; one queued job at a time (`drain`) works
# through them. wake(woken, drain, at, ttl, now, runs): wake `runs` at `at` (the earlier of two
# wake-ups counts); 1 when a job must be queued (some run is due by `now`, no job is queued).
_WAKE_FUNCTION = """
local function wake(woken, drain, at, ttl, now, runs)
  if #runs > 0 then
    local args = {}
    for _, run in ipairs(runs) do
      args[#args + 1] = at
      args[#args + 1] = run
    end
    redis.call('zadd', woken, 'LT', unpack(args))
  end
  local first = redis.call('zrange', woken, 0, 0, 'WITHSCORES')
  if first[2] and tonumber(first[2]) <= tonumber(now) and redis.call('set', drain, '1', 'NX', 'EX', ttl) then
    return 1
  end
  return 0
end
"""

# KEYS: woken, drain.  ARGV: at, drain ttl, now, run...
_WAKE = _WAKE_FUNCTION + """
return wake(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], {unpack(ARGV, 4)})
"""

# KEYS: active, backlog, woken, drain, then the log of each run key, then the seqs of each.  ARGV:
# now, drain ttl, number of run keys, the run keys, then per entry: the number of its run key
# (1-based), its seq, its packed form, its digest. Files each entry whose digest is the first its
# sequence number got, then wakes the runs (only once all are filed). Returns {1 when a job must be
# queued, then per conflicting entry: its number (1-based), the digest its sequence number got first}.
_FILE = _WAKE_FUNCTION + """
local runs = tonumber(ARGV[3])
local answer = {0}
local n = 0
for i = 4 + runs, #ARGV, 4 do
  n = n + 1
  local r = tonumber(ARGV[i])
  local seqs = KEYS[4 + runs + r]
  if redis.call('hsetnx', seqs, ARGV[i + 1], ARGV[i + 3]) == 1 then
    redis.call('hsetnx', KEYS[4 + r], ARGV[i + 1], ARGV[i + 2])
  else
    local first = redis.call('hget', seqs, ARGV[i + 1])
    if first == ARGV[i + 3] then
      redis.call('hsetnx', KEYS[4 + r], ARGV[i + 1], ARGV[i + 2])
    else
      answer[#answer + 1] = n
      answer[#answer + 1] = first
    end
  end
end
local keys = {}
for r = 1, runs do
  keys[r] = ARGV[3 + r]
  redis.call('zadd', KEYS[1], 'GT', ARGV[1], keys[r])
  redis.call('zadd', KEYS[2], 'NX', ARGV[1], keys[r])
end
answer[1] = wake(KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[1], keys)
return answer
"""

# KEYS: woken, drain.  ARGV: now, limit, job started (1/0).
_POP = """
if ARGV[3] == '1' then redis.call('del', KEYS[2]) end
local runs = redis.call('zrangebyscore', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
if #runs > 0 then redis.call('zrem', KEYS[1], unpack(runs)) end
return runs
"""

# KEYS: lease, state, log, active, conflicts.  ARGV: token, lease ms, run.
# The run's lease, and what its fold step starts from; nil when another worker holds it.
_TAKE = """
if not redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
return {redis.call('get', KEYS[2]) or '', redis.call('hlen', KEYS[3]), redis.call('zscore', KEYS[4], ARGV[3]) or '',
        redis.call('hgetall', KEYS[5])}
"""

# KEYS: lease, state, outbox, log, active, delivery, conflicts, seqs, then one per Codex thread whose
# usage is kept.
# ARGV: token, lease ms, state JSON ('' when unchanged), closed (1/0), done ttl, thread ttl, run, number of outbox items,
#       number of consumed entries, number of shown conflicts, then (slot, value) per outbox item, the
#       consumed seqs, the shown conflicts' names, and the usage JSON per thread key.
# A fold step, written at once if the lease is still this worker's (and renewed); then the
# outbox's slots and the delivery state, for the delivery that follows. nil: the lease was lost.
_COMMIT = """
if redis.call('get', KEYS[1]) ~= ARGV[1] then return false end
if ARGV[3] ~= '' then redis.call('set', KEYS[2], ARGV[3]) end
local i = 11
for _ = 1, tonumber(ARGV[8]) do
  redis.call('hset', KEYS[3], ARGV[i], ARGV[i + 1])
  i = i + 2
end
for _ = 1, tonumber(ARGV[9]) do
  redis.call('hdel', KEYS[4], ARGV[i])
  i = i + 1
end
for _ = 1, tonumber(ARGV[10]) do
  redis.call('hdel', KEYS[7], ARGV[i])
  i = i + 1
end
for k = 9, #KEYS do
  redis.call('set', KEYS[k], ARGV[i], 'EX', ARGV[6])
  i = i + 1
end
if ARGV[3] ~= '' and ARGV[4] == '1' then
  redis.call('zrem', KEYS[5], ARGV[7])
  redis.call('expire', KEYS[2], ARGV[5])
  redis.call('expire', KEYS[8], ARGV[5])
end
redis.call('pexpire', KEYS[1], ARGV[2])
return {redis.call('hkeys', KEYS[3]), redis.call('hgetall', KEYS[6])}
"""

# KEYS: lease, log, outbox, active, backlog.  ARGV: token, run, next seq, closed (1/0).
# Let the run go: release its lease; a closed run is not open, whatever came for it meanwhile.
# Returns {1 when its next entry is filed (it needs another step), items left in its outbox};
# a run with nothing left to fold or deliver leaves the backlog.
_FINISH = """
if redis.call('get', KEYS[1]) == ARGV[1] then redis.call('del', KEYS[1]) end
if ARGV[4] == '1' then redis.call('zrem', KEYS[4], ARGV[2]) end
local outbox = redis.call('hlen', KEYS[3])
if redis.call('hexists', KEYS[2], ARGV[3]) == 1 then return {1, outbox} end
if outbox == 0 and redis.call('hlen', KEYS[2]) == 0 then redis.call('zrem', KEYS[5], ARGV[2]) end
return {0, outbox}
"""


class Filed(NamedTuple):
    job_needed: bool  # some woken run is due and no job is queued for them: queue one (`wake`)
    conflicts: int  # entries filed again under a sequence number with other data, kept aside


@dataclass
class Taken:
    """A run whose lease this worker holds, with what its next fold step starts from."""

    run: str
    token: str
    state: RunState | None  # None: nothing folded yet
    filed: int  # entries in its log
    last_activity: float | None
    entries: list[Entry] = field(default_factory=list)  # from state.next_seq on, up to the first missing
    # entries filed again under a sequence number with other data: name -> sample, to be shown
    conflicts: dict[str, dict[str, Any]] = field(default_factory=dict)
    broken: Exception | None = None  # its books could not be read (the state is not a state)


@dataclass
class Step:
    """What one fold step of a run writes."""

    run: str
    token: str
    state: RunState | None  # None: unchanged
    spans: list[Span] = field(default_factory=list)
    scores: list[dict[str, Any]] = field(default_factory=list)
    consumed: list[int] = field(default_factory=list)
    thread_totals: dict[str, Usage] = field(default_factory=dict)
    shown: list[str] = field(default_factory=list)  # conflicts now in the trace
    retry_at: float | None = None  # the fold raised: tried again then, not woken before


@dataclass
class Committed:
    """A run's books right after its step was committed: its outbox's slots and delivery state."""

    slots: list[str]
    delivery: "DeliveryState"


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
        self.lease_ms = int(lease_seconds * 1000)

    # ---- dispatcher side ----

    def run_keys(self, entries: list[Entry], now: float) -> tuple[list[str], set[str]]:
        """The run key of each entry, and the run ids a new instance reused in this batch.

        The first instance of a run id to reach Redis keeps the run id as its key (and so its
        trace and observation ids); a later one gets `<run id>/<inst>`. One round trip."""
        claims: dict[str, str] = {}
        for entry in entries:
            claims.setdefault(entry.run, entry.inst or NO_INST)
        keys = [key for run in claims for key in (self.keys.first_instance(run), self.keys.trace_run(trace_id(run)))]
        args = [arg for run, inst in claims.items() for arg in (inst, run)]
        answers = self.redis.eval(_CLAIM, len(keys), *keys, self.id_ttl, *args)
        first = {run: answer.decode() for run, answer in zip(claims, answers)}
        keys = [run_key(entry.run, entry.inst, first[entry.run]) for entry in entries]
        reused = {entry.run for entry, key in zip(entries, keys) if key != entry.run}
        return keys, reused

    def file(self, entries: list[Entry], keys: list[str], now: float, ttl: int = 60) -> Filed:
        """File each entry under its run key (idempotent: a redelivered entry changes nothing) and
        wake the runs: one round trip.

        The first entry that reaches a run key's sequence number is the one folded: its digest is
        kept (`seqs`), and an entry that comes later under that number with other data is not
        filed but kept aside as a conflict, to be shown (`conflicts`; written in a second round
        trip, which only a conflict costs)."""
        runs = list(dict.fromkeys(keys))
        index = {run: i for i, run in enumerate(runs, 1)}
        digests = [entry.digest() for entry in entries]
        args: list[Any] = [now, ttl, len(runs), *runs]
        for entry, key, digest in zip(entries, keys, digests):
            args += (index[key], entry.seq, entry.pack(), digest)
        k = self.keys
        answer = self.redis.eval(_FILE, 4 + 2 * len(runs), k.active, k.backlog, k.woken, k.drain,
                                 *(k.log(run) for run in runs), *(k.seqs(run) for run in runs), *args)
        queue, conflicted = bool(answer[0]), list(zip(answer[1::2], answer[2::2]))
        if conflicted:
            with self.redis.pipeline(transaction=False) as pipe:
                for number, first in conflicted:
                    entry, key, digest = entries[number - 1], keys[number - 1], digests[number - 1]
                    sample = {**entry.model_dump(exclude_none=True), "digest": digest, "first_digest": first.decode()}
                    pipe.hsetnx(k.conflicts(key), f"{entry.seq}:{digest}", orjson.dumps(sample))
                pipe.execute()
            # A run may have been folded before its conflict was written: woken again to show it.
            queue = self.wake([keys[number - 1] for number, _ in conflicted], now, now, ttl) or queue
        return Filed(queue, len(conflicted))

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

    def wake(self, runs: Iterable[str], at: float, now: float, ttl: int = 60) -> bool:
        """Wake `runs` at `at` (of two wake-ups of a run, the earlier counts). True when a job must
        be queued: some woken run is due by `now` and no job is queued for them yet."""
        runs = list(dict.fromkeys(runs))
        return bool(self.redis.eval(_WAKE, 2, self.keys.woken, self.keys.drain, at, ttl, now, *runs))

    def pop_woken(self, limit: int, now: float, job_started: bool = False) -> list[str]:
        """Up to `limit` runs due by `now`, the longest waiting first, no longer woken. `job_started`:
        the job that asks was taken off the queue, so the runs woken from now on need another."""
        runs = self.redis.eval(_POP, 2, self.keys.woken, self.keys.drain, now, limit, 1 if job_started else 0)
        return [run.decode() for run in runs]

    # ---- a job's runs, all at once ----

    def take(self, runs: list[str], limit: int) -> list[Taken]:
        """The runs of `runs` nobody holds, leased to this worker, each with its state and up to
        `limit` entries from its next one on. Two round trips."""
        tokens = {run: uuid.uuid4().hex for run in runs}
        with self.redis.pipeline(transaction=False) as pipe:
            for run in runs:
                k = self.keys
                pipe.eval(_TAKE, 5, k.lease(run), k.state(run), k.log(run), k.active, k.conflicts(run), tokens[run],
                          self.lease_ms, run)
            answers = pipe.execute()
        taken = []
        for run, answer in zip(runs, answers):
            if answer:  # else another worker holds it
                raw, filed, active, conflicts = answer
                t = Taken(run, tokens[run], None, filed, float(active) if active else None)
                try:
                    t.state = RunState.model_validate_json(raw) if raw else None
                    t.conflicts = {name.decode(): orjson.loads(sample) for name, sample in sorted(_pairs(conflicts).items())}
                except ValueError as exc:  # written by someone else: the job's fault handling sets it aside
                    t.broken = exc
                taken.append(t)
        wanted = [(t, min(t.filed, limit)) for t in taken if t.filed and t.broken is None]
        if wanted:
            with self.redis.pipeline(transaction=False) as pipe:
                for t, count in wanted:
                    first = t.state.next_seq if t.state else 0
                    pipe.hmget(self.keys.log(t.run), [str(s) for s in range(first, first + count)])
                for (t, _), values in zip(wanted, pipe.execute()):
                    first = t.state.next_seq if t.state else 0
                    for seq, value in enumerate(values, first):
                        if value is None:
                            break
                        t.entries.append(Entry.unpack(t.run, seq, value))
        return taken

    def commit(self, steps: list[Step]) -> dict[str, Committed | None | redis.ResponseError]:
        """Write each step at once, if its run's lease is still this worker's, and renew the lease
        (None for a run whose lease was lost: nothing of its step was written; the error for a run
        whose books Redis refused, a key of another type: the other runs' steps are written).
        One round trip."""
        if not steps:
            return {}
        with self.redis.pipeline(transaction=False) as pipe:
            for step in steps:
                self._commit(pipe, step)
            answers = pipe.execute(raise_on_error=False)
        for answer in answers:
            if isinstance(answer, redis.RedisError) and not isinstance(answer, redis.ResponseError):
                raise answer
        return {step.run: answer if isinstance(answer, redis.ResponseError) else
                Committed([s.decode() for s in answer[0]], DeliveryState.from_hash(_pairs(answer[1])))
                if answer else None for step, answer in zip(steps, answers)}

    def _commit(self, pipe: Any, step: Step) -> None:
        k, run, state = self.keys, step.run, step.state
        outbox = [(span.span_id, span.data) for span in step.spans]
        outbox += [(slot(score), orjson.dumps(score)) for score in step.scores]
        threads = list(step.thread_totals.items())
        args: list[Any] = [step.token, self.lease_ms, state.model_dump_json() if state else "",
                           1 if state and state.closed else 0,
                           self.done_ttl, self.thread_ttl, run, len(outbox), len(step.consumed), len(step.shown)]
        for pair in outbox:
            args += pair
        args += step.consumed
        args += step.shown
        args += [usage.model_dump_json() for _, usage in threads]
        pipe.eval(_COMMIT, 8 + len(threads), k.lease(run), k.state(run), k.outbox(run), k.log(run), k.active,
                  k.delivery(run), k.conflicts(run), k.seqs(run), *(k.thread_usage(thread) for thread, _ in threads),
                  *args)

    def finish(self, pipe: Any, run: str, token: str, next_seq: int, closed: bool) -> None:
        """Let a run go (in `pipe`; its answer: [1 when its next entry waits, items left in its
        outbox]). `next_seq` -1: nobody asks whether an entry waits."""
        k = self.keys
        pipe.eval(_FINISH, 5, k.lease(run), k.log(run), k.outbox(run), k.active, k.backlog, token, run, next_seq,
                  1 if closed else 0)

    # ---- folding ----

    def load_state(self, run: str) -> RunState | None:
        raw = self.redis.get(self.keys.state(run))
        return RunState.model_validate_json(raw) if raw else None

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

    def thread_baseline(self, thread: str) -> Usage | None:
        raw = self.redis.get(self.keys.thread_usage(thread))
        return Usage.model_validate_json(raw) if raw else None

    def add_scores(self, pipe: Any, run: str, scores: Iterable[dict[str, Any]]) -> None:
        """Scores into a run's outbox (`score`: they are delivered like every other)."""
        outbox = {slot(score): orjson.dumps(score) for score in scores}
        if outbox:
            pipe.hset(self.keys.outbox(run), mapping=outbox)

    def guarded(self, run: str, token: str, write: Callable[[Any], None]) -> None:
        """`write` in a transaction, if the run's lease is still `token` (else `LeaseLost`)."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.watch(self.keys.lease(run))
            if pipe.get(self.keys.lease(run)) != token.encode():
                raise LeaseLost(run)
            pipe.multi()
            write(pipe)
            try:
                pipe.execute()
            except redis.WatchError:
                raise LeaseLost(run) from None

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
        the open runs, the backlog, the woken runs and the retries, all in one transaction."""
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
                for books in (self.keys.active, self.keys.backlog, self.keys.woken, self.keys.retrying):
                    pipe.zrem(books, run)
                try:
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue  # an entry was filed meanwhile: take it too

    # ---- delivery ----

    def outbox(self, run: str, trace_id: str, slots: Iterable[str] | None = None
               ) -> tuple[list[Span], list[dict[str, Any]]]:
        """The items in a run's outbox (those of `slots` still there, when given)."""
        if slots is None:
            found = self.redis.hgetall(self.keys.outbox(run)).items()
        else:
            slots = list(slots)
            found = zip(slots, self.redis.hmget(self.keys.outbox(run), slots)) if slots else []
        spans, scores = [], []
        for key, value in found:
            if value is None:
                continue
            key = key.decode() if isinstance(key, bytes) else key
            if is_score_slot(key):
                scores.append(orjson.loads(value))
            else:
                spans.append(Span(key, trace_id, value))
        return spans, scores

    def raw_outbox(self, run: str) -> dict[str, str]:
        return {k.decode(): v.decode("utf-8", "replace") for k, v in self.redis.hgetall(self.keys.outbox(run)).items()}

    def renew(self, leases: dict[str, str]) -> set[str]:
        """Renew the leases of these runs (run -> token); returns the runs whose lease was lost."""
        with self.redis.pipeline(transaction=False) as pipe:
            for run, token in leases.items():
                pipe.eval(RENEW, 1, self.keys.lease(run), token, self.lease_ms)
            return {run for run, renewed in zip(leases, pipe.execute()) if not renewed}

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


def _pairs(flat: list[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2]))
