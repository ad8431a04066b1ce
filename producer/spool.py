"""Spool files: where entries wait on local disk while Redis is unreachable or cannot keep up.

One append-only file per producer process, `<dir>/p<pid>-<12 hex>.spool`, held under an exclusive
`fcntl.flock` for the life of the process. Only the sender thread touches it.

Format:
- line 1, fixed width so it can be rewritten in place:
  `{"codex_langfuse_spool":1,"confirmed":"<20 digits>"}` - the byte offset up to which records
  are known to be in Redis (so a restart does not re-send them).
- then one record per entry: a JSON line of the entry's stream fields as strings, except `data`,
  plus `dest` (the destination it was written for, see destination.py) and `size`; then `size`
  bytes of data exactly as they are, and a newline. Writing a record is a few string operations
  and a copy, whatever the data. A record with `n` holds n newline-terminated lines read
  together, numbered from its `seq` (one record for a whole read: spooling costs per read, not
  per line). Records of an earlier format, one JSON line with `data` in base64, are still read.

A record cut short (a crash in the middle of an append) or a line that does not decode is
skipped when read. When every record of the owner's own file is confirmed, the file is truncated
back to its header. A file whose lock can be taken belongs to a dead process: a producer on the
machine writing to the same destination may adopt it, send what was not confirmed, and delete it;
files for other destinations are left alone (`codex-langfuse spool` lists them).
"""

from __future__ import annotations

import binascii
import errno
import fcntl
import json
import os
import re
import secrets
from pathlib import Path
from typing import Iterable

from codex_langfuse.producer.entries import ENTRY_VERSION, F_DATA, F_INST, F_KIND, F_RUN, F_SEQ, F_TRUNC, F_TS, KIND_LINE
from codex_langfuse.producer.xadd import LINES

SPOOL_SUFFIX = ".spool"
_HEADER_TEMPLATE = '{"codex_langfuse_spool":1,"confirmed":"%020d"}\n'
HEADER_LEN = len(_HEADER_TEMPLATE % 0)
_HEADER_PATTERN = re.compile(rb'\{"codex_langfuse_spool":1,"confirmed":"(\d{20})"\}\n')
F_DEST, F_LINES = "dest", "n"
_SIZE_PATTERN = re.compile(rb',"size":"(\d+)"\}$')


def encode_record(item: tuple, dest: str) -> bytes:
    """One spool record (header line, data, newline) for one queued item (see xadd.py) bound for
    `dest`. Run ids, inst, kinds and dest need no JSON escaping (the run id rule), so the header is
    formatted directly."""
    run, inst, seq, kind, data, ts, extra = item
    header = '{"v":"%s","run":%s,"seq":"%d","ts":"%d","kind":%s' % (
        ENTRY_VERSION, json.dumps(run), seq, ts, json.dumps(KIND_LINE if kind == LINES else kind))
    if inst is not None:
        header += ',"inst":%s' % json.dumps(inst)
    if kind == LINES:
        header += ',"n":"%d"' % extra
    elif kind == KIND_LINE and extra is not None:
        header += ',"trunc":"%d"' % extra
    header += ',"dest":%s,"size":"%d"}\n' % (json.dumps(dest), len(data))
    return b"".join((header.encode("ascii"), data, b"\n"))


def decode_record(header: bytes, data: bytes | None = None) -> tuple[tuple, str | None] | None:
    """(queued item, destination or None for a record without one) of a record's header line
    (without its newline) and its data (None for a record of the earlier format, whose data is
    in the header); None when it is not a record."""
    try:
        record = json.loads(header)
        if not isinstance(record, dict) or not all(isinstance(value, str) for value in record.values()):
            return None
        if data is None:
            data = binascii.a2b_base64(record[F_DATA], strict_mode=True)
        seq, ts = int(record[F_SEQ]), int(record[F_TS])
        kind, extra = record[F_KIND], None
        if F_LINES in record:
            kind, extra = LINES, int(record[F_LINES])
            if extra != data.count(b"\n") or not data.endswith(b"\n"):
                return None
        elif F_TRUNC in record:
            extra = int(record[F_TRUNC])
        return (record[F_RUN], record.get(F_INST), seq, kind, data, ts, extra), record.get(F_DEST)
    except (ValueError, KeyError, TypeError, binascii.Error):
        return None


def _data_size(header: bytes) -> int | None:
    """The `size` of a record header, None for a record of the earlier format or no record."""
    found = _SIZE_PATTERN.search(header)
    return int(found.group(1)) if found else None


def item_entries(item: tuple) -> int:
    """How many stream entries a queued item becomes."""
    return item[6] if item[3] == LINES else 1


class SpoolFile:
    """An open, exclusively locked spool file. `confirmed` <= `end` are byte offsets."""

    def __init__(self, path: Path, fd: int, confirmed: int, end: int, owned: bool):
        self.path = path
        self._fd = fd
        self.confirmed = confirmed
        self.end = end
        self.owned = owned  # created by this process (appended to), as opposed to adopted

    @classmethod
    def create(cls, directory: Path) -> "SpoolFile":
        """A new, locked, empty spool file. Created under a name adopters ignore, locked, then
        renamed, so no other process can lock it first."""
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = f"p{os.getpid()}-{secrets.token_hex(6)}"
        temporary = directory / f".{name}.creating"
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _pwrite_all(fd, (_HEADER_TEMPLATE % HEADER_LEN).encode("ascii"), 0)
            path = directory / f"{name}{SPOOL_SUFFIX}"
            os.rename(temporary, path)
        except BaseException:
            os.close(fd)
            _unlink(temporary)
            raise
        return cls(path, fd, confirmed=HEADER_LEN, end=HEADER_LEN, owned=True)

    @classmethod
    def adopt(cls, path: Path) -> "SpoolFile | None":
        """Lock the spool file of a dead process; None if its owner lives (or it is gone)."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # its owner may have drained and deleted it between our listing and our lock
            opened, current = os.fstat(fd), os.stat(path)
            if (opened.st_dev, opened.st_ino) != (current.st_dev, current.st_ino):
                raise FileNotFoundError(path)
            confirmed = _confirmed_offset(fd, opened.st_size)
        except OSError:
            os.close(fd)
            return None
        return cls(path, fd, confirmed=confirmed, end=opened.st_size, owned=False)

    @classmethod
    def inspect(cls, path: Path) -> "tuple[SpoolFile, bool] | None":
        """Open a spool file to read it without taking it: (the file, whether a live process holds
        it). Release it with release(delete=False). None if it is gone."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                held = False
                fcntl.flock(fd, fcntl.LOCK_UN)
            except BlockingIOError:
                held = True
            size = os.fstat(fd).st_size
            confirmed = _confirmed_offset(fd, size)
        except OSError:
            os.close(fd)
            return None
        return cls(path, fd, confirmed=confirmed, end=size, owned=False), held

    @property
    def pending(self) -> bool:
        return self.confirmed < self.end

    def append(self, records: Iterable[bytes], max_bytes: int) -> int:
        """Append encoded records while the file stays within `max_bytes`; returns how many fit.

        On a write error the file is cut back to where it was, so earlier records stay intact.
        """
        accepted, end = [], self.end
        for record in records:
            if end + len(record) > max_bytes:
                break
            accepted.append(record)
            end += len(record)
        if accepted:
            try:
                _pwrite_all(self._fd, b"".join(accepted), self.end)
            except OSError:
                _ignore_errors(os.ftruncate, self._fd, self.end)
                raise
            self.end = end
        return len(accepted)

    def read(self, max_records: int, max_bytes: int, offset: int | None = None) -> tuple[list[tuple], int, int]:
        """Up to `max_records` records after `offset` (default: `confirmed`), about `max_bytes` of
        them, at least one.

        Returns ((item, destination) pairs, offset just past them, lines skipped as not decodable).
        """
        offset = first = self.confirmed if offset is None else offset
        records: list[tuple] = []
        skipped = 0
        block, start = b"", offset  # block holds the file from `start`
        while offset < self.end and len(records) < max_records and (not records or offset - first < max_bytes):
            position = offset - start
            newline = block.find(b"\n", position)
            if newline < 0:
                block = os.pread(self._fd, min(self.end - offset, max(max_bytes, 1 << 16)), offset)
                start, position = offset, 0
                newline = block.find(b"\n")
                while newline < 0 and start + len(block) < self.end:
                    more = os.pread(self._fd, min(self.end - start - len(block), max(len(block), 1 << 16)), start + len(block))
                    if not more:
                        break
                    block += more
                    newline = block.find(b"\n", len(block) - len(more))
                if newline < 0:
                    # bytes without a newline up to the end: an append cut short by a crash
                    return (records, offset, skipped) if records else (records, self.end, skipped + 1)
            header = block[position:newline]
            size = _data_size(header)
            if size is None:
                record = decode_record(header)
                next_offset = start + newline + 1
            else:
                data_end = newline + 1 + size
                if data_end + 1 > len(block):
                    if start + data_end + 1 > self.end:  # its data was cut short by a crash
                        return (records, offset, skipped) if records else (records, self.end, skipped + 1)
                    block = os.pread(self._fd, data_end + 1 - position, offset)
                    start, newline, data_end = offset, newline - position, data_end - position
                    position = 0
                if block[data_end:data_end + 1] == b"\n":
                    record = decode_record(header, block[newline + 1:data_end])
                    next_offset = start + data_end + 1
                else:
                    record, next_offset = None, start + newline + 1  # not what its header says: skip the header
            if record is None:
                skipped += 1
            else:
                records.append(record)
            offset = next_offset
        return records, offset, skipped

    def destination(self) -> str | None:
        """The destination of the first record not yet confirmed (a file is written for one)."""
        offset = self.confirmed
        while offset < self.end:
            records, offset, _ = self.read(1, 1 << 16, offset)
            if records:
                return records[0][1]
        return None

    def survey(self) -> dict:
        """What is not confirmed yet: {"entries", "bytes", "destinations": {dest: entries}, "unreadable"}."""
        entries, unreadable, destinations = 0, 0, {}
        offset = self.confirmed
        while offset < self.end:
            records, offset, skipped = self.read(100_000, 4 << 20, offset)
            unreadable += skipped
            for item, dest in records:
                count = item_entries(item)
                entries += count
                destinations[dest] = destinations.get(dest, 0) + count
        return {"entries": entries, "bytes": self.end - self.confirmed, "destinations": destinations,
                "unreadable": unreadable}

    def confirm(self, offset: int) -> None:
        """Records before `offset` are in Redis. The owner's fully sent file is cut back to its header."""
        self.confirmed = offset
        if self.owned and offset >= self.end:
            # truncate before rewriting the header: a crash in between leaves a header pointing past
            # the end, which reads as "all confirmed", never as a reason to re-send
            os.ftruncate(self._fd, HEADER_LEN)
            self.confirmed = self.end = HEADER_LEN
        _pwrite_all(self._fd, (_HEADER_TEMPLATE % self.confirmed).encode("ascii"), 0)

    def sync(self) -> None:
        os.fsync(self._fd)

    def release(self, delete: bool) -> None:
        """Unlock and close; with `delete`, remove the file first (while still holding the lock)."""
        if self._fd < 0:
            return
        if delete:
            _unlink(self.path)
        fd, self._fd = self._fd, -1
        _ignore_errors(os.close, fd)

    def forget_after_fork(self) -> None:
        """In a forked child: close our copy of the descriptor WITHOUT unlocking (the lock belongs
        to the parent's open file, which the parent keeps using)."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            _ignore_errors(os.close, fd)


def _confirmed_offset(fd: int, size: int) -> int:
    match = _HEADER_PATTERN.fullmatch(os.pread(fd, HEADER_LEN, 0))
    # no valid header: read from the start; the lines that are not records are skipped
    return min(max(int(match.group(1)), HEADER_LEN), size) if match else 0


def orphan_candidates(directory: Path, exclude: Iterable[Path] = ()) -> list[Path]:
    """Spool files in `directory` other than `exclude`, oldest first (their owners may be alive)."""
    excluded = {os.path.abspath(path) for path in exclude}
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    found = []
    for name in names:
        if not name.endswith(SPOOL_SUFFIX) or name.startswith("."):
            continue
        path = Path(directory) / name
        if os.path.abspath(path) in excluded:
            continue
        try:
            found.append((os.stat(path).st_mtime, path))
        except OSError:
            continue
    return [path for _, path in sorted(found)]


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written <= 0:
            raise OSError(errno.EIO, "spool write made no progress")
        view, offset = view[written:], offset + written


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _ignore_errors(function, *args) -> None:
    try:
        function(*args)
    except OSError:
        pass
