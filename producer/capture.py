"""Capture in a process of its own: `run` and `tee` copy, a forked child turns the copy into entries.

Why a process: the copying loop must keep pace with `cat`, and a sender thread in the same
interpreter makes every one of its system calls wait for the GIL (up to the 5 ms switch interval
each; measured here: 30-95 MB/s, against 285-640 MB/s with capture in a process of its own). So the
bridge process (the parent) does nothing but copy, and hands every read to the child through a
journal:

- the journal is an unlinked file (in the spool directory, so on the same disk as the spool): the
  parent appends each read to it - with splice(2) straight from Codex's pipe, after tee(2) has
  duplicated the same bytes into our stdout pipe, so the bytes never enter Python - and sends the
  child a one-line notice (offset, length, time read) through a pipe, a few ms' worth at a time;
- the child (niced) reads the journal range, cuts it into lines (LineSplitter), queues them on a
  Producer without a thread and delivers them itself, to Redis or the spool. The journal absorbs
  any lag: the parent never waits for the child, and nothing is dropped below the spool cap;
- at the end the parent sends the `end` entry's data and a deadline, and waits for the child
  (which spools what Redis will not take by then, and closes its producer by that deadline)
  before it exits.

Notices are text lines: `D <offset> <length> <µs>`, `M <json>` (a `meta` entry), `E <json>` (the
end: exit code, signal, reason, stderr, and the monotonic deadline). A child that loses its parent
(EOF without `E`) still delivers what it has; its producer ends the run as "closed".
"""

from __future__ import annotations

import collections
import errno
import json
import os
import select
import signal
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from codex_langfuse.producer.entries import KIND_LINE
from codex_langfuse.producer.xadd import LINES

# how much of the journal the child reads at once
JOURNAL_READ_BYTES = 1024 * 1024
# consumed journal space is given back to the disk in steps of this size
PUNCH_EVERY_BYTES = 16 * 1024 * 1024
# data notices wait at most this long (or until this many bytes of them) to be sent together
NOTICE_DELAY = 0.010
NOTICE_BATCH_BYTES = 4096
# a child whose parent vanished (no end notice) has this long to deliver
ORPHAN_FLUSH_SECONDS = 5.0
# ...and waits this long (or for Codex's first output) before its own setup
STARTUP_YIELD_SECONDS = 0.2
# the capture process yields the CPU to the copying and to Codex
CHILD_NICENESS = 10
# the parent waits this much past the deadline for the child to exit, then kills it
EXIT_GRACE_SECONDS = 1.0

Part = tuple[str, bytes, "int | None"]


class LineSplitter:
    """Cuts a byte stream into the parts Run.emit_parts takes: (LINES, complete lines, how many)
    for the lines that end in a read, and (KIND_LINE, first bytes, full length) for a line longer
    than `max_line_bytes`, of which only the first `max_line_bytes` are kept."""

    def __init__(self, max_line_bytes: int):
        self.max_line_bytes = max_line_bytes
        self._carry = bytearray()  # the current line so far (no newline yet), within the cap
        self._overlong = 0         # bytes of the current line so far, once it outgrew the cap
        self._last_byte = b""      # of an overlong line (to spot \r\n when it was cut)
        self.lines = 0             # lines handed out so far

    def feed(self, chunk: bytes) -> list[Part]:
        parts: list[Part] = []
        if self._overlong:
            newline = chunk.find(b"\n")
            if newline < 0:
                self._overlong += len(chunk)
                self._last_byte = chunk[-1:] or self._last_byte
                return parts
            self._overlong += newline
            if newline:
                self._last_byte = chunk[newline - 1:newline]
            parts.append(self._take_overlong(ended_by_newline=True))
            chunk = chunk[newline + 1:]
        last = chunk.rfind(b"\n")
        if last < 0:
            self._keep(chunk)
            return parts
        if self._carry:
            block = bytes(self._carry) + chunk[:last + 1]
            self._carry.clear()
        else:
            block = chunk if last == len(chunk) - 1 else chunk[:last + 1]
        count = block.count(b"\n")
        self.lines += count
        parts.append((LINES, block, count))
        if last < len(chunk) - 1:
            self._keep(chunk[last + 1:])
        return parts

    def finish(self) -> list[Part]:
        """A last line without a newline, if any."""
        if self._overlong:
            return [self._take_overlong(ended_by_newline=False)]
        if not self._carry:
            return []
        line = bytes(self._carry)
        self._carry.clear()
        self.lines += 1
        return [(KIND_LINE, line, None)]

    def _keep(self, piece: bytes) -> None:
        if len(self._carry) + len(piece) <= self.max_line_bytes:
            self._carry += piece
            return
        self._overlong = len(self._carry) + len(piece)
        self._carry += piece[:self.max_line_bytes - len(self._carry)]
        self._last_byte = piece[-1:]

    def _take_overlong(self, ended_by_newline: bool) -> Part:
        line, length = bytes(self._carry), self._overlong
        if ended_by_newline and self._last_byte == b"\r":
            length -= 1
            line = line[:length]
        self._carry.clear()
        self._overlong = 0
        self._last_byte = b""
        self.lines += 1
        return KIND_LINE, line, (length if length > len(line) else None)


# ---- the journal ----

class _Libc:
    """tee(2) and fallocate(2), which the os module lacks, through ctypes (imported when first
    needed: the bridge does it while Codex starts, not before)."""

    def __init__(self):
        import ctypes

        self._ctypes = ctypes
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.tee.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint]
        self._libc.tee.restype = ctypes.c_ssize_t
        self._fallocate = getattr(self._libc, "fallocate", None)
        if self._fallocate is not None:
            self._fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
            self._fallocate.restype = ctypes.c_int

    def tee(self, source: int, destination: int, length: int) -> int:
        """Duplicate up to `length` bytes of pipe `source` into pipe `destination`."""
        while True:
            copied = self._libc.tee(source, destination, length, 0)
            if copied >= 0:
                return copied
            code = self._ctypes.get_errno()
            if code != errno.EINTR:
                raise OSError(code, os.strerror(code))

    def punch_hole(self, fd: int, offset: int, length: int) -> bool:
        """Give a range of a file back to the disk; False where that cannot be done."""
        if self._fallocate is None:
            return False
        return self._fallocate(fd, 0x02 | 0x01, offset, length) == 0  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE


_libc: _Libc | None = None


def libc() -> _Libc:
    global _libc
    if _libc is None:
        _libc = _Libc()
    return _libc


def _is_pipe(fd: int) -> bool:
    try:
        return stat.S_ISFIFO(os.fstat(fd).st_mode)
    except OSError:
        return False


def open_journal(directory: Path) -> int:
    """An unlinked file to journal into: nothing is left behind whatever happens to us."""
    import tempfile

    for place in (directory, Path(tempfile.gettempdir())):
        try:
            place.mkdir(parents=True, exist_ok=True, mode=0o700)
            return os.open(place, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except (OSError, AttributeError):
            pass
    file = tempfile.TemporaryFile()  # unlinked at creation where O_TMPFILE is missing
    fd = os.dup(file.fileno())
    file.close()
    return fd


class Copier:
    """The parent's side of a capture: copies one source to our stdout and into the journal.

    With both ends pipes, tee(2) duplicates what is in the source pipe into stdout and splice(2)
    moves the same bytes into the journal; otherwise a read into a reused buffer is written to
    both. Once stdout is gone (the reader closed it) only the journal is written; once the journal
    cannot be written (disk full) only stdout is, and capture stops with one warning.
    """

    def __init__(self, source: int, out, capture: "CaptureProcess | None", buffer_size: int):
        self.source = source
        self.out = out  # passthrough.Output
        self.capture = capture
        self.offset = 0
        self._splice = capture is not None and _is_pipe(source) and hasattr(os, "splice")
        self._tee = self._splice and not out.broken and _is_pipe(out.fd) and os.get_blocking(out.fd)
        self._libc = libc() if self._splice else None
        self._buffer = bytearray(buffer_size)
        self._view = memoryview(self._buffer)

    def copy(self) -> int:
        """Copy what the source has (waiting for a byte if there is none): how many bytes were
        read, at least 1 while the source goes on; 0 at its end."""
        if self._splice and (self._tee or self.out.broken):
            return self._copy_by_splice()
        size = os.readv(self.source, [self._buffer])
        if not size:
            return 0
        chunk = self._view[:size]
        ts = time.time_ns() // 1000
        self.out.write(chunk)
        if self.capture is not None and self.capture.journal >= 0:
            try:
                written = 0
                while written < size:
                    written += os.pwrite(self.capture.journal, chunk[written:], self.offset + written)
            except OSError as exc:
                self.capture.journal_failed(exc)
                return size
            self.capture.lines_read(self.offset, size, ts)
            self.offset += size
        return size

    def _copy_by_splice(self) -> int:
        if not self.out.broken:
            try:
                size = self._libc.tee(self.source, self.out.fd, len(self._buffer))
            except OSError as exc:
                if exc.errno not in (errno.EPIPE, errno.EBADF, errno.EINVAL, errno.EIO):
                    raise
                self.out.broken = True  # the reader is gone: keep capturing
                return 1
            if not size:
                return 0
        ts = time.time_ns() // 1000
        moved = 0
        try:
            while True:
                step = os.splice(self.source, self.capture.journal, len(self._buffer) if self.out.broken else size - moved,
                                 offset_dst=self.offset + moved)
                moved += step
                if not step or self.out.broken or moved >= size:
                    break
        except OSError as exc:
            if moved:
                self.capture.lines_read(self.offset, moved, ts)
                self.offset += moved
            self.capture.journal_failed(exc)
            self._splice = False  # from now on: read and write, without a journal
            return max(moved, 1)
        if not moved:
            return 0 if self.out.broken else 1  # only the journal reads the source: 0 is its end
        self.capture.lines_read(self.offset, moved, ts)
        self.offset += moved
        return moved


# ---- the processes ----

class CaptureProcess:
    """The parent's handle on the capture child: the journal, the notice pipe, the child's pid."""

    def __init__(self, journal: int, notices: int, pid: int):
        self.journal = journal
        self._notices = notices
        self.pid = pid
        self._outbox = bytearray()
        self._oldest = 0.0
        self._lock = threading.Lock()  # the stdin thread sends a `meta` notice too
        self._lost = False

    @classmethod
    def start(cls, spool_dir: Path, child_main: Callable[[int, int], None]) -> "CaptureProcess | None":
        """Fork the child, which runs child_main(journal fd, notice fd) and exits. Call before any
        other thread is started (fork copies only the calling thread). None if it cannot be done:
        the caller copies without capturing."""
        try:
            journal = open_journal(spool_dir)
            read_end, write_end = os.pipe2(os.O_CLOEXEC)
        except OSError as exc:
            _warn(f"cannot capture (no journal: {exc}); Codex's output is passed through only")
            return None
        try:
            pid = os.fork()
        except OSError as exc:
            _warn(f"cannot capture (fork failed: {exc}); Codex's output is passed through only")
            for fd in (journal, read_end, write_end):
                os.close(fd)
            return None
        if pid == 0:
            status = 70
            try:
                os.close(write_end)
                child_main(journal, read_end)
                status = 0
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                os._exit(status)
        os.close(read_end)
        os.set_blocking(write_end, False)
        return cls(journal, write_end, pid)

    # notices; none of them ever blocks the parent

    def lines_read(self, offset: int, length: int, ts: int) -> None:
        """Bytes journaled at `offset`, read at `ts`; the notice waits for send_due()."""
        with self._lock:
            if not self._outbox:
                self._oldest = time.monotonic()
            self._outbox += b"D %d %d %d\n" % (offset, length, ts)

    def meta(self, data: dict) -> None:
        self._send(b"M " + json.dumps(data, ensure_ascii=True).encode("ascii") + b"\n")

    def journal_failed(self, exc: OSError) -> None:
        if self.journal >= 0:
            _warn(f"capture stopped: cannot write its journal ({exc.strerror or exc}); the output is passed through")
            self.journal = -1

    def _send(self, notice: bytes) -> None:
        with self._lock:
            if self._lost:
                return
            self._outbox += notice
            self._write_outbox()

    def _write_outbox(self) -> None:
        try:
            while self._outbox:
                del self._outbox[:os.write(self._notices, self._outbox)]
        except BlockingIOError:
            pass  # the child is busy: the rest goes with the next notice, or at the end
        except OSError:
            self._lost = True  # the child is gone
            self._outbox.clear()

    @property
    def pending(self) -> bool:
        return bool(self._outbox)

    def send_due(self, urgent: bool) -> None:
        """Send the waiting notices when `urgent` (nothing else to do), when the oldest has waited
        NOTICE_DELAY, or when there are many: at a trickle the child wakes every few ms, not per line."""
        if self._outbox and (urgent or len(self._outbox) > NOTICE_BATCH_BYTES
                             or time.monotonic() - self._oldest >= NOTICE_DELAY):
            with self._lock:
                self._write_outbox()

    def finish(self, end: dict, timeout: float) -> None:
        """Send the end and wait (at most `timeout` and a grace second) for the child to deliver
        and exit."""
        deadline = time.monotonic() + max(0.0, timeout)
        self._send(b"E " + json.dumps({**end, "deadline": deadline}, ensure_ascii=True).encode("ascii") + b"\n")
        writable = select.poll()
        writable.register(self._notices, select.POLLOUT)
        with self._lock:
            while self._outbox and not self._lost and time.monotonic() < deadline:
                writable.poll(max(0.0, deadline - time.monotonic()) * 1000)
                self._write_outbox()
        os.close(self._notices)
        if self.journal >= 0:
            os.close(self.journal)
        while time.monotonic() < deadline + EXIT_GRACE_SECONDS:
            try:
                pid, _ = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return
            if pid:
                return
            time.sleep(0.005)
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def run_child(journal: int, notices: int, start_run: Callable[[], tuple[Any, Any]],
              after_start: Callable[[], dict] | None, max_line_bytes: int) -> None:
    """The child: entries from the journal, in order, until the end notice or the parent's exit."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_IGN)  # the parent decides when the run ends
    try:
        os.nice(CHILD_NICENESS)  # on a busy machine the copying (and Codex) go first; the journal waits
    except OSError:
        pass
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(devnull, fd)  # a runner waiting for our stdout to close must not wait for us
    os.close(devnull)
    producer, run = start_run()  # the start entry, stamped now; sent with the first write
    _Journal(journal, notices, producer, run, LineSplitter(max_line_bytes)).deliver(after_start)


class _Journal:
    """The child's reading of the journal, on its one thread: notices are read as they arrive (so
    the end, and its deadline, are known while ranges still wait); ranges are cut into lines and
    delivered in order, synchronously (the producer's sender runs without a thread here: waiting
    for Redis is this process's job, and the journal holds what waits)."""

    def __init__(self, journal: int, notices: int, producer, run, splitter: LineSplitter):
        self.journal, self.notices = journal, notices
        self.producer, self.run, self.splitter = producer, run, splitter
        self.sender = producer._sender
        self.pending: collections.deque = collections.deque()
        self.pending_bytes = 0
        self.end: dict | None = None
        self.deadline: float | None = None
        self.parent_gone = False
        self._partial = b""
        self._punched = 0
        self._spooling = False
        self._poller = select.poll()

    def deliver(self, after_start: Callable[[], dict] | None = None) -> None:
        os.set_blocking(self.notices, False)
        self._poller.register(self.notices, select.POLLIN)
        # Codex and the copying start now: the rest of our setup (file reads, importing redis,
        # connecting) waits for Codex's first output or a moment, so as not to compete with them
        self._read_notices(wait=STARTUP_YIELD_SECONDS)
        if after_start is not None:
            try:
                extra = after_start()
            except Exception:
                extra = {}
            if extra:
                self.run.update(**extra)
        while self.pending or not (self.end is not None or self.parent_gone):
            if not self.pending:
                self.sender.pump()
                self._read_notices(wait=self.sender.idle_work())
                continue
            if self.pending[0][0] == b"M":
                self.run.update(**json.loads(self.pending.popleft()[1]))
                continue
            # the data notices in a row: contiguous in the journal, read with one pread
            ranges, size = [], 0
            while self.pending and self.pending[0][0] == b"D" and size < JOURNAL_READ_BYTES:
                offset, length, ts = (int(value) for value in self.pending.popleft()[1].split())
                ranges.append((offset, length, ts))
                size += length
            self._lines(ranges)
            self.sender.pump()  # one write to Redis for the lines of these notices
            self._read_notices(wait=0)
        self._emit(self.splitter.finish(), time.time_ns() // 1000)
        end = self.end
        if end is not None:
            if end.get("exit_code") == 0 and end.get("signal") is None and self.splitter.lines:
                end.pop("stderr", None)  # Codex succeeded and printed: its stderr adds nothing
            self.run.finish(end.get("exit_code"), signal=end.get("signal"), reason=end.get("reason", "exited"),
                            stderr=end.get("stderr"))
        deadline = self.deadline if self.deadline is not None else time.monotonic() + ORPHAN_FLUSH_SECONDS
        self.producer.close(max(0.0, deadline - time.monotonic()))

    def _read_notices(self, wait: float) -> None:
        """Take the notices that arrived, waiting up to `wait` seconds for some."""
        if self.parent_gone:
            return
        if wait > 0 and not self._poller.poll(wait * 1000):
            return
        try:
            data = os.read(self.notices, 1 << 16)
        except BlockingIOError:
            return
        if not data:
            self.parent_gone = True
            return
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            kind, _, rest = line.partition(b" ")
            if kind == b"E":
                self.end = json.loads(rest)
                self.deadline = self.end.pop("deadline")
            else:
                if kind == b"D":
                    self.pending_bytes += int(rest.split()[1])
                self.pending.append((kind, rest))

    def _lines(self, ranges: list[tuple[int, int, int]]) -> None:
        """Journal ranges (offset, length, time read), contiguous, in order."""
        start = ranges[0][0]
        total = ranges[-1][0] + ranges[-1][1] - start
        data = os.pread(self.journal, total, start) if total <= JOURNAL_READ_BYTES else None
        for offset, length, ts in ranges:
            self.pending_bytes -= length
            while length:
                step = min(length, JOURNAL_READ_BYTES)
                chunk = data[offset - start:offset - start + step] if data is not None else os.pread(self.journal, step, offset)
                self._emit(self.splitter.feed(chunk), ts)
                offset, length = offset + step, length - step
        end = ranges[-1][0] + ranges[-1][1]
        if end - self._punched >= PUNCH_EVERY_BYTES and self._punched >= 0:
            self._punched = end if libc().punch_hole(self.journal, 0, end - end % 4096) else -1

    def _emit(self, parts: list[Part], ts: int) -> None:
        """Queue the parts; when the queue is full, deliver what it holds first (to Redis, or to
        the spool near the deadline, which takes it at disk speed)."""
        while parts:
            self._check_deadline()
            taken = self.sender.put_lines(self.run, parts, ts)
            if taken < sum(count if kind == LINES else 1 for kind, _, count in parts):
                self.sender.pump()
            while taken > 0 and parts:  # what a full queue refused is offered again
                kind, _, count = parts[0]
                taken -= count if kind == LINES else 1
                parts = parts[1:]
            if self.run.finished or self.sender.closing:
                return

    def _check_deadline(self) -> None:
        if self._spooling or self.deadline is None:
            return
        # what is left, at a pessimistic 50 MB/s into the spool, and half a second to close
        if self.deadline - time.monotonic() < 0.5 + (self.pending_bytes + self.sender.queued_bytes) / 50e6:
            self._spooling = True
            self.sender.spool_everything()


def _warn(message: str) -> None:
    try:
        sys.stderr.write(f"codex-langfuse: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
