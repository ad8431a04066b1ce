"""The background sender: a bounded in-memory queue drained by one daemon thread into Redis.

Modelled on sentry_sdk's BackgroundWorker. `submit` is all a caller thread ever does: an append
under a lock, never I/O, never blocking, and a "no" when the byte cap is reached. Everything else
(Redis, the spool file, fsync, even logging) happens on the sender thread:

- a batch of queued entries goes to Redis as one pipelined XADD (no transaction), through a
  client with short timeouts and no library retries;
- if Redis refuses or hangs, the batch goes to this process's spool file instead, and so does
  every later batch while the spool holds data (one order: spool first, then the queue);
- the thread retries Redis on its own exponential backoff with jitter (capped at 5 s), drains the
  spool in order once Redis answers, and adopts the spool files of dead producer processes.

After a fork the child gets a fresh queue and thread; the parent's queued entries stay the
parent's business.
"""

from __future__ import annotations

import collections
import logging
import os
import random
import threading
import time
import weakref
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

from codex_langfuse.producer.config import ProducerSettings, default_spool_dir
from codex_langfuse.producer.entries import F_DATA, F_SHRINK_TO, shrink_json_line
from codex_langfuse.producer.spool import SpoolFile, encode_record, orphan_candidates

logger = logging.getLogger("codex_langfuse.producer")

BACKOFF_INITIAL = 0.1
BACKOFF_MAX = 5.0
ADOPT_INTERVAL = 30.0
DEFAULT_BATCH_SIZE = 500
BATCH_MAX_BYTES = 8 * 1024 * 1024  # one pipeline stays well within a round trip of short timeouts
SPOOL_READ_BYTES = 4 * 1024 * 1024

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
    ) -> None:
        self.settings = settings
        self.stats = stats if stats is not None else Stats()
        self.spool_dir = settings.spool_dir if settings.spool_dir is not None else default_spool_dir()
        self._batch_size = batch_size
        self._adopt_interval = adopt_interval
        self._client_factory = client_factory or self._default_client
        # called on the sender thread every heartbeat_seconds (the producer's run heartbeats)
        self._ticker = ticker
        self._reset()
        _senders.add(self)

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._work_ready = threading.Condition(self._lock)
        self._settled = threading.Condition(self._lock)
        self._queue: collections.deque = collections.deque()
        self._queued_bytes = 0
        self._accepted = 0  # entries submit() took
        self._handled = 0   # of those, entries now in Redis, in the spool, or dropped at the spool
        self._flush_waiters = 0
        self._thread: threading.Thread | None = None
        self._closing = False
        self._close_deadline = 0.0
        # owned by the sender thread from here on
        self._client = None  # redis.Redis, made on first use
        self._spool: SpoolFile | None = None
        self._adopted: SpoolFile | None = None
        self._retry_at = 0.0
        self._backoff = 0.0
        self._next_adoption_at = 0.0
        self._next_tick_at = time.monotonic() + self.settings.heartbeat_seconds
        self._outage = False
        self._spool_full_episode = False
        self._spool_error_episode = False
        self._queue_full_episode = False
        self._queue_drops_seen = 0

    def _after_fork(self) -> None:
        """In a forked child: start over with an empty queue; leave the parent's files to the parent."""
        inherited = (self._spool, self._adopted)
        closing = self._closing
        self._reset()
        self.stats.reset()
        self._closing = closing
        for spool in inherited:
            if spool is not None:
                spool.forget_after_fork()

    # ---- caller threads ----

    def submit(self, fields: dict, size: int, essential: bool = False) -> bool:
        """Queue one entry. Never blocks, never does I/O; False (and counted) when full or closed.
        An `essential` entry (a run's start or end: small, one of each) is taken past the cap."""
        return self.submit_many([(fields, size)], essential) == 1

    def submit_many(self, entries: list[tuple[dict, int]], essential: bool = False) -> int:
        """Queue entries in order under one lock; returns how many were taken (a prefix: after the
        first that does not fit, none is taken, so a run's sequence numbers stay gapless)."""
        if self._pid != os.getpid():
            self._after_fork()
        with self._lock:
            if self._closing:
                self.stats.add("dropped_closed", len(entries))
                return 0
            taken = 0
            for fields, size in entries:
                # an entry larger than the whole cap is still taken into an empty queue
                if self._queue and not essential and self._queued_bytes + size > self.settings.queue_max_bytes:
                    break
                self._queue.append((fields, size))
                self._queued_bytes += size
                taken += 1
            self._accepted += taken
            if taken:
                self._ensure_thread()
                self._work_ready.notify()
        if taken < len(entries):
            self.stats.add("dropped_queue_full", len(entries) - taken)
        if taken:
            self.stats.add("submitted", taken)
        return taken

    def queued(self) -> int:
        with self._lock:
            return len(self._queue)

    def flush(self, timeout: float) -> bool:
        """Wait until everything submitted so far is in Redis or in the spool file (or was dropped at
        the spool cap, which is counted). False if `timeout` seconds pass first."""
        deadline = time.monotonic() + max(0.0, timeout)
        if self._pid != os.getpid():
            self._after_fork()
        with self._lock:
            target = self._accepted
            if self._handled >= target:
                return True
            self._ensure_thread()
            self._flush_waiters += 1
            try:
                self._work_ready.notify()
                while self._handled < target:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._settled.wait(remaining)
                return True
            finally:
                self._flush_waiters -= 1

    def close(self, timeout: float) -> bool:
        """Flush within `timeout`, then stop the thread (it sends what it can of the spool until the
        deadline, then unlocks the spool file for adoption). Returns by the deadline."""
        deadline = time.monotonic() + max(0.0, timeout)
        flushed = self.flush(timeout)
        with self._lock:
            self._closing = True
            self._close_deadline = deadline
            thread = self._thread
            self._work_ready.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
        return flushed

    def _ensure_thread(self) -> None:
        # called with self._lock held
        if self._thread is not None and self._thread.is_alive():
            return
        thread = threading.Thread(target=self._run, name="codex-langfuse-sender", daemon=True)
        try:
            thread.start()
        except RuntimeError:
            return  # interpreter shutting down: entries stay queued, flush() will say so
        self._thread = thread

    # ---- the sender thread ----

    def _run(self) -> None:
        while True:
            try:
                batch = self._take_batch()
                if batch is None:
                    break
                if batch:
                    self._deliver(batch)
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

    def _take_batch(self) -> list | None:
        """Up to batch_size queued entries; [] when background work is due; None once closed and empty."""
        with self._lock:
            while not self._queue:
                if self._closing:
                    return None
                timeout = self._idle_timeout()
                if timeout <= 0 or not self._work_ready.wait(timeout):
                    return []
            batch, batch_bytes = [], 0
            while self._queue and len(batch) < self._batch_size and batch_bytes < BATCH_MAX_BYTES:
                fields, size = self._queue.popleft()
                self._queued_bytes -= size
                batch_bytes += size
                batch.append(fields)
            return batch

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

    def _deliver(self, batch: list) -> None:
        try:
            for fields in batch:
                if F_SHRINK_TO in fields:
                    _shrink(fields)
            if (self._spool is not None and self._spool.pending) or time.monotonic() < self._retry_at:
                self._append_to_spool(batch)
                return
            try:
                self._xadd(batch)
            except Exception as exc:
                self._redis_failed(exc)
                self._append_to_spool(batch)
            else:
                self._redis_answered()
                self.stats.add("sent", len(batch))
        finally:
            with self._lock:
                self._handled += len(batch)
                self._settled.notify_all()

    def _xadd(self, entries: list) -> None:
        if self._client is None:
            self._client = self._client_factory()
        pipeline = self._client.pipeline(transaction=False)
        for fields in entries:
            pipeline.xadd(self.settings.stream, fields)
        pipeline.execute()

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
        if self._client is not None:
            try:
                self._client.connection_pool.disconnect()  # a timed-out connection may hold a late reply
            except Exception:
                pass
        if not self._outage:
            self._outage = True
            logger.warning(
                "Redis at %s is not answering (%s: %s); spooling entries to %s until it does",
                _redact(self.settings.redis_url), type(exc).__name__, exc, self.spool_dir,
            )

    def _redis_answered(self) -> None:
        self._backoff = 0.0
        self._retry_at = 0.0
        if self._outage:
            self._outage = False
            logger.warning("Redis at %s answers again; sending the spooled entries", _redact(self.settings.redis_url))

    def _append_to_spool(self, batch: list) -> None:
        try:
            if self._spool is None:
                self._spool = SpoolFile.create(self.spool_dir)
            written = self._spool.append([encode_record(fields) for fields in batch], self.settings.spool_max_bytes)
            if self._flush_waiters or not self._queue:
                self._spool.sync()
        except OSError as exc:
            self.stats.add("dropped_spool_error", len(batch))
            if not self._spool_error_episode:
                self._spool_error_episode = True
                logger.error("cannot write the spool file in %s (%s): entries are lost while Redis is unreachable", self.spool_dir, exc)
            return
        self._spool_error_episode = False
        self.stats.add("spooled", written)
        if written < len(batch):
            self.stats.add("dropped_spool_full", len(batch) - written)
            if not self._spool_full_episode:
                self._spool_full_episode = True
                logger.error(
                    "spool file %s reached its cap of %d bytes: entries are dropped until Redis takes the spooled ones",
                    self._spool.path, self.settings.spool_max_bytes,
                )

    def _background_step(self) -> None:
        if time.monotonic() < self._retry_at or self._flush_waiters:
            # Someone waits for the queue (a runner closing): moving it out of memory comes first;
            # probing Redis with the spool could block on a hung server for the socket timeout.
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
        if records:
            try:
                self._xadd(records)
            except Exception as exc:
                self._redis_failed(exc)
                return
            self._redis_answered()
            self.stats.add("sent", len(records))
            self.stats.add("spool_replayed", len(records))
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
        """Lock the first spool file whose owner is gone and that still holds unsent entries."""
        own = [self._spool.path] if self._spool is not None else []
        for path in orphan_candidates(self.spool_dir, exclude=own):
            spool = SpoolFile.adopt(path)
            if spool is None:
                continue
            if spool.pending:
                logger.info("adopting spool file %s of a finished process (%d bytes to send)", path, spool.end - spool.confirmed)
                return spool
            spool.release(delete=True)
        self._next_adoption_at = time.monotonic() + self._adopt_interval
        return None

    def _report_queue_drops(self) -> None:
        drops = self.stats.get("dropped_queue_full")
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
        # until the close deadline, send what Redis takes of our spool (what is left is adopted later)
        while self._spool is not None and self._spool.pending:
            now = time.monotonic()
            if now >= self._close_deadline or now < self._retry_at:
                break
            self._drain(self._spool)
        if self._spool is not None:
            pending = self._spool.pending
            if pending:
                try:
                    self._spool.sync()
                except OSError:
                    pass
            self._spool.release(delete=not pending)  # what is left waits for the next producer
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
        self.stats.log_notes()


def _shrink(fields: dict) -> None:
    """An oversized line: its long strings cut so it stays JSON, else the plain cut."""
    limit = int(fields.pop(F_SHRINK_TO))
    line = fields[F_DATA]
    fields[F_DATA] = shrink_json_line(line, limit) or line[:limit]


def _redact(url: str) -> str:
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        user = f"{parts.username}:***@" if parts.username else ":***@"
        return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))
    except ValueError:
        return "<redis url>"


def _reset_senders_in_child() -> None:
    for sender in list(_senders):
        sender._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_senders_in_child)
