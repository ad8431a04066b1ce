"""Spool files: where entries wait on local disk while Redis is unreachable.

One append-only file per producer process, `<dir>/p<pid>-<12 hex>.spool`, held under an exclusive
`fcntl.flock` for the life of the process. Only the sender thread touches it.

Format (JSON lines, ASCII):
- line 1, fixed width so it can be rewritten in place:
  `{"codex_langfuse_spool":1,"confirmed":"<20 digits>"}` - the byte offset up to which records
  are known to be in Redis (so a restart does not re-send them).
- then one record per line: the entry's stream fields as JSON strings, `data` base64-encoded so
  any bytes round-trip exactly.

A line without its newline (a crash in the middle of an append) or a line that does not decode is
skipped when read. When every record of the owner's own file is confirmed, the file is truncated
back to its header. A file whose lock can be taken belongs to a dead process: any producer on the
machine may adopt it, send what was not confirmed, and delete it.
"""

from __future__ import annotations

import base64
import binascii
import errno
import fcntl
import json
import os
import re
import secrets
from pathlib import Path
from typing import Iterable, Mapping

from codex_langfuse.producer.entries import F_DATA, F_RUN

SPOOL_SUFFIX = ".spool"
_HEADER_TEMPLATE = '{"codex_langfuse_spool":1,"confirmed":"%020d"}\n'
HEADER_LEN = len(_HEADER_TEMPLATE % 0)
_HEADER_PATTERN = re.compile(rb'\{"codex_langfuse_spool":1,"confirmed":"(\d{20})"\}\n')


def encode_record(fields: Mapping[str, object]) -> bytes:
    """One spool line (with its newline) for one entry's stream fields."""
    record = {}
    for key, value in fields.items():
        if key == F_DATA:
            record[key] = base64.b64encode(value if isinstance(value, bytes) else str(value).encode("utf-8")).decode("ascii")
        elif isinstance(value, bytes):
            record[key] = value.decode("utf-8", "replace")
        else:
            record[key] = str(value)
    return json.dumps(record, separators=(",", ":")).encode("ascii") + b"\n"


def decode_record(line: bytes) -> dict | None:
    """Stream fields of one spool line (without newline), or None when the line is not a record."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or F_DATA not in record or F_RUN not in record:
        return None
    fields = {}
    for key, value in record.items():
        if not isinstance(value, str):
            return None
        if key == F_DATA:
            try:
                value = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                return None
        fields[key] = value
    return fields


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
            header = os.pread(fd, HEADER_LEN, 0)
        except OSError:
            os.close(fd)
            return None
        size = opened.st_size
        match = _HEADER_PATTERN.fullmatch(header)
        # no valid header: read from the start; the lines that are not records are skipped
        confirmed = min(max(int(match.group(1)), HEADER_LEN), size) if match else 0
        return cls(path, fd, confirmed=confirmed, end=size, owned=False)

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

    def read(self, max_records: int, max_bytes: int) -> tuple[list[dict], int, int]:
        """Up to `max_records` records after `confirmed` (about `max_bytes` of them, at least one).

        Returns (records, offset just past them, number of lines skipped as not decodable).
        """
        offset = self.confirmed
        if offset >= self.end:
            return [], offset, 0
        block = os.pread(self._fd, min(self.end - offset, max_bytes), offset)
        last_newline = block.rfind(b"\n")
        while last_newline < 0 and offset + len(block) < self.end:
            # a record longer than max_bytes: read on until its newline
            more = os.pread(self._fd, min(self.end - offset - len(block), max(len(block), 1 << 16)), offset + len(block))
            if not more:
                break
            found = more.find(b"\n")
            if found >= 0:
                last_newline = len(block) + found
            block += more
        if last_newline < 0:
            # bytes without a newline up to the end: an append cut short by a crash
            return [], self.end, 1
        records, skipped, position = [], 0, 0
        while position <= last_newline and len(records) < max_records:
            newline = block.index(b"\n", position)
            fields = decode_record(block[position:newline])
            if fields is None:
                skipped += 1
            else:
                records.append(fields)
            position = newline + 1
        return records, offset + position, skipped

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
