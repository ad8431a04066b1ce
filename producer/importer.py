"""Ship Codex's rollout turns as runs on the Redis stream: what `import` and `follow` share.

A turn becomes one run (`rollouts.run_id_for`: thread id and turn id), sent exactly as a live
capture is: a `start` entry (the thread's header and the turn's place, `format: rollout`), the
turn's records as `line` entries stamped with the time Codex wrote each one, and an `end` entry,
through the producer's sender (Redis, or the spool while Redis is down). Lines are read back
from the file and handed off in chunks; every chunk's worth of bytes the sender is flushed before
more is handed off, so at most about two chunks wait in memory however large the turn or the file.
A turn is recorded as shipped once it is in Redis or the spool (`TurnShipper.settle`).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from codex_langfuse.producer import Producer
from codex_langfuse.producer.entries import END_REASON_EOF, now_us, replayed_instance_id
from codex_langfuse.producer.rollout_state import RolloutState, file_identity
from codex_langfuse.producer.rollouts import read_records
from codex_langfuse.producer.rollout_turns import SplitterState, Turn, split_file, start_data

CHUNK_BYTES = 4 << 20  # lines handed to the sender at once, then flushed
FLUSH_TIMEOUT = 120.0  # longest wait for one chunk to reach Redis or the spool
DEFAULT_IDLE_SECONDS = 900.0  # a turn silent this long is over (given up, or ended without a mark)


class ShipError(RuntimeError):
    """Entries could not reach Redis or the spool in time: stop, nothing is marked shipped."""


class TurnShipper:
    """Hands turns to the producer's sender; every `chunk_bytes` it waits until they are in Redis
    or the spool and only then records them as shipped (`settle`, also called by the caller when
    it is done with a file)."""

    def __init__(self, producer: Producer, state: RolloutState | None, chunk_bytes: int = CHUNK_BYTES,
                 flush_timeout: float = FLUSH_TIMEOUT):
        self.producer = producer
        self.state = state
        self.chunk_bytes = chunk_bytes
        self.flush_timeout = flush_timeout
        self._unsettled: list[tuple[str, str]] = []  # (run id, file name) handed off, not yet flushed
        self._unflushed = 0  # bytes handed off since the last flush

    def ship(self, path: Path, turn: Turn, header_us: int | None) -> int:
        """Send one turn; returns the number of line entries. Raises ShipError if the sender
        could not take it within the flush timeout."""
        run = self.producer.start_run(run_id=turn.run_id, ts=turn.started_us, inst=replayed_instance_id(turn.run_id),
                                      **start_data(turn, path))
        batch: list[tuple[bytes, int]] = []
        size = lines = 0
        for line, ts in read_records(path, turn.start, turn.end, header_us):
            batch.append((line, ts))
            size += len(line)
            lines += 1
            if size >= self.chunk_bytes:
                self._hand_off(run, batch, size)
                batch, size = [], 0
        self._hand_off(run, batch, size)
        run.finish(None, reason=END_REASON_EOF, ts=turn.ended_us)
        self._unsettled.append((turn.run_id, path.name))
        if self._unflushed >= self.chunk_bytes:
            self.settle()
        return lines

    def settle(self) -> None:
        """Wait until every turn handed off is in Redis or the spool, then record them as shipped."""
        if not self._unsettled and not self._unflushed:
            return
        self._flush()
        if self.state is not None:
            for file in {file for _, file in self._unsettled}:
                self.state.mark_shipped([run for run, name in self._unsettled if name == file], file)
        self._unsettled = []

    def _hand_off(self, run, batch: list[tuple[bytes, int]], size: int) -> None:
        self._unflushed += size
        if self._unflushed >= self.chunk_bytes:
            self._flush()  # what went before first: the queue holds at most about two chunks
        while batch:
            taken = run.emit_recorded(batch)
            batch = batch[taken:]
            if batch:
                self._flush()

    def _flush(self) -> None:
        self._unflushed = 0
        if not self.producer.flush(self.flush_timeout):
            raise ShipError(f"entries did not reach Redis or the spool within {self.flush_timeout:.0f} s")


@dataclass
class ImportReport:
    files: int = 0
    bytes: int = 0
    turns: int = 0
    sent: int = 0
    lines: int = 0
    already_sent: int = 0
    outside_dates: int = 0
    in_progress: int = 0
    abandoned: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


Progress = Callable[[int, int], None]


def import_files(files: list[Path], shipper: TurnShipper | None, state: RolloutState | None, *,
                 since_us: int | None = None, until_us: int | None = None, idle_seconds: float = DEFAULT_IDLE_SECONDS,
                 progress: Progress | None = None, now: Callable[[], int] = now_us) -> ImportReport:
    """Import every complete turn of `files` that is not shipped yet (`shipper` None: a dry run,
    which only counts). Checkpoints make a repeated import read only what is new, unless dates
    filter the turns (then every file is read whole and nothing is checkpointed)."""
    report = ImportReport()
    total = sum(_size(path) for path in files)
    done = 0
    use_checkpoints = state is not None and shipper is not None and since_us is None and until_us is None
    for path in files:
        size = _size(path)
        report.files += 1
        report.bytes += size
        try:
            _import_file(path, size, shipper, state, report, since_us, until_us, idle_seconds, use_checkpoints, now)
        except ShipError:
            raise
        except OSError as exc:
            report.errors.append(f"{path}: {exc}")
        done += size
        if progress is not None:
            progress(done, total)
    return report


def _import_file(path: Path, size: int, shipper: TurnShipper | None, state: RolloutState | None,
                 report: ImportReport, since_us: int | None, until_us: int | None, idle_seconds: float,
                 use_checkpoints: bool, now: Callable[[], int]) -> None:
    current = now()
    if since_us is not None and _mtime_us(path) < since_us:
        return  # nothing in it was written after `since`
    identity = file_identity(path)
    saved = state.checkpoint(identity) if use_checkpoints and state is not None else None
    splitter_state = None
    if saved is not None and saved.size <= size:
        splitter_state = SplitterState.from_json(saved.state)
    # A file nobody has written to for the idle time is complete: its last turn is over too.
    final = _mtime_us(path) + int(idle_seconds * 1e6) <= current
    turns, splitter = split_file(path, current, int(idle_seconds * 1e6), splitter_state, final=final)
    if splitter.state.turn is not None:
        report.in_progress += 1
    shipped = state.shipped(turn.run_id for turn in turns) if state is not None else set()
    for turn in turns:
        report.turns += 1
        if turn.run_id in shipped:
            report.already_sent += 1
            continue
        if (since_us is not None and turn.started_us < since_us) or (until_us is not None and turn.started_us >= until_us):
            report.outside_dates += 1
            continue
        if turn.status == "abandoned":
            report.abandoned += 1
        if shipper is None:
            report.sent += 1  # would be sent
            continue
        report.lines += shipper.ship(path, turn, splitter.state.header_us)
        report.sent += 1
    if shipper is not None:
        shipper.settle()  # before the checkpoint passes these turns
    if use_checkpoints and state is not None:
        state.save_checkpoint(identity, path, size, splitter.state.to_json())


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _mtime_us(path: Path) -> int:
    try:
        return int(path.stat().st_mtime * 1e6)
    except OSError:
        return 0


class TerminalProgress:
    """A one-line progress bar on stderr, when stderr is a terminal."""

    def __init__(self, stream=None, width: int = 30):
        self.stream = stream or sys.stderr
        self.width = width
        self.enabled = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        moment = time.monotonic()
        if done < total and moment - self._last < 0.1:
            return
        self._last = moment
        share = done / total if total else 1.0
        filled = int(share * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\r[{bar}] {share * 100:5.1f}%  {done / 1e6:,.1f}/{total / 1e6:,.1f} MB")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()
