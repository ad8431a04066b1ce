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
entry had to be dropped. `emit` of a bytes line is a type check, a strip and an append to a deque
under one lock (well under a microsecond); the stream fields are built on the sender thread. A
background thread sends to Redis, or to a local spool file while Redis is unreachable or slower
than the lines arrive. Only the standard library is imported here; the sender thread imports `redis`
when it first sends.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
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
    INST_PATTERN,
    KIND_END,
    KIND_LINE,
    KIND_META,
    KIND_SCORE,
    KIND_START,
    KINDS,
    SCORE_DATA_TYPES,
    STDERR_MAX_CHARS,
    decode_fields,
    encode_json,
    is_valid_run_id,
    new_instance_id,
    new_run_id,
    normalize_environment,
    parse_traceparent,
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

    Thread-safe. A sequence number is taken under the sender's lock, and only by an entry that is
    queued, so the stream stays gapless. `inst`, drawn at random here, is on every entry: two runs
    started with the same run id can be told apart.
    """

    def __init__(self, producer: "Producer", run_id: str, parent: str | None = None, inst: str | None = None):
        self.run_id = run_id
        joined = parse_traceparent(parent)
        self.trace_id = joined[0] if joined else trace_id(run_id)  # the caller's when the run joined it
        self.inst = inst or new_instance_id()
        self._producer = producer
        self._sender = producer._sender
        self._put = producer._sender.put
        self._finished = False  # changed under the sender's lock
        self._seq_at_last_beat = -1
        # set in a forked child: the run and its sequence numbers belong to the parent
        self._forked = False

    def __repr__(self) -> str:
        return f"Run(run_id={self.run_id!r}, trace_id={self.trace_id!r})"

    @property
    def finished(self) -> bool:
        return self._finished

    def emit(self, line: bytes | str, *, original_length: int | None = None) -> bool:
        """One Codex stdout line (a trailing \\n or \\r\\n is removed). Lines over the maximum line size
        are cut and carry their original length; pass `original_length` if you cut it yourself."""
        try:
            # The common case is one call: the line object itself is queued (no copy); its line
            # ending is stripped and its size fitted on the sender thread.
            if type(line) is bytes and original_length is None:
                return self._put(self, KIND_LINE, line)
            return self.emit_lines(((line, original_length),)) == 1
        except Exception as exc:
            return self._producer._failed("emit", exc)

    def emit_lines(self, lines: Iterable[tuple[bytes | str, int | None]]) -> int:
        """Several lines read at once, as (line, original length or None): one hand-off for all,
        stamped with one time. Returns how many were taken (a prefix; the rest hit the cap)."""
        try:
            self._check_process()
            return self._sender.put_lines(self, [self._prepare(line, original_length) for line, original_length in lines])
        except Exception as exc:
            self._producer._failed("emit", exc)
            return 0

    def emit_recorded(self, lines: Iterable[tuple[bytes | str, int]]) -> int:
        """Lines recorded earlier, each with its own time (microseconds since the epoch): a history
        replayed (`codex-langfuse import`), where the stream entry's `ts` is when Codex wrote it.
        One hand-off for all; returns how many were taken (a prefix; the rest hit the cap)."""
        try:
            self._check_process()
            parts, stamps = [], []
            for line, ts in lines:
                parts.append(self._prepare(line, None))
                stamps.append(int(ts))
            return self._sender.put_lines(self, parts, stamps)
        except Exception as exc:
            self._producer._failed("emit", exc)
            return 0

    def emit_parts(self, parts: list[tuple[str, bytes, int | None]]) -> int:
        """The lines of one read as `run` and `tee` cut them (passthrough.LineSplitter): (LINES,
        newline-terminated lines, how many) or (KIND_LINE, line, original length if cut). One
        hand-off; the lines are split on the sender thread. Returns how many lines were taken."""
        try:
            self._check_process()
            return self._sender.put_lines(self, parts)
        except Exception as exc:
            self._producer._failed("emit", exc)
            return 0

    @staticmethod
    def _prepare(line: bytes | str, original_length: int | None) -> tuple[str, bytes, int | None]:
        """(KIND_LINE, the line as bytes, its original length if it was cut) of one line."""
        if isinstance(line, str):
            line = line.encode("utf-8", "surrogateescape")
        elif isinstance(line, (bytearray, memoryview)):
            line = bytes(line)
        elif not isinstance(line, bytes):
            raise TypeError(f"a line is bytes or str, not {type(line).__name__}")
        if original_length is not None and (isinstance(original_length, bool) or not isinstance(original_length, int)):
            raise TypeError(f"original_length must be an int or None, not {original_length!r}")
        return KIND_LINE, line, original_length

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

    def finish(
        self, exit_code: int | None, *, signal: int | None = None, reason: str = END_REASON_EXITED,
        stderr: str | None = None, ts: int | None = None,
    ) -> bool:
        """The `end` entry; `stderr`, the end of what Codex printed there, when it tells why a run
        failed; `ts`, when the run ended, for a replayed history (default: now). Idempotent: once the
        end is queued, later calls change nothing and say True."""
        try:
            if self._finished:
                return True
            for label, number in (("exit_code", exit_code), ("signal", signal)):
                if number is not None and (isinstance(number, bool) or not isinstance(number, int)):
                    raise ValueError(f"{label} must be an int or None, not {number!r}")
            if reason not in END_REASONS:
                raise ValueError(f"reason must be one of {END_REASONS}, not {reason!r}")
            end: dict[str, Any] = {"exit_code": exit_code, "signal": signal, "reason": reason}
            if stderr:
                end["stderr"] = str(stderr)[-STDERR_MAX_CHARS:]
            queued = self._submit(KIND_END, encode_json(end), ts)
            if self._finished:
                self._producer._forget(self)
            return queued
        except Exception as exc:
            return self._producer._failed("finish", exc)

    def _submit(self, kind: str, data: bytes, ts: int | None = None) -> bool:
        self._check_process()
        return self._sender.put(self, kind, data, ts=ts)

    def _check_process(self) -> None:
        if self._forked:
            # a forked child's copy of the run: its sequence numbers would collide with the parent's
            raise RuntimeError(f"run {self.run_id} belongs to the process that started it; start a new run after fork")

    def _forked_put(self, run: "Run", kind: str, data: bytes, extra: Any = None) -> bool:
        self._check_process()
        return False

    def _after_fork(self) -> None:
        self._forked = True
        self._put = self._forked_put

    def _heartbeat(self) -> None:
        """On the sender thread, every heartbeat interval: an empty `meta` entry when nothing was
        queued for the run since the last call."""
        numbered = self._sender.numbered(self)
        if not self._finished and numbered == self._seq_at_last_beat:
            self._sender.put(self, KIND_META, b"{}")
        self._seq_at_last_beat = numbered


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
        threaded: bool = True,
    ) -> None:
        """Arguments left None come from the environment (see producer.config). `redis_client_factory`
        replaces the sender's Redis client (tests use fakeredis). `threaded=False`: no background
        thread; the caller delivers with `producer._sender.pump()` and `idle_work()` (what the
        capture process of `run` and `tee` does)."""
        self.settings = ProducerSettings.from_env(
            environ,
            redis_url=redis_url, stream=stream, spool_dir=spool_dir, queue_max_bytes=queue_max_bytes,
            spool_max_bytes=spool_max_bytes, max_line_bytes=max_line_bytes, redis_timeout=redis_timeout,
            heartbeat_seconds=heartbeat_seconds,
        )
        self._stats = Stats()
        self._sender = Sender(
            self.settings, self._stats, batch_size=batch_size, adopt_interval=adopt_interval,
            client_factory=redis_client_factory, ticker=self._heartbeats, threaded=threaded,
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
        inst: str | None = None,
        **extra: Any,
    ) -> Run:
        """Start a run and queue its `start` entry (seq 0). Raises ValueError only for a run id that
        breaks the contract (1-128 characters of [A-Za-z0-9._:-]; a new UUID4 by default) and for an
        environment Langfuse would not keep (it would store `default`); one it would change
        (`Staging` -> `staging`) is sent as Langfuse stores it, with a warning.

        `parent`: a W3C `traceparent` (e.g. the caller's `TRACEPARENT`): the run joins that trace, its
        root a child of that span, and leaves the trace's name, metadata, input and output to the
        caller unless `set_trace_attributes`. An invalid one is ignored with a warning.
        `ts`: when the run started, for a replayed history (default: now). `inst`: the run instance on
        every entry (default: drawn at random); a history sent again passes the same one each time
        (entries.replayed_instance_id), so a second sending is not taken for a run reusing the id."""
        if run_id is None:
            run_id = new_run_id()
        if not is_valid_run_id(run_id):
            raise ValueError(f"run id must be 1-128 characters of [A-Za-z0-9._:-], not {run_id!r}")
        if inst is not None and not (isinstance(inst, str) and INST_PATTERN.fullmatch(inst)):
            raise ValueError(f"inst must be 1-64 characters of [A-Za-z0-9._-], not {inst!r}")
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
            "name": "codex-langfuse", "version": __version__, "host": os.uname().nodename, "pid": os.getpid(),
        }
        run = Run(self, run_id, parent=parent, inst=inst)
        with self._runs_lock:
            # A run sent again under its inst (a turn shipped again after an attempt that failed
            # midway) replaces the unfinished attempt: that one gets no end and no heartbeat. Only
            # a given inst can repeat (a drawn one is random).
            superseded = [older for older in self._open_runs if older.inst == inst] if inst else []
            for older in superseded:
                self._open_runs.discard(older)
            self._open_runs.add(run)
        for older in superseded:
            self._sender.retire(older)
        # taken past the queue cap
        run._submit(KIND_START, encode_json(self._cap_prompt(data)), None if ts is None else int(ts))
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
        return self._sender.counts()

    def _after_fork(self) -> None:
        # the runs belong to the parent: the child neither ends them on close nor writes to them
        for run in list(self._open_runs):
            run._after_fork()
        self._runs_lock = threading.Lock()
        self._open_runs = weakref.WeakSet()

    def _heartbeats(self) -> None:
        """On the sender thread: keep silent open runs from looking abandoned."""
        with self._runs_lock:
            runs = list(self._open_runs)
        for run in runs:
            run._heartbeat()

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
