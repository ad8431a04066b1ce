"""codex-langfuse producer: capture Codex CLI output inside any runner and ship it to a Redis stream.

    from codex_langfuse.producer import Producer
    producer = Producer()                       # REDIS_URL, CODEX_LANGFUSE_* from the environment
    run = producer.start_run(model="gpt-5-codex", user_id="ci", tags=["nightly"])
    for line in codex_stdout:                   # bytes or str, one JSONL line each
        run.emit(line)
    run.finish(exit_code)
    producer.close(timeout=5)

`emit`, `update`, `score` and `finish` are in-memory hand-offs: no Redis call, socket, file write
or fsync on the caller's thread, no exception ever, and `False` (counted in `stats()`) when an
entry had to be dropped. A background thread sends to Redis, or to a local spool file while Redis
is unreachable. Only the standard library is imported here; the sender thread imports `redis`
when it first sends.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import time
import weakref
from typing import Any, Callable, Iterable, Mapping

from codex_langfuse.producer.config import ProducerSettings, logger
from codex_langfuse.producer.entries import (
    DEFAULT_STREAM,
    END_REASON_CLOSED,
    END_REASON_EOF,
    END_REASON_EXITED,
    END_REASONS,
    ENTRY_VERSION,
    F_SHRINK_TO,
    KIND_END,
    KIND_LINE,
    KIND_META,
    KIND_SCORE,
    KIND_START,
    KINDS,
    SCORE_DATA_TYPES,
    SHRINKABLE_FACTOR,
    decode_fields,
    encode_json,
    entry_fields,
    fields_size,
    is_valid_run_id,
    normalize_environment,
    now_us,
    parse_traceparent,
    strip_line_ending,
    trace_id,
)
from codex_langfuse.producer.sender import ADOPT_INTERVAL, DEFAULT_BATCH_SIZE, Sender, Stats

__all__ = [
    "DEFAULT_STREAM", "ENTRY_VERSION", "KINDS", "KIND_START", "KIND_LINE", "KIND_META", "KIND_SCORE",
    "KIND_END", "END_REASONS", "END_REASON_EXITED", "END_REASON_EOF", "END_REASON_CLOSED",
    "SCORE_DATA_TYPES", "Producer", "ProducerSettings", "Run", "decode_fields", "is_valid_run_id", "trace_id",
]

# how long the interpreter's exit waits for a producer nobody closed
EXIT_FLUSH_TIMEOUT = 2.0

# kept equal to pyproject.toml's version (a test checks); importlib.metadata would cost ~15 ms
__version__ = "0.1.0"


class Run:
    """One Codex run: numbers its entries 0, 1, 2, ... and hands them to the producer's sender.

    Thread-safe. A dropped entry does not take a sequence number, so the stream stays gapless;
    if the `start` entry itself could not be queued it is retried before the next entry.
    """

    def __init__(self, producer: "Producer", run_id: str, start_data: bytes, start_ts: int,
                 parent: str | None = None):
        self.run_id = run_id
        joined = parse_traceparent(parent)
        self.trace_id = joined[0] if joined else trace_id(run_id)  # the caller's when the run joined it
        self._producer = producer
        self._lock = threading.Lock()
        self._next_seq = 0
        self._unqueued_start: tuple[bytes, int] | None = (start_data, start_ts)
        self._finished = False
        self._pid = os.getpid()
        self._last_entry_at = time.monotonic()

    def __repr__(self) -> str:
        return f"Run(run_id={self.run_id!r}, trace_id={self.trace_id!r})"

    @property
    def finished(self) -> bool:
        return self._finished

    def emit(self, line: bytes | str, *, original_length: int | None = None) -> bool:
        """One Codex stdout line (a trailing \\n or \\r\\n is removed). Lines over the maximum line size
        are cut and carry their original length; pass `original_length` if you cut it yourself."""
        return self.emit_lines([(line, original_length)]) == 1

    def emit_lines(self, lines: Iterable[tuple[bytes | str, int | None]]) -> int:
        """Several lines read at once, as (line, original length or None): one hand-off for all,
        stamped with one time. Returns how many were taken (a prefix; the rest hit the cap)."""
        try:
            prepared = [self._prepare(line, original_length) for line, original_length in lines]
            return self._submit_lines(prepared)
        except Exception as exc:
            self._producer._failed("emit", exc)
            return 0

    def emit_recorded(self, lines: Iterable[tuple[bytes | str, int]]) -> int:
        """Lines recorded earlier, each with its own time (microseconds since the epoch): a history
        replayed (`codex-langfuse import`), where the stream entry's `ts` is when Codex wrote it.
        One hand-off for all; returns how many were taken (a prefix; the rest hit the cap)."""
        try:
            prepared = []
            stamps = []
            for line, ts in lines:
                prepared.append(self._prepare(line, None))
                stamps.append(int(ts))
            return self._submit_lines(prepared, stamps)
        except Exception as exc:
            self._producer._failed("emit", exc)
            return 0

    def _prepare(self, line: bytes | str, original_length: int | None) -> tuple[bytes, int | None, int | None]:
        """(data, trunc, shrink_to) of one line."""
        if isinstance(line, str):
            line = line.encode("utf-8", "surrogateescape")
        elif isinstance(line, (bytearray, memoryview)):
            line = bytes(line)
        elif not isinstance(line, bytes):
            raise TypeError(f"a line is bytes or str, not {type(line).__name__}")
        line = strip_line_ending(line)
        limit = self._producer.settings.max_line_bytes
        whole = original_length is None or original_length <= len(line)
        trunc = None if whole else original_length
        shrink_to = None
        if len(line) > limit:
            trunc = max(trunc or 0, len(line))
            if whole and len(line) <= limit * SHRINKABLE_FACTOR:
                shrink_to = limit  # the sender thread shrinks it as JSON, off the caller's thread
            else:
                line = line[:limit]
        if trunc is not None:
            self._producer._stats.add("truncated")
        return line, trunc, shrink_to

    def update(self, **meta: Any) -> bool:
        """A `meta` entry: keys of the start entry (prompt, codex_version, model, ...) to merge in."""
        try:
            if not meta:
                return True
            return self._submit(KIND_META, encode_json(self._producer._cap_prompt(meta)))
        except Exception as exc:
            return self._producer._failed("update", exc)

    def score(self, name: str, value: Any, *, comment: str | None = None, data_type: str | None = None) -> bool:
        """A `score` entry for this run's trace."""
        try:
            if not isinstance(name, str) or not name:
                raise ValueError(f"score name must be a non-empty string, not {name!r}")
            if not isinstance(value, (bool, int, float, str)):
                raise ValueError(f"score value must be a number, bool or string, not {type(value).__name__}")
            if data_type is not None and data_type not in SCORE_DATA_TYPES:
                raise ValueError(f"score data_type must be one of {SCORE_DATA_TYPES}, not {data_type!r}")
            data: dict[str, Any] = {"name": name, "value": value}
            if data_type is not None:
                data["data_type"] = data_type
            if comment is not None:
                data["comment"] = str(comment)
            return self._submit(KIND_SCORE, encode_json(data))
        except Exception as exc:
            return self._producer._failed("score", exc)

    def finish(self, exit_code: int | None, *, signal: int | None = None, reason: str = END_REASON_EXITED,
               ts: int | None = None) -> bool:
        """The `end` entry. Idempotent: once the end is queued, later calls change nothing and say True.
        `ts`: when the run ended, for a replayed history (default: now)."""
        try:
            if self._finished:
                return True
            for label, number in (("exit_code", exit_code), ("signal", signal)):
                if number is not None and (isinstance(number, bool) or not isinstance(number, int)):
                    raise ValueError(f"{label} must be an int or None, not {number!r}")
            if reason not in END_REASONS:
                raise ValueError(f"reason must be one of {END_REASONS}, not {reason!r}")
            data = encode_json({"exit_code": exit_code, "signal": signal, "reason": reason})
            return self._submit(KIND_END, data, ts)
        except Exception as exc:
            return self._producer._failed("finish", exc)

    def _submit(self, kind: str, data: bytes, ts: int | None = None) -> bool:
        if os.getpid() != self._pid:
            # a forked child's copy of the run: its sequence numbers would collide with the parent's
            raise RuntimeError(f"run {self.run_id} belongs to process {self._pid}; start a new run after fork")
        sender = self._producer._sender
        with self._lock:
            if self._finished:
                return kind == KIND_END  # a second finish() (even a concurrent one) finds the end queued
            if not self._queue_start(sender):
                self._producer._stats.add("dropped_queue_full")  # this entry, on top of the start
                return False
            queued = self._queue(sender, kind, data, now_us() if ts is None else ts)
            if queued and kind == KIND_END:
                self._finished = True
        if self._finished:
            self._producer._forget(self)
        return queued

    def _submit_lines(self, lines: list[tuple[bytes, int | None, int | None]], stamps: list[int] | None = None) -> int:
        if os.getpid() != self._pid:
            raise RuntimeError(f"run {self.run_id} belongs to process {self._pid}; start a new run after fork")
        if not lines:
            return 0
        sender = self._producer._sender
        with self._lock:
            if self._finished:
                return 0
            if not self._queue_start(sender):
                self._producer._stats.add("dropped_queue_full", len(lines))
                return 0
            ts = now_us()
            entries = []
            for offset, (data, trunc, shrink_to) in enumerate(lines):
                stamp = ts if stamps is None else stamps[offset]
                fields = entry_fields(self.run_id, self._next_seq + offset, KIND_LINE, data, stamp, trunc)
                if shrink_to is not None:
                    fields[F_SHRINK_TO] = str(shrink_to)
                entries.append((fields, fields_size(fields)))
            taken = sender.submit_many(entries)
            self._next_seq += taken
            if taken:
                self._last_entry_at = time.monotonic()
        return taken

    def _queue_start(self, sender: Sender) -> bool:
        # called with self._lock held
        if self._unqueued_start is None:
            return True
        start_data, start_ts = self._unqueued_start
        if not self._queue(sender, KIND_START, start_data, start_ts):
            return False
        self._unqueued_start = None
        return True

    def _queue(self, sender: Sender, kind: str, data: bytes, ts: int) -> bool:
        # called with self._lock held: the sequence number is taken only if the entry is queued
        fields = entry_fields(self.run_id, self._next_seq, kind, data, ts)
        if not sender.submit(fields, fields_size(fields), essential=kind in (KIND_START, KIND_END)):
            return False
        self._next_seq += 1
        self._last_entry_at = time.monotonic()
        return True

    def _heartbeat(self, silent_for: float) -> None:
        """An empty `meta` entry when the run has been silent for `silent_for` seconds."""
        if not self._finished and time.monotonic() - self._last_entry_at >= silent_for:
            self._submit(KIND_META, b"{}")


class Producer:
    """Hands entries of any number of runs to one background sender. See the module docstring."""

    def __init__(
        self,
        redis_url: str | None = None,
        stream: str | None = None,
        *,
        spool_dir: str | os.PathLike | None = None,
        queue_max_bytes: int | None = None,
        spool_max_bytes: int | None = None,
        max_line_bytes: int | None = None,
        heartbeat_seconds: float | None = None,
        redis_timeout: float | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        adopt_interval: float = ADOPT_INTERVAL,
        redis_client_factory: Callable[[], Any] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """Arguments left None come from the environment (see producer.config). `redis_client_factory`
        replaces the sender's Redis client (tests use fakeredis)."""
        self.settings = ProducerSettings.from_env(
            environ,
            redis_url=redis_url, stream=stream, spool_dir=spool_dir, queue_max_bytes=queue_max_bytes,
            spool_max_bytes=spool_max_bytes, max_line_bytes=max_line_bytes, redis_timeout=redis_timeout,
            heartbeat_seconds=heartbeat_seconds,
        )
        self._stats = Stats()
        self._sender = Sender(
            self.settings, self._stats, batch_size=batch_size, adopt_interval=adopt_interval,
            client_factory=redis_client_factory, ticker=self._heartbeats,
        )
        self._runs_lock = threading.Lock()
        self._open_runs: "weakref.WeakSet[Run]" = weakref.WeakSet()
        self._closed = False
        _producers.add(self)

    def start_run(
        self,
        run_id: str | None = None,
        model: str | None = None,
        name: str | None = None,
        user_id: str | None = None,
        session_id: str | None = None,
        tags: Iterable[str] = (),
        metadata: Mapping[str, Any] | None = None,
        environment: str | None = None,
        prompt: str | None = None,
        cwd: str | None = None,
        codex_version: str | None = None,
        model_parameters: Mapping[str, Any] | None = None,
        parent: str | None = None,
        set_trace_attributes: bool = False,
        ts: int | None = None,
        **extra: Any,
    ) -> Run:
        """Start a run and queue its `start` entry (seq 0). Raises ValueError only for a run id that
        breaks the contract (1-128 characters of [A-Za-z0-9._:-]; a new UUID4 by default) and for an
        environment Langfuse would not keep (it would store `default`); one it would change
        (`Staging` -> `staging`) is sent as Langfuse stores it, with a warning.

        `parent`: a W3C `traceparent` (e.g. the caller's `TRACEPARENT`): the run joins that trace, its
        root a child of that span, and leaves the trace's name, metadata, input and output to the
        caller unless `set_trace_attributes`. An invalid one is ignored with a warning.
        `ts`: when the run started, for a replayed history (default: now)."""
        if run_id is None:
            import uuid

            run_id = str(uuid.uuid4())
        if not is_valid_run_id(run_id):
            raise ValueError(f"run id must be 1-128 characters of [A-Za-z0-9._:-], not {run_id!r}")
        if environment is not None:
            environment = checked_environment(environment)
        if parent is not None and parse_traceparent(parent) is None:
            logger.warning("codex-langfuse: ignoring parent %r: not a W3C traceparent "
                           "(00-<32 hex trace id>-<16 hex span id>-<2 hex flags>); the run gets a trace of its own",
                           parent)
            parent = None
        data: dict[str, Any] = {
            "name": name, "model": model, "user_id": user_id, "session_id": session_id,
            "tags": [str(tag) for tag in tags] or None, "metadata": dict(metadata) if metadata else None,
            "environment": environment, "prompt": prompt, "cwd": cwd, "codex_version": codex_version,
            "model_parameters": dict(model_parameters) if model_parameters else None,
            "parent": parent.strip() if parent else None, "set_trace_attributes": set_trace_attributes or None,
        }
        data.update(extra)
        data = {key: value for key, value in data.items() if value is not None}
        data["producer"] = {
            "name": "codex-langfuse", "version": __version__, "host": socket.gethostname(), "pid": os.getpid(),
        }
        run = Run(self, run_id, encode_json(self._cap_prompt(data)), now_us() if ts is None else int(ts),
                  parent=parent)
        with self._runs_lock:
            self._open_runs.add(run)
        with run._lock:
            run._queue_start(self._sender)  # if the queue is full, the next entry of the run retries it
        return run

    def flush(self, timeout: float) -> bool:
        """True when everything submitted so far is in Redis or in the spool file."""
        try:
            return self._sender.flush(timeout)
        except Exception as exc:
            return self._failed("flush", exc)

    def close(self, timeout: float = 5.0) -> bool:
        """End the runs still open (reason "closed"), flush within `timeout` seconds, stop the thread.
        Never takes longer than `timeout`. Entries submitted afterwards are refused."""
        try:
            with self._runs_lock:
                still_open = list(self._open_runs)
            for run in still_open:
                run.finish(None, reason=END_REASON_CLOSED)
            self._closed = True
            flushed = self._sender.close(timeout)
            self._stats.log_notes()  # in case the sender thread never ran to log them
            return flushed
        except Exception as exc:
            return self._failed("close", exc)

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> dict:
        counts = self._stats.snapshot()
        counts["queued"] = self._sender.queued()
        return counts

    def _after_fork(self) -> None:
        # the runs belong to the parent: the child neither ends them on close nor writes to them
        self._runs_lock = threading.Lock()
        self._open_runs = weakref.WeakSet()

    def _heartbeats(self) -> None:
        """On the sender thread: keep silent open runs from looking abandoned."""
        with self._runs_lock:
            runs = list(self._open_runs)
        for run in runs:
            run._heartbeat(self.settings.heartbeat_seconds)

    def _forget(self, run: Run) -> None:
        with self._runs_lock:
            self._open_runs.discard(run)

    def _cap_prompt(self, data: dict) -> dict:
        prompt = data.get("prompt")
        limit = self.settings.max_line_bytes
        if isinstance(prompt, str) and len(prompt) > limit // 4:
            encoded = prompt.encode("utf-8", "surrogateescape")
            if len(encoded) > limit:
                data = dict(data, prompt=encoded[:limit].decode("utf-8", "ignore"))
        return data

    def _failed(self, what: str, exc: BaseException) -> bool:
        self._stats.add("errors")
        self._stats.note(logging.WARNING, "codex-langfuse producer: %s failed: %s: %s", what, type(exc).__name__, exc)
        return False


def checked_environment(environment: str) -> str:
    """The environment as Langfuse will store it, with a warning when that is not what was given.
    ValueError when Langfuse would not keep it at all."""
    normalized = normalize_environment(environment)
    if normalized != environment:
        logger.warning("codex-langfuse: environment %r is sent as %r, as Langfuse stores it", environment, normalized)
    return normalized


_producers: "weakref.WeakSet[Producer]" = weakref.WeakSet()


@atexit.register
def _close_producers_at_exit() -> None:
    for producer in list(_producers):
        if not producer.closed:
            producer.close(EXIT_FLUSH_TIMEOUT)


def _forget_parent_runs_in_child() -> None:
    for producer in list(_producers):
        producer._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_parent_runs_in_child)
