"""Copying a process's output through, byte for byte, in the bridge process (capture.py says why
capture happens elsewhere).

The rule: the program on the other end of the pipe never waits for telemetry. The loop polls,
copies what is there (capture.Copier: tee(2) and splice(2) between pipes, a read into a reused
buffer otherwise), copies stderr and keeps its end, and forwards signals; nothing else runs in
this process while it copies.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import subprocess
import time
from typing import Callable

from codex_langfuse.producer.capture import Copier

# Large reads: a flood is copied in few system calls. The pipe from Codex is enlarged to match
# (Linux's default for an unprivileged process allows up to 1 MiB), so a burst does not make
# Codex wait for our next read.
READ_SIZE = 1024 * 1024
PIPE_SIZE = 1024 * 1024
STDERR_READ_SIZE = 64 * 1024
POLL_INTERVAL_MS = 500
NOTICE_DELAY_MS = 10
COALESCE_SECONDS = 0.003
COALESCE_BELOW_BYTES = 16 * 1024
# how much of Codex's stderr is kept for the `end` entry
STDERR_TAIL_BYTES = 8192


def enlarge_pipe(fd: int, size: int = PIPE_SIZE) -> None:
    """Ask for a bigger pipe buffer; not a pipe, or not allowed: nothing changes."""
    try:
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), size)
    except OSError:
        pass


class Output:
    """A file descriptor we copy to. Once the reader is gone, writing stops and reading goes on."""

    def __init__(self, fd: int, closed: bool = False):
        self.fd = fd
        self.broken = closed

    def write(self, data: bytes) -> None:
        if self.broken:
            return
        view = memoryview(data)
        try:
            while view:
                try:
                    written = os.write(self.fd, view)
                except BlockingIOError:  # someone gave us a non-blocking descriptor
                    select.select([], [self.fd], [], 1.0)
                    continue
                view = view[written:]
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.EBADF, errno.EINVAL, errno.ENOSPC, errno.EIO):
                raise
            self.broken = True


class Tail:
    """The last `size` bytes of what went through."""

    def __init__(self, size: int = STDERR_TAIL_BYTES):
        self.size = size
        self._kept = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self._kept += chunk[-self.size:]
        if len(self._kept) > 2 * self.size:
            del self._kept[:-self.size]

    def text(self) -> str:
        kept = bytes(self._kept[-self.size:])
        text = kept.decode("utf-8", "replace")
        if self.total > len(kept):
            text = text.lstrip("\ufffd")  # the first character may have been cut in two
        return text


def pass_through(
    child: subprocess.Popen,
    copier: Copier,
    err: Output,
    stderr_tail: Tail,
    wakeup_fd: int,
    on_signal: Callable[[], None],
) -> int:
    """Copy the child's stdout with `copier` and its stderr (if piped) to `err` (its end kept in
    `stderr_tail`) until both close, or until the child has exited and something it started still
    holds them open (then what is there is taken); then wait for the child and return its status.
    `on_signal` runs when `wakeup_fd` turns readable (a signal arrived)."""
    stdout = child.stdout.fileno()
    sources = [stdout] + ([child.stderr.fileno()] if child.stderr is not None else [])
    poller = select.poll()
    for fd in sources:
        poller.register(fd, select.POLLIN)
    poller.register(wakeup_fd, select.POLLIN)
    exited = _exit_fd(child)  # readable once the child exits: no waiting out a poll interval at the end
    if exited is not None:
        poller.register(exited, select.POLLIN)
    capture = copier.capture
    pace = _Pace()
    try:
        while sources:
            events = poller.poll(_poll_timeout(capture))
            ready = []
            for fd, _ in events:
                if fd == wakeup_fd:
                    on_signal()
                elif fd in sources:
                    ready.append(fd)
            copied = 0
            for fd in ready:
                size = copier.copy() if fd == stdout else _copy_stderr(fd, err, stderr_tail)
                if not size:
                    sources.remove(fd)
                    poller.unregister(fd)
                copied += size
            if capture is not None:
                capture.send_due(urgent=not ready)
            if copied:
                pace.copied(copied)
            if not ready and child.poll() is not None:
                # the child is gone but something it started still holds a pipe: take what is there
                for fd in sources:
                    os.set_blocking(fd, False)
                    try:
                        while copier.copy() if fd == stdout else _copy_stderr(fd, err, stderr_tail):
                            pass
                    except BlockingIOError:
                        pass
                break
        for pipe in (child.stdout, child.stderr):
            if pipe is not None:
                pipe.close()
        for fd in sources:
            poller.unregister(fd)
        while child.poll() is None:
            if any(fd == wakeup_fd for fd, _ in poller.poll(POLL_INTERVAL_MS)):
                on_signal()
        return child.returncode
    finally:
        if exited is not None:
            os.close(exited)


class _Pace:
    """When small reads come less than COALESCE_SECONDS apart (a steady trickle of lines), pause
    that long after each: a wake-up costs more than a line, so each read then takes several. The
    writer does not wait (its pipe holds 1 MiB); the reader gets a line at most that much later.
    Large reads (a flood) are never paused."""

    def __init__(self):
        self._last = 0.0

    def copied(self, size: int) -> None:
        now = time.monotonic()
        if size < COALESCE_BELOW_BYTES and now - self._last < COALESCE_SECONDS:
            time.sleep(COALESCE_SECONDS)
            now = time.monotonic()
        self._last = now


def _poll_timeout(capture) -> int:
    # notices wait a few ms to go to the capture process together (one write, one wake-up there)
    return NOTICE_DELAY_MS if capture is not None and capture.pending else POLL_INTERVAL_MS


def _copy_stderr(fd: int, err: Output, tail: Tail) -> int:
    """One read of the child's stderr copied on and kept in `tail`: its size, 0 at end of file."""
    chunk = os.read(fd, STDERR_READ_SIZE)
    err.write(chunk)
    tail.add(chunk)
    return len(chunk)


def pass_stdin_through(copier: Copier, wakeup_fd: int, stop_requested: Callable[[], bool]) -> None:
    """Copy fd 0 with `copier` until end of file or until `stop_requested()` says so (asked when
    `wakeup_fd` turns readable: a signal arrived)."""
    poller = select.poll()
    poller.register(0, select.POLLIN)
    poller.register(wakeup_fd, select.POLLIN)
    capture = copier.capture
    pace = _Pace()
    while True:
        events = poller.poll(_poll_timeout(capture))
        if any(fd == wakeup_fd for fd, _ in events) and stop_requested():
            break
        readable = any(fd == 0 for fd, _ in events)
        if readable:
            try:
                copied = copier.copy()
            except OSError:
                break
            if not copied:
                break
            pace.copied(copied)
        if capture is not None:
            capture.send_due(urgent=not readable)


def _exit_fd(child: subprocess.Popen) -> int | None:
    try:
        return os.pidfd_open(child.pid)
    except (AttributeError, OSError):  # not Linux >= 5.3: the poll interval bounds the wait instead
        return None
