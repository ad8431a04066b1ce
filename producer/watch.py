"""Waiting for changes under a directory tree: inotify where the kernel has it (through ctypes,
no dependency), polling elsewhere. Either way `wait` may also return early with nothing changed:
callers re-check what they follow on every return, so a missed event costs one poll interval.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import select
import struct
import sys
from pathlib import Path
from typing import Iterable

IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_Q_OVERFLOW = 0x00004000
IN_ISDIR = 0x40000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
WATCH_MASK = IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF
_EVENT = struct.Struct("iIII")


class Changes:
    """What `wait` saw: changed files, and whether everything must be rescanned (new directories,
    a lost event queue, or a poller that cannot tell)."""

    def __init__(self, paths: set[Path] | None = None, rescan: bool = False):
        self.paths = paths or set()
        self.rescan = rescan


class PollingWatcher:
    kind = "polling"

    def __init__(self, roots: Iterable[Path]):
        self.roots = list(roots)

    def wait(self, timeout: float) -> Changes:
        select.select([], [], [], max(0.0, timeout))
        return Changes(rescan=True)

    def close(self) -> None:
        pass


class InotifyWatcher:
    """Watches every directory under the roots (and roots created later, through their parents)."""

    kind = "inotify"

    def __init__(self, roots: Iterable[Path]):
        libc_name = ctypes.util.find_library("c") or "libc.so.6"
        self._libc = ctypes.CDLL(libc_name, use_errno=True)
        self._fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self.roots = [Path(root) for root in roots]
        self._dirs: dict[int, Path] = {}
        self._watched: set[Path] = set()
        self.add_tree()

    def add_tree(self) -> None:
        for root in self.roots:
            target = root
            while not target.exists() and target.parent != target:
                target = target.parent  # watch the nearest existing ancestor until the root appears
            self._add(target)
            if target == root:
                for dirpath, _, _ in os.walk(root):
                    self._add(Path(dirpath))

    def _add(self, directory: Path) -> None:
        if directory in self._watched:
            return
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(directory), WATCH_MASK)
        if wd < 0:
            code = ctypes.get_errno()
            if code in (errno.ENOENT, errno.ENOTDIR):
                return
            raise OSError(code, f"inotify_add_watch {directory} failed")
        self._dirs[wd] = directory
        self._watched.add(directory)

    def wait(self, timeout: float) -> Changes:
        ready, _, _ = select.select([self._fd], [], [], max(0.0, timeout))
        if not ready:
            return Changes()
        changes = Changes()
        while True:
            try:
                data = os.read(self._fd, 64 * 1024)
            except BlockingIOError:
                break
            if not data:
                break
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size:offset + _EVENT.size + length].rstrip(b"\0")
                offset += _EVENT.size + length
                if mask & IN_Q_OVERFLOW:
                    changes.rescan = True
                    continue
                directory = self._dirs.get(wd)
                if directory is None:
                    continue
                path = directory / os.fsdecode(name) if name else directory
                if mask & IN_ISDIR or mask & IN_DELETE_SELF:
                    changes.rescan = True
                else:
                    changes.paths.add(path)
        if changes.rescan:
            self.add_tree()
        return changes

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def make_watcher(roots: Iterable[Path], prefer_inotify: bool = True) -> InotifyWatcher | PollingWatcher:
    roots = list(roots)
    if prefer_inotify and sys.platform.startswith("linux"):
        try:
            return InotifyWatcher(roots)
        except (OSError, AttributeError):
            pass
    return PollingWatcher(roots)
