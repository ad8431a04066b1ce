"""`codex-langfuse follow`: ship each Codex turn from the sessions directory once it is complete.

Every file under the followed directories is read from its checkpoint (file identity and offset,
saved after each pass) on: appended lines are split into turns, and a turn goes to the stream
when Codex marks it complete, when the next turn starts, or, silent for the idle timeout, as
given up. Restarts continue from the checkpoints; a file replaced or truncated at its path is read
again from its start and its shipped turns are skipped; a file moved (to `archived_sessions/`)
keeps its identity; new files (new sessions, new pages of a paginated one) are picked up by the
watcher or the next scan. Redis being down is the sender's business: entries wait in the spool.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from codex_langfuse.producer.entries import now_us
from codex_langfuse.producer.importer import TurnShipper
from codex_langfuse.producer.rollout_state import RolloutState
from codex_langfuse.producer.rollouts import find_rollouts, is_rollout, read_lines
from codex_langfuse.producer.rollout_turns import SplitterState, TurnSplitter
from codex_langfuse.producer.watch import Changes, make_watcher

log = logging.getLogger("codex_langfuse.follow")

RESCAN_SECONDS = 30.0  # full scans with inotify (it can miss a directory created in a race)


@dataclass
class Followed:
    identity: str
    size: int = -1
    mtime_ns: int = -1
    splitter: TurnSplitter = field(default_factory=TurnSplitter)


@dataclass
class FollowStats:
    passes: int = 0
    turns_sent: int = 0
    turns_abandoned: int = 0
    files_restarted: int = 0
    errors: int = 0


class Follower:
    def __init__(self, roots: Iterable[Path], shipper: TurnShipper, state: RolloutState, *, idle_seconds: float,
                 poll_interval: float = 2.0, prefer_inotify: bool = True, now: Callable[[], int] = now_us):
        self.roots = [Path(root) for root in roots]
        self.shipper = shipper
        self.state = state
        self.idle_us = int(idle_seconds * 1e6)
        self.poll_interval = poll_interval
        self.now = now
        self.watcher = make_watcher(self.roots, prefer_inotify)
        self.files: dict[Path, Followed] = {}
        self.stats = FollowStats()
        self._last_scan = 0.0

    def run(self, stop: threading.Event) -> None:
        log.info("following %s (%s)", ", ".join(map(str, self.roots)), self.watcher.kind)
        changes = Changes(rescan=True)
        while not stop.is_set():
            self.step(changes)
            changes = self.watcher.wait(self.poll_interval)
        self.watcher.close()

    def step(self, changes: Changes) -> None:
        """One pass: the files that changed (all of them on a rescan), and every open turn's clock."""
        self.stats.passes += 1
        moment = time.monotonic()
        if changes.rescan or moment - self._last_scan >= RESCAN_SECONDS:
            self._last_scan = moment
            paths = set(find_rollouts(root for root in self.roots if root.exists()))
            for gone in set(self.files) - paths:
                del self.files[gone]  # deleted or moved: a moved file is found by identity at its new path
        else:
            # named as `find_rollouts` finds them: not a `rollout-….tmp` another tool writes and renames
            paths = {path for path in changes.paths if is_rollout(path)}
        paths |= {path for path, followed in self.files.items() if followed.splitter.state.turn is not None}
        for path in sorted(paths, key=lambda p: p.name):
            try:
                self._visit(path)
            except FileNotFoundError:
                self.files.pop(path, None)
            except OSError as exc:
                self.stats.errors += 1
                log.warning("%s: %s", path, exc)

    def _visit(self, path: Path) -> None:
        info = path.stat()
        identity = f"{info.st_dev}:{info.st_ino}"
        followed = self.files.get(path)
        if followed is None or followed.identity != identity:
            if followed is not None:
                self.stats.files_restarted += 1  # replaced at the same path (rotated)
            followed = Followed(identity=identity, splitter=self._resume(identity, info.st_size))
            self.files[path] = followed
        if info.st_size < followed.splitter.state.offset:
            self.stats.files_restarted += 1  # truncated: read again; shipped turns are skipped by run id
            followed.splitter = TurnSplitter()
        changed = (info.st_size, info.st_mtime_ns) != (followed.size, followed.mtime_ns)
        followed.size, followed.mtime_ns = info.st_size, info.st_mtime_ns
        compressed = path.name.endswith(".zst")
        turns = []
        if changed and (not compressed or followed.splitter.state.offset == 0):
            # A compressed session is complete (Codex compresses old ones); a plain one may be
            # mid-line: its last line waits for its newline.
            for offset, following, line in read_lines(path, followed.splitter.state.offset, final=compressed):
                turns.extend(followed.splitter.feed(offset, following, line))
        turns.extend(followed.splitter.finish(self.now(), self.idle_us, final=compressed))
        if turns:
            shipped = self.state.shipped(turn.run_id for turn in turns)
            for turn in turns:
                if turn.run_id in shipped:
                    continue
                self.shipper.ship(path, turn, followed.splitter.state.header_us)
                self.stats.turns_sent += 1
                if turn.status == "abandoned":
                    self.stats.turns_abandoned += 1
            self.shipper.settle()  # before the checkpoint passes these turns
        if changed or turns:
            self.state.save_checkpoint(identity, path, info.st_size, followed.splitter.state.to_json())

    def _resume(self, identity: str, size: int) -> TurnSplitter:
        saved = self.state.checkpoint(identity)
        if saved is None or saved.size > size:
            return TurnSplitter()
        return TurnSplitter(SplitterState.from_json(saved.state))
