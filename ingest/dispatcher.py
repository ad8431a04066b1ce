"""The dispatcher: from the event stream to runs' logs, waking the runs (`wake`).

It reads the stream in a consumer group (so any number of dispatchers share it), files each
entry under its run (idempotent, keyed by the entry's sequence number), wakes the runs touched —
one job for all of them when none is queued, never one per event — and acknowledges only after
filing. Entries of a dispatcher that died
are claimed by the others after `claim_min_idle_ms`; an entry that keeps failing is moved aside
to the poison stream after `max_deliveries`, added there before it is acknowledged here.

Every `sweep_interval` it also wakes runs nobody is working on: runs silent for `idle_timeout`
(their producer died; the job closes them as aborted), runs with entries or deliveries waiting
longer than they should (a job or a worker was lost), trims the stream below the oldest unacknowledged
entry, and removes the consumers of dispatchers that died once their entries were claimed.

A run id reused by a second run (another `inst`) is filed under a run key of its own and said
so in the log; `status` counts such run ids. A lost Redis never ends a dispatcher: it waits with
backoff and goes on.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
import redis

from codex_langfuse.ingest import connections, metrics
from codex_langfuse.ingest.entries import Entry, InvalidEntry
from codex_langfuse.ingest.registry import Heartbeat, Registry, describe
from codex_langfuse.ingest.wake import queue_job, wake_runs
from codex_langfuse.ingest.runs import RunStore
from codex_langfuse.ingest.settings import Settings

log = logging.getLogger("codex_langfuse.dispatcher")

StreamEntry = tuple[bytes, dict[bytes, bytes]]


class Dispatcher:
    def __init__(self, settings: Settings, connection: redis.Redis | None = None, name: str | None = None):
        self.settings = settings
        self.redis = connection or connections.redis_client(settings)
        self.keys = connections.keys(settings)
        self.queue = connections.queue(settings, self.redis)
        self.store = RunStore(self.redis, self.keys, settings.lease_seconds, settings.done_ttl,
                              id_ttl=settings.ledger_ttl + settings.done_ttl)
        self.registry = Registry(self.redis, self.keys)
        self.stream = settings.stream
        self.group = self.keys.group
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._last_sweep = 0.0
        self.counts = {"filed": 0, "poisoned": 0, "jobs": 0, "claimed": 0, "conflicts": 0}

    def ensure_group(self) -> None:
        try:
            # From the start of the stream: entries written before any dispatcher ran count too.
            self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # ---- one round ----

    def run_once(self, block_ms: int | None = None) -> int:
        """Read and file one batch of new entries (blocking up to `block_ms`); sweep when due."""
        if time.monotonic() - self._last_sweep >= self.settings.sweep_interval:
            self.sweep()
        answer = self.redis.xreadgroup(self.group, self.name, {self.stream: ">"}, count=self.settings.read_count,
                                       block=self.settings.block_ms if block_ms is None else block_ms)
        entries: list[StreamEntry] = answer[0][1] if answer else []
        if entries:
            self.dispatch(entries)
        return len(entries)

    def dispatch(self, entries: list[StreamEntry]) -> None:
        try:
            self._dispatch(entries)
        except redis.ConnectionError:
            raise
        except Exception:  # noqa: BLE001 - isolate the entry that breaks the batch
            log.exception("batch of %d entries failed; filing them one by one", len(entries))
            for entry in entries:
                try:
                    self._dispatch([entry])
                except redis.ConnectionError:
                    raise
                except Exception:  # noqa: BLE001 - left pending; claimed again, poisoned after max_deliveries
                    log.exception("entry %s failed", entry[0])

    def _dispatch(self, entries: list[StreamEntry]) -> None:
        poison: list[tuple[bytes, dict[bytes, bytes], str]] = []
        parsed: list[Entry] = []
        for entry_id, fields in entries:
            try:
                parsed.append(Entry.from_stream(fields))
            except InvalidEntry as exc:
                poison.append((entry_id, fields, f"invalid entry: {exc}"))
                # Its run shows it at once instead of waiting for it; timed by its stream id, so a
                # redelivery files the same placeholder.
                placeholder = exc.placeholder(int(entry_id.split(b"-")[0]) * 1000)
                if placeholder is not None:
                    parsed.append(placeholder)
        now = time.time()
        run_keys, reused = self.store.run_keys(parsed, now) if parsed else ([], set())
        if parsed:
            filed = self.store.file(parsed, run_keys, now)
            if filed.job_needed:
                self.counts["jobs"] += queue_job(self.queue)
            if filed.conflicts:
                self.counts["conflicts"] += filed.conflicts
                log.warning("%d entries arrived again under a sequence number with other data (kept to be shown)",
                            filed.conflicts)
        if self.store.note_reused(reused, now):
            for run in sorted(reused):
                metrics.runs_reused.inc()
                log.warning("run id %s was reused by another run: each is delivered complete, with observations "
                            "of its own, to the same trace; give every run its own id", run)
        self._poison(poison)
        poisoned = {entry_id for entry_id, _, _ in poison}
        good = [entry_id for entry_id, _ in entries if entry_id not in poisoned]
        if good:
            self.redis.xack(self.stream, self.group, *good)
        self.counts["filed"] += len(good)
        metrics.entries_filed.inc(len(good))

    def _poison(self, entries: list[tuple[bytes, dict[bytes, bytes], str]]) -> None:
        """Move entries aside: add to the poison stream first, then acknowledge."""
        if not entries:
            return
        with self.redis.pipeline(transaction=True) as pipe:
            for entry_id, fields, reason in entries:
                pipe.xadd(self.keys.poison, {**fields, b"_id": entry_id, b"_reason": reason.encode()[:1000]})
            pipe.xack(self.stream, self.group, *[e[0] for e in entries])
            pipe.execute()
        self.counts["poisoned"] += len(entries)
        metrics.entries_poisoned.inc(len(entries))
        for entry_id, _, reason in entries:
            log.error("stream entry %s moved to %s: %s", entry_id.decode(), self.keys.poison, reason)

    # ---- housekeeping ----

    def sweep(self) -> None:
        self._last_sweep = time.monotonic()
        self.observe_stream()
        self.claim_abandoned()
        now = time.time()
        settings = self.settings
        idle = self.redis.zrangebyscore(self.keys.active, "-inf", now - settings.idle_timeout, start=0, num=1000)
        stale_after = max(settings.lease_seconds, 30)
        stuck = self.redis.zrangebyscore(self.keys.backlog, "-inf", now - stale_after, start=0, num=1000)
        overdue = self.redis.zrangebyscore(self.keys.retrying, "-inf", now - stale_after, start=0, num=1000)
        retrying_later = set(self.redis.zrangebyscore(self.keys.retrying, now, "+inf"))
        runs = list(dict.fromkeys(r.decode() for r in [*idle, *stuck, *overdue] if r not in retrying_later))
        if runs:
            self.counts["jobs"] += wake_runs(self.store, self.queue, runs)
        self.trim()
        self.remove_dead_consumers()

    def claim_abandoned(self) -> None:
        """Take over entries a dead dispatcher read but never acknowledged."""
        start = "0-0"
        while True:
            start, claimed, *_ = self.redis.xautoclaim(self.stream, self.group, self.name,
                                                       min_idle_time=self.settings.claim_min_idle_ms,
                                                       start_id=start, count=self.settings.read_count)
            if claimed:
                self.counts["claimed"] += len(claimed)
                self._dispatch_claimed([c for c in claimed if c is not None and c[1] is not None])
            if start in (b"0-0", "0-0") or not claimed:
                return

    def _dispatch_claimed(self, claimed: list[StreamEntry]) -> None:
        if not claimed:
            return
        ids = [entry_id for entry_id, _ in claimed]
        pending = self.redis.xpending_range(self.stream, self.group, min=min(ids), max=max(ids), count=len(ids) * 2)
        deliveries = {p["message_id"]: p["times_delivered"] for p in pending}
        too_often = [(i, f, f"failed {deliveries.get(i, 0)} times in the dispatcher") for i, f in claimed
                     if deliveries.get(i, 0) > self.settings.max_deliveries]
        self._poison(too_often)
        retry = [(i, f) for i, f in claimed if deliveries.get(i, 0) <= self.settings.max_deliveries]
        if retry:
            self.dispatch(retry)

    def trim(self) -> None:
        """Drop acknowledged entries, never one still pending (XTRIM MINID deletes regardless)."""
        try:
            summary = self.redis.xpending(self.stream, self.group)
            groups = self.redis.xinfo_groups(self.stream)
        except redis.ResponseError:
            return
        group = next((g for g in groups if g["name"].decode() == self.group), None)
        if group is None:
            return
        floor = summary["min"] if summary and summary.get("pending") else None
        last = group["last-delivered-id"]
        if floor is None:
            # Nothing pending: everything up to the last delivered entry is acknowledged.
            ms, seq = last.decode().split("-")
            floor = f"{ms}-{int(seq) + 1}"
        self.redis.xtrim(self.stream, minid=floor, approximate=False)

    def remove_dead_consumers(self) -> None:
        """Remove the consumers of dispatchers whose heartbeat stopped, once nothing is pending on
        them (their entries were claimed by `claim_abandoned`)."""
        try:
            consumers = self.redis.xinfo_consumers(self.stream, self.group)
        except redis.ResponseError:
            return
        live = {entry["name"] for entry in self.registry.alive("dispatcher")}
        for consumer in consumers:
            name = consumer["name"].decode() if isinstance(consumer["name"], bytes) else consumer["name"]
            if name == self.name or name in live or consumer["pending"]:
                continue
            if consumer.get("idle", 0) < self.settings.claim_min_idle_ms:
                continue  # a dispatcher just starting, not registered yet
            self.redis.xgroup_delconsumer(self.stream, self.group, name)
            log.info("removed consumer %s of a dispatcher that is gone", name)

    def observe_stream(self) -> None:
        """The stream's lag and pending entries, for the metrics."""
        try:
            group = next((g for g in self.redis.xinfo_groups(self.stream)
                          if g["name"].decode() == self.group), None)
        except redis.ResponseError:
            return
        if group is not None:
            metrics.stream_lag.set(group.get("lag") or 0)
            metrics.stream_pending.set(group.get("pending") or 0)

    # ---- forever ----

    def run(self, stop: threading.Event | None = None) -> None:
        stop = stop or threading.Event()
        backoff = connections.Backoff(stop=stop)
        heartbeat = Heartbeat(self.registry, describe(self.settings, "dispatcher", self.name)).start()
        started = False
        try:
            while not stop.is_set():
                try:
                    if not started:
                        self.ensure_group()
                        log.info("dispatcher %s reading %s (group %s)", self.name, self.stream, self.group)
                        started = True
                    self.run_once()
                    backoff.reset()
                except redis.RedisError as exc:
                    if isinstance(exc, redis.ResponseError) and "NOGROUP" in str(exc):
                        self.ensure_group()  # Redis came back empty: the group is made again
                        continue
                    delay = backoff.next()
                    metrics.redis_reconnects.labels("dispatcher").inc()
                    log.warning("Redis at %s unavailable (%s); trying again in %.1f s",
                                connections.safe_url(self.settings.redis_url), exc, delay)
                    backoff.sleep(delay)
        finally:
            heartbeat.stop()
