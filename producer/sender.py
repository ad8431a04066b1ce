"""The background sender: a bounded in-memory queue drained by one daemon thread into Redis.

Modelled on sentry_sdk's BackgroundWorker: one small class, a bounded queue, `put` that never
blocks (it says no when the queue is full), `flush` with a deadline, and a thread that is started
again in a forked child. A caller thread only appends a tuple under one lock; numbering the
entries (in queue order), building the stream fields, Redis, the spool file, fsync and logging
all happen on the sender thread:

- the sender sleeps until an item arrives; only a sleeping sender is woken (a busy one costs
  callers nothing), and it then lingers a few ms so that the entries around it share one write;
- a batch goes to Redis as XADDs packed by xadd.py and written at once, through a connection with
  short timeouts and no library retries;
- if Redis refuses or hangs, or the queue holds more than Redis is taking (a flood), the batch goes
  to this process's spool file instead, and so does every later batch while the spool holds data
  (one order: spool first, then the queue);
- the thread retries Redis on its own exponential backoff with jitter (capped at 5 s), drains the
  spool in order once Redis answers, and adopts the spool files that dead producers left for the
  same destination, in the background and again while closing, until the close deadline.

After a fork the child gets a fresh queue and thread; the parent's queued entries stay the
parent's business. A sender made with threaded=False has no thread: its owner calls pump() and
idle_work(), which run the same steps (the capture process of `run` and `tee` does).
"""

from __future__ import annotations

import collections
import logging
import os
import random
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable

from codex_langfuse.producer.config import ProducerSettings, default_spool_dir
from codex_langfuse.producer.destination import destination_id, redact_url
from codex_langfuse.producer.entries import KIND_END, KIND_START
from codex_langfuse.producer.spool import SpoolFile, encode_record, item_entries, orphan_candidates
from codex_langfuse.producer.xadd import LINES, XaddPacker

logger = logging.getLogger("codex_langfuse.producer")

BACKOFF_INITIAL = 0.1
BACKOFF_MAX = 5.0
ADOPT_INTERVAL = 30.0
DEFAULT_BATCH_SIZE = 500
BATCH_MAX_BYTES = 8 * 1024 * 1024  # one pipeline stays well within a round trip of short timeouts
SPOOL_READ_BYTES = 4 * 1024 * 1024
# a woken sender waits this long for more entries, so that a steady trickle costs one wake-up and
# one write per few ms instead of one per line
LINGER_SECONDS = 0.005
# what a queued item holds besides its data (the tuple, its numbers, the queue slot), counted
# against the queue's byte cap so that the cap bounds the memory really used
ITEM_OVERHEAD = 256
# a backlog beyond this share of the queue cap means Redis takes less than arrives: batches then
# go to the spool file (written at disk speed) instead of waiting their turn in memory
SPILL_SHARE = 4
SPOOL_SYNC_INTERVAL = 1.0
# idle_work() asks to be called again at least this often
POLL_CAP_SECONDS = 1.0

COUNTERS = (
    "submitted",            # entries accepted into the queue
    "sent",                 # entries written to Redis (directly or from a spool file)
    "spooled",              # entries appended to this process's spool file
    "spool_replayed",       # entries sent to Redis from a spool file (own or adopted); part of `sent`
    "dropped_queue_full",   # refused: the in-memory queue was at its byte cap
    "dropped_spool_full",   # lost: Redis unreachable and the spool file at its byte cap
    "dropped_spool_error",  # lost: Redis unreachable and the spool file could not be written
    "dropped_closed",       # refused: submitted after close()
    "truncated",            # lines cut to the maximum line size (still sent)
    "redis_errors",         # failed Redis round trips (each one starts or extends a backoff)
    "spool_corrupt",        # spool lines skipped as unreadable (e.g. a crash mid-append)
    "errors",               # calls that failed inside the producer (bad arguments, bugs); logged
)


class Stats:
    """Counters, plus messages for the log. Caller threads must not write to stderr (it can block),
    so they leave a note and the sender thread logs it."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._notes: collections.deque = collections.deque(maxlen=32)

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[name] += amount

    def get(self, name: str) -> int:
        return self._counts[name]

    def snapshot(self) -> dict:
        with self._lock:
            return dict(self._counts)

    def note(self, level: int, message: str, *args) -> None:
        self._notes.append((level, message, args))

    def log_notes(self) -> None:
        while self._notes:
            try:
                level, message, args = self._notes.popleft()
            except IndexError:
                return
            logger.log(level, message, *args)


_senders: "weakref.WeakSet[Sender]" = weakref.WeakSet()


class Sender:
    def __init__(
        self,
        settings: ProducerSettings,
        stats: Stats | None = None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        adopt_interval: float = ADOPT_INTERVAL,
        client_factory: Callable[[], Any] | None = None,
        ticker: Callable[[], None] | None = None,
        threaded: bool = True,
    ) -> None:
        self.settings = settings
        # False: no thread; the owner runs the sender's work itself with pump() and idle_work()
        # (the capture process, whose one thread has nothing else to do)
        self.threaded = threaded
        self.stats = stats if stats is not None else Stats()
        self.spool_dir = Path(settings.spool_dir if settings.spool_dir is not None else default_spool_dir())
        self.destination = destination_id(settings.redis_url, settings.stream)
        # a backlog beyond this goes to the spool
        self._spill_bytes = settings.queue_max_bytes // SPILL_SHARE
        self._batch_size = batch_size
        self._adopt_interval = adopt_interval
        self._client_factory = client_factory or self._default_client
        # called on the sender thread every heartbeat_seconds (the producer's run heartbeats)
        self._ticker = ticker
        self._reset()
        _senders.add(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._work_ready = threading.Condition(self._lock)
        self._settled = threading.Condition(self._lock)
        # items (run id, inst, kind, data, time read, extra): atomic values only, so that the
        # garbage collector stops tracking them (a queue of 64k tracked tuples made its passes long)
        self._queue: collections.deque = collections.deque()
        self._queued_bytes = 0
        # next sequence number of each open run, by inst; used by the delivering thread only
        self._next_seqs: dict[str, int] = {}
        # the byte cap put() checks; -1 once closing, so that one comparison refuses both
        self._cap = self.settings.queue_max_bytes
        self._refused_full = 0    # entries refused at the byte cap
        self._refused_closed = 0  # entries refused after close()
        self._taken = 0           # items the sender thread took off the queue
        self._taken_entries = 0   # the stream entries they hold
        self._handled = 0         # of those, items now in Redis, in the spool, or dropped at the spool
        self._flush_waiters = 0
        self._spool_only = False
        # the sender thread waits for work (or was never started): the next put() wakes (starts) it
        self._idle = True
        self._thread: threading.Thread | None = None
        self._closing = False
        self._close_deadline = 0.0
        # owned by the sender thread from here on
        self._client = None  # redis.Redis, made on first use
        self._connection = None
        self._packer = XaddPacker(self.settings.stream, self.settings.max_line_bytes)
        self._spool: SpoolFile | None = None
        self._adopted: SpoolFile | None = None
        self._adopt_any = False   # deliver adopted records whatever their destination (`spool flush --all`)
        self._not_ours: set[str] = set()  # spool files written for another destination: left alone
        self._retry_at = 0.0
        self._backoff = 0.0
        self._next_adoption_at = 0.0
        self._next_sync_at = 0.0
        self._next_tick_at = time.monotonic() + self.settings.heartbeat_seconds
        self._outage = False
        self._spool_full_episode = False
        self._spool_error_episode = False
        self._queue_full_episode = False
        self._queue_drops_seen = 0

    def _after_fork(self) -> None:
        """In a forked child: start over with an empty queue; leave the parent's files to the parent."""
        # The parent's Redis client is never closed or collected here: its pool's lock may have been
        # held by another thread at the fork, and redis-py's cleanup in the child waits on it forever.
        _inherited_clients.append((self._client, self._connection))
        inherited = (self._spool, self._adopted)
        closing = self._closing
        self._reset()
        self.stats.reset()
        self._closing = closing
        for spool in inherited:
            if spool is not None:
                spool.forget_after_fork()

    # ---- caller threads ----

    def put(self, run, kind: str, data: bytes, extra: Any = None, ts: int | None = None) -> bool:
        """Queue one entry of `run`, read at `ts` (default: now). Never blocks, never does I/O; False
        (and counted) when the queue is full or closed. A run's start and end entries (small, one of
        each) are taken past the cap. The hot path of `emit`: a lock, a comparison, an append."""
        size = len(data) + ITEM_OVERHEAD
        lock = self._lock
        lock.acquire()
        try:
            if run._finished:
                return kind is KIND_END  # a second finish() (even a concurrent one) finds the end queued
            queued_bytes = self._queued_bytes + size
            if queued_bytes > self._cap and not self._over_cap(kind, 1):
                return False
            self._queue.append((run.run_id, run.inst, kind, data, time.time_ns() // 1000 if ts is None else ts, extra))
            self._queued_bytes = queued_bytes
            if kind is KIND_END:
                run._finished = True
            if self._idle:
                self._wake()
        finally:
            lock.release()
        return True

    def retire(self, run) -> None:
        """Take nothing more of `run` (a new start of its inst replaced it): no end, no heartbeat."""
        with self._lock:
            run._finished = True

    def put_lines(self, run, parts: list[tuple[str, bytes, int | None]], ts: int | list[int] | None = None) -> int:
        """Queue lines as `line` entries of `run`, in order. A part is (KIND_LINE, line as read,
        original length if it was cut, else None) or (LINES, newline-terminated lines, how many);
        `ts`, when they were read (default: now), or one time per part (a replayed history).
        Returns how many lines were taken: those of a prefix of `parts`; after the first part that
        does not fit, none is (the sequence stays gapless)."""
        with self._lock:
            if run._finished:
                return 0
            stamps = ts if isinstance(ts, list) else None
            if ts is None:
                ts = time.time_ns() // 1000
            taken = 0
            for position, (kind, data, extra) in enumerate(parts):
                queued_bytes = self._queued_bytes + len(data) + ITEM_OVERHEAD
                if queued_bytes > self._cap and not self._over_cap(kind, sum(_lines(part) for part in parts[position:])):
                    break
                self._queue.append((run.run_id, run.inst, kind, data, ts if stamps is None else stamps[position], extra))
                self._queued_bytes = queued_bytes
                taken += _lines((kind, data, extra))
            if taken and self._idle:
                self._wake()
        return taken

    def _over_cap(self, kind: str, entries: int) -> bool:
        """Called with the lock held for entries beyond the cap: whether to take them anyway (a
        start or end entry, or anything into an empty queue); counts them when not."""
        if self._closing:
            self._refused_closed += entries
            return False
        if kind is KIND_START or kind is KIND_END or not self._queue:
            return True
        self._refused_full += entries
        return False

    def _wake(self) -> None:
        # called with the lock held, when the sender thread sleeps or was never started
        self._idle = False
        if not self.threaded:
            return
        if self._thread is None:
            self._start_thread()
        else:
            self._work_ready.notify()

    def queued(self) -> int:
        with self._lock:
            return len(self._queue)

    def numbered(self, run) -> int:
        """How many entries of `run` were taken off the queue so far (on the delivering thread)."""
        return self._next_seqs.get(run.inst, 0)

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    def spool_everything(self) -> None:
        """From now on every batch goes to the spool file, and the spool is not drained: for a
        process that must be done by a deadline and has more than Redis would take by then."""
        with self._lock:
            self._spool_only = True
            self._wake()

    def counts(self) -> dict:
        """The counters of Stats, with the ones kept under the queue's lock."""
        counts = self.stats.snapshot()
        with self._lock:
            counts["submitted"] = self._taken_entries + sum(map(_lines_of_item, self._queue))
            counts["dropped_queue_full"] = self._refused_full
            counts["dropped_closed"] = self._refused_closed
            counts["queued"] = len(self._queue)
        return counts

    def flush(self, timeout: float) -> bool:
        """Wait until everything submitted so far is in Redis or in the spool file (or was dropped at
        the spool cap, which is counted). False if `timeout` seconds pass first."""
        deadline = time.monotonic() + max(0.0, timeout)
        if not self.threaded:
            self.pump()
            return True
        with self._lock:
            target = self._taken + len(self._queue)
            if self._handled >= target:
                return True
            self._flush_waiters += 1
            try:
                self._wake()  # also cuts a linger short
                while self._handled < target:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._settled.wait(remaining)
                return True
            finally:
                self._flush_waiters -= 1

    def close(self, timeout: float) -> bool:
        """Flush within `timeout`, then stop the thread: until the deadline it sends what Redis takes
        of the spool, its own first, then the leftovers of dead producers for the same destination;
        what is left stays on disk for the next producer. Returns by the deadline."""
        deadline = time.monotonic() + max(0.0, timeout)
        flushed = self.flush(timeout)
        with self._lock:
            self._closing = True
            self._cap = -1
            self._close_deadline = deadline
            self._wake()  # a producer that never sent still delivers leftovers
            thread = self._thread
        if not self.threaded:
            self._shutdown()
            return flushed
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
        return flushed

    def _start_thread(self) -> None:
        # called with self._lock held
        thread = threading.Thread(target=self._run, name="codex-langfuse-sender", daemon=True)
        try:
            thread.start()
        except RuntimeError:
            return  # interpreter shutting down: entries stay queued, flush() will say so
        self._thread = thread

    # ---- a sender without a thread: its owner runs these ----

    def pump(self) -> None:
        """Deliver everything queued, now, on the caller's thread."""
        while True:
            with self._lock:
                if not self._queue:
                    return
                taken = self._pop_batch()
            self._deliver(*taken)

    def idle_work(self) -> float:
        """The background work that is due (the spool, adoption, heartbeats, the log); returns the
        seconds until more is due."""
        self._background_step()
        self._tick()
        self._report_queue_drops()
        self.stats.log_notes()
        return max(0.0, min(self._idle_timeout(), POLL_CAP_SECONDS))

    # ---- the sender thread ----

    def _run(self) -> None:
        while True:
            try:
                taken = self._take_batch()
                if taken is None:
                    break
                batch, spill = taken
                if batch:
                    self._deliver(batch, spill)
                self._background_step()
                self._tick()
                self._report_queue_drops()
                self.stats.log_notes()
            except Exception:
                logger.exception("codex-langfuse sender: unexpected error")
                time.sleep(0.1)
        try:
            self._shutdown()
        except Exception:
            logger.exception("codex-langfuse sender: error while closing")

    def _take_batch(self) -> tuple[list, bool] | None:
        """(up to batch_size entries of queued items, whether the backlog calls for the spool);
        an empty batch when background work is due; None once closed and empty."""
        with self._lock:
            woken = False
            while not self._queue:
                if self._closing:
                    return None
                timeout = self._idle_timeout()
                if timeout <= 0:
                    return [], False
                self._idle = True
                self._work_ready.wait(timeout)
                self._idle = False
                woken = True
            if woken and not self._flush_waiters and not self._closing:
                self._work_ready.wait(LINGER_SECONDS)
            return self._pop_batch()

    def _pop_batch(self) -> tuple[list, bool]:
        """(up to batch_size entries of queued items, numbered, as xadd.py takes them; whether the
        backlog calls for the spool). Called with the lock held, by the one thread that delivers:
        sequence numbers are given here, in queue order, and only here."""
        batch, entries, batch_bytes = [], 0, 0
        while self._queue and entries < self._batch_size and batch_bytes < BATCH_MAX_BYTES:
            run_id, inst, kind, data, ts, extra = self._queue.popleft()
            size = ITEM_OVERHEAD + len(data)
            self._queued_bytes -= size
            batch_bytes += size
            count = extra if kind == LINES else 1
            entries += count
            # A start is seq 0, always: a run sent again under its inst (a turn shipped again after an
            # attempt that failed midway) is numbered as the first time, so its entries are the same.
            seq = 0 if kind == KIND_START else self._next_seqs.get(inst, 0)
            if kind == KIND_END:
                self._next_seqs.pop(inst, None)  # nothing follows a run's end
            else:
                self._next_seqs[inst] = seq + count
            batch.append((run_id, inst, seq, kind, data, ts, extra))
        self._taken += len(batch)
        self._taken_entries += entries
        return batch, self._spool_only or self._queued_bytes > self._spill_bytes

    def _idle_timeout(self) -> float:
        now = time.monotonic()
        tick = self._next_tick_at - now if self._ticker is not None else float("inf")
        if (self._spool is not None and self._spool.pending) or self._adopted is not None:
            return min(self._retry_at - now, tick)
        return min(self._next_adoption_at - now, tick)

    def _tick(self) -> None:
        if self._ticker is None or time.monotonic() < self._next_tick_at:
            return
        self._next_tick_at = time.monotonic() + self.settings.heartbeat_seconds
        self._ticker()

    def _deliver(self, batch: list, spill: bool) -> None:
        try:
            if spill or (self._spool is not None and self._spool.pending) or time.monotonic() < self._retry_at:
                self._append_to_spool(batch)
                return
            try:
                sent = self._xadd(batch)
            except Exception as exc:
                self._redis_failed(exc)
                self._append_to_spool(batch)
            else:
                self._redis_answered()
                self.stats.add("sent", sent)
        finally:
            with self._lock:
                self._handled += len(batch)
                self._settled.notify_all()

    def _xadd(self, items: list) -> int:
        """Write the items' entries to the stream in one round trip; returns how many entries."""
        commands: list[bytes] = []
        count = self._packer.pack(items, commands)
        if self._packer.truncated:
            self.stats.add("truncated", self._packer.truncated)
            self._packer.truncated = 0
        if self._connection is None:
            if self._client is None:
                self._client = self._client_factory()
            self._connection = self._client.connection_pool.get_connection()
        connection = self._connection
        try:
            connection.send_packed_command([b"".join(commands)], check_health=False)
            for _ in range(count):
                connection.read_response()
        except BaseException:
            connection.disconnect()  # replies may still be on their way: never reuse this socket as is
            raise
        return count

    def _default_client(self):
        # Imported here, on the sender thread: `import redis` costs ~0.1 s (it pulls in
        # opentelemetry when installed), which must not delay the runner or Codex's start.
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # short timeouts, no library retries: this thread has its own backoff and the spool
        return redis.Redis.from_url(
            self.settings.redis_url,
            socket_timeout=self.settings.redis_timeout,
            socket_connect_timeout=self.settings.redis_timeout,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            health_check_interval=0,
        )

    def _redis_failed(self, exc: Exception) -> None:
        self.stats.add("redis_errors")
        self._backoff = min(BACKOFF_MAX, max(BACKOFF_INITIAL, self._backoff * 2))
        self._retry_at = time.monotonic() + self._backoff * random.uniform(0.5, 1.0)
        if not self._outage:
            self._outage = True
            logger.warning(
                "Redis at %s is not answering (%s: %s); spooling entries to %s until it does",
                redact_url(self.settings.redis_url), type(exc).__name__, exc, self.spool_dir,
            )

    def _redis_answered(self) -> None:
        self._backoff = 0.0
        self._retry_at = 0.0
        if self._outage:
            self._outage = False
            logger.warning("Redis at %s answers again; sending the spooled entries", redact_url(self.settings.redis_url))

    def _append_to_spool(self, batch: list) -> None:
        entries = sum(item_entries(item) for item in batch)
        try:
            if self._spool is None:
                self._spool = SpoolFile.create(self.spool_dir)
            records = [encode_record(item, self.destination) for item in batch]
            written = self._spool.append(records, self.settings.spool_max_bytes)
            # fsync guards against a machine crash, not a process crash (the page cache has it):
            # once a second, and whenever someone waits for the entries to be safe
            if self._flush_waiters or self._closing or time.monotonic() >= self._next_sync_at:
                self._spool.sync()
                self._next_sync_at = time.monotonic() + SPOOL_SYNC_INTERVAL
        except OSError as exc:
            self.stats.add("dropped_spool_error", entries)
            if not self._spool_error_episode:
                self._spool_error_episode = True
                logger.error("cannot write the spool file in %s (%s): entries are lost while Redis is unreachable", self.spool_dir, exc)
            return
        self._spool_error_episode = False
        spooled = entries if written == len(batch) else sum(item_entries(item) for item in batch[:written])
        self.stats.add("spooled", spooled)
        if spooled < entries:
            self.stats.add("dropped_spool_full", entries - spooled)
            if not self._spool_full_episode:
                self._spool_full_episode = True
                logger.error(
                    "spool file %s reached its cap of %d bytes: entries are dropped until Redis takes the spooled ones",
                    self._spool.path, self.settings.spool_max_bytes,
                )

    def _background_step(self) -> None:
        if time.monotonic() < self._retry_at or self._flush_waiters or self._queue or self._spool_only:
            # Entries wait in memory (a flood, or a runner closing): moving them out of memory
            # comes first; draining the spool, or probing a hung Redis with it, comes after.
            return
        if self._spool is not None and self._spool.pending:
            self._drain(self._spool)
            return
        if self._adopted is None and time.monotonic() >= self._next_adoption_at:
            self._adopted = self._adopt_next()
        if self._adopted is not None:
            self._drain(self._adopted)

    def _drain(self, spool: SpoolFile) -> None:
        """Send the next chunk of a spool file to Redis and remember how far it got."""
        try:
            records, offset, skipped = spool.read(self._batch_size, SPOOL_READ_BYTES)
        except OSError as exc:
            logger.error("cannot read spool file %s: %s", spool.path, exc)
            self._give_up_on(spool)
            return
        if skipped:
            self.stats.add("spool_corrupt", skipped)
            logger.warning("skipped %d unreadable line(s) in spool file %s", skipped, spool.path)
        if spool is self._adopted and not self._adopt_any and any(dest != self.destination for _, dest in records):
            logger.warning("spool file %s holds entries for another destination: left alone", spool.path)
            self._not_ours.add(str(spool.path))
            self._give_up_on(spool)
            return
        if records:
            try:
                sent = self._xadd([item for item, _ in records])
            except Exception as exc:
                self._redis_failed(exc)
                return
            self._redis_answered()
            self.stats.add("sent", sent)
            self.stats.add("spool_replayed", sent)
        try:
            spool.confirm(offset)
        except OSError as exc:
            logger.error("cannot update spool file %s: %s", spool.path, exc)
            self._give_up_on(spool)
            return
        if spool.pending:
            return
        if spool is self._adopted:
            spool.release(delete=True)
            self._adopted = None
        else:
            self._spool_full_episode = False

    def _give_up_on(self, spool: SpoolFile) -> None:
        if spool is self._adopted:
            spool.release(delete=False)  # left for a later adoption
            self._adopted = None
            self._next_adoption_at = time.monotonic() + self._adopt_interval
        else:
            spool.release(delete=False)
            self._spool = None  # a fresh file is created at the next need

    def _adopt_next(self) -> SpoolFile | None:
        """Lock the first spool file, written for our destination, whose owner is gone and that still
        holds unsent entries."""
        exclude = [self._spool.path] if self._spool is not None else []
        for path in orphan_candidates(self.spool_dir, exclude=exclude):
            if str(path) in self._not_ours:
                continue
            spool = SpoolFile.adopt(path)
            if spool is None:
                continue
            if not spool.pending:
                spool.release(delete=True)
                continue
            destination = spool.destination() if not self._adopt_any else self.destination
            if destination != self.destination:
                logger.info("spool file %s was written for another Redis or stream: left alone", path)
                self._not_ours.add(str(path))
                spool.release(delete=False)
                continue
            logger.info("adopting spool file %s of a finished process (%d bytes to send)", path, spool.end - spool.confirmed)
            return spool
        self._next_adoption_at = time.monotonic() + self._adopt_interval
        return None

    def deliver_leftovers(self, deadline: float, any_destination: bool = False) -> None:
        """Until `deadline` (time.monotonic()) or until Redis fails: send this sender's own spool, then
        adopt and send the files dead producers left (for our destination, or any with
        `any_destination`). On the sender thread while closing, or on the caller's thread for a
        sender that never started (`codex-langfuse spool flush`)."""
        self._adopt_any = any_destination
        while time.monotonic() < deadline and time.monotonic() >= self._retry_at and not self._spool_only:
            if self._spool is not None and self._spool.pending:
                self._drain(self._spool)
                continue
            if self._adopted is None:
                self._adopted = self._adopt_next()
                if self._adopted is None:
                    return
            self._drain(self._adopted)

    def _report_queue_drops(self) -> None:
        drops = self._refused_full
        if drops > self._queue_drops_seen:
            self._queue_drops_seen = drops
            if not self._queue_full_episode:
                self._queue_full_episode = True
                logger.error(
                    "in-memory queue at its cap of %d bytes: entries are dropped (the sender cannot keep up)",
                    self.settings.queue_max_bytes,
                )
        elif self._queue_full_episode and not self._queue:
            self._queue_full_episode = False

    def _shutdown(self) -> None:
        self.deliver_leftovers(self._close_deadline)
        self.release()

    def release(self) -> None:
        """Let go of the spool files (what is left of them waits for the next producer) and Redis."""
        if self._spool is not None:
            pending = self._spool.pending
            if pending:
                try:
                    self._spool.sync()
                except OSError:
                    pass
            self._spool.release(delete=not pending)
            self._spool = None
        if self._adopted is not None:
            self._adopted.release(delete=False)
            self._adopted = None
        if self._client is not None:
            try:
                self._client.close()
            except Exception:
                pass
            self._client = None
            self._connection = None
        self.stats.log_notes()


def _lines(part: tuple) -> int:
    return part[2] if part[0] == LINES else 1


def _lines_of_item(item: tuple) -> int:
    return item[5] if item[2] == LINES else 1


_inherited_clients: list[tuple[Any, Any]] = []  # see Sender._after_fork


def _reset_senders_in_child() -> None:
    for sender in list(_senders):
        sender._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_senders_in_child)
