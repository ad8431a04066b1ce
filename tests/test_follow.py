"""`codex-langfuse follow` as a real process beside a whole pipeline: turns sent when complete,
appends, restarts (SIGTERM and SIGKILL), rotation, new files, given-up turns, Redis down."""

from __future__ import annotations

import datetime
import json
import os
import re
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from codex_langfuse.ingest.fold import FoldContext
from codex_langfuse.ingest.pricing import PriceTable
from codex_langfuse.ingest.verify import expected_span_ids
from codex_langfuse.producer.entries import trace_id
from codex_langfuse.producer.rollout_turns import split_file

pytestmark = pytest.mark.integration

CODEX = Path(__file__).parent / "fixtures" / "codex"
TWO_TURNS = CODEX / "rollout_0.169.0_resumed_two_turns.jsonl"
GUARD = 90  # seconds: a hang guard, never the thing asserted
IDLE = 3.0
STAMP = re.compile(rb'"timestamp":\s*"([^"]+)"')


def retimed(lines: list[bytes], start: float) -> list[bytes]:
    """The records as a Codex running now would write them: every time shifted to begin at `start`."""
    first = None
    out = []
    for line in lines:
        match = STAMP.search(line)
        if match is None:
            out.append(line)
            continue
        moment = datetime.datetime.fromisoformat(match.group(1).decode().replace("Z", "+00:00"))
        first = first or moment
        shifted = datetime.datetime.fromtimestamp(start, datetime.timezone.utc) + (moment - first)
        text = shifted.strftime("%Y-%m-%dT%H:%M:%S.") + f"{shifted.microsecond // 1000:03d}Z"
        out.append(line[:match.start(1)] + text.encode() + line[match.end(1):])
    return out


class Session:
    """A rollout file Codex is writing, in a sessions tree."""

    def __init__(self, root: Path, source: Path = TWO_TURNS, day: str = "2026/11/25"):
        self.lines = retimed(source.read_bytes().splitlines(keepends=True), time.time() - 2)
        self.path = root / day / source.name.replace("rollout_", "rollout-")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.position = 0  # bytes of b"".join(self.lines) written so far

    def write_until(self, marker: bytes | None, partial: int = 0) -> None:
        """Append up to the end of the next line containing `marker` (everything when None), then
        `partial` bytes more (a line Codex is in the middle of writing)."""
        data = b"".join(self.lines)
        end = len(data)
        if marker is not None:
            at = data.index(marker, self.position)
            end = data.index(b"\n", at) + 1
        end = min(end + partial, len(data))
        with self.path.open("ab") as out:
            out.write(data[self.position:end])
        self.position = end

    def turns(self) -> dict[str, set[str]]:
        turns, splitter = split_file(self.path, int(time.time() * 1e6), 3600 * 10 ** 6, final=True)
        context = FoldContext(prices=PriceTable.load())
        return {t.run_id: set(expected_span_ids(self.path, t, splitter.state.header_us, context)) for t in turns}


def follow(stack, root: Path, state: Path, name: str = "follow", *extra: str, also: tuple[Path, ...] = ()):
    return stack.start("follow", name, str(root), *map(str, also), "--state", str(state), "--idle-timeout", str(IDLE),
                       "--poll-interval", "0.2", *extra)


def checkpoint_offset(state: Path) -> int:
    if not state.exists():
        return -1
    try:
        with sqlite3.connect(state) as db:
            rows = db.execute("SELECT state FROM checkpoints").fetchall()
    except sqlite3.OperationalError:  # not created yet
        return -1

    return max((json.loads(row[0])["offset"] for row in rows), default=-1)


def spans(stack, run_id: str) -> list[str]:
    return [span.span_id for span in stack.receiver.spans(trace_id(run_id))]


def assert_each_span_once(stack, expected: dict[str, set[str]]) -> None:
    """Each run's trace holds exactly the spans the mapping makes of its turn, none twice."""
    for run, ids in expected.items():
        assert sorted(spans(stack, run)) == sorted(ids)
    assert stack.receiver.duplicates() == {}


@pytest.mark.parametrize("mode", ["inotify", "polling"])
def test_a_turn_is_sent_once_complete_and_restarts_lose_nothing(stack, tmp_path, mode):
    stack.start("dispatch")
    stack.start("worker")
    root, state = tmp_path / "sessions", tmp_path / "state.sqlite3"
    root.mkdir()
    extra = ("--polling",) if mode == "polling" else ()
    follow(stack, root, state, "follow-1", *extra)
    session = Session(root)
    session.write_until(b'"item_completed"', partial=30)  # half of the first turn, a line cut mid-way
    stack.wait(lambda: checkpoint_offset(state) > 0, GUARD, "the follower to read the file")
    first_run = "codex:01a21390-35f9-7ff3-a7eb-3af17021e5c9:01a21390-360d-7771-827b-3163ebe1ad4e"
    assert not stack.redis.exists(stack.keys.state(first_run))  # not complete: not sent
    stack.kill("follow-1", signal.SIGKILL)

    session.write_until(b'"task_complete"')  # the first turn completes while nobody follows
    session.write_until(b'"task_started"', partial=50)
    follow(stack, root, state, "follow-2", *extra)
    expected = session.turns()
    stack.wait(lambda: stack.settled([first_run]), GUARD, "the first turn sent after the restart")
    assert set(spans(stack, first_run)) == expected[first_run]

    stack.kill("follow-2", signal.SIGTERM)
    session.write_until(None)
    follow(stack, root, state, "follow-3", *extra)
    expected = session.turns()
    stack.wait(lambda: stack.settled(expected), GUARD, "the second turn")
    assert_each_span_once(stack, expected)


def test_rotation_moves_and_new_files(stack, tmp_path):
    stack.start("dispatch")
    stack.start("worker")
    home = tmp_path / "codex-home"
    root, archive, state = home / "sessions", home / "archived_sessions", tmp_path / "state.sqlite3"
    root.mkdir(parents=True)
    follow(stack, root, state, "follow", also=(archive,))
    session = Session(root)
    session.write_until(b'"task_complete"')
    first = session.turns()
    stack.wait(lambda: stack.settled(first), GUARD, "the first turn")

    # rotated: the same path now holds a new file (another inode) with both turns
    replacement = session.path.with_suffix(".tmp")
    replacement.write_bytes(b"".join(session.lines))
    os.replace(replacement, session.path)
    both = session.turns()
    stack.wait(lambda: stack.settled(both), GUARD, "the second turn from the rotated file")

    # moved to archived_sessions (same inode), and a new session in a directory created today
    archive.mkdir()
    os.rename(session.path, archive / session.path.name)
    other = Session(root, CODEX / "rollout_0.169.0_full.jsonl", day="2026/11/26")
    other.write_until(None)
    third = other.turns()
    stack.wait(lambda: stack.settled(third), GUARD, "the new session's turn")
    time.sleep(1.0)  # room for a wrong re-send of the moved file to show (not a measurement)
    assert_each_span_once(stack, {**both, **third})


def test_a_turn_silent_for_the_idle_timeout_is_sent_as_given_up(stack, tmp_path):
    stack.start("dispatch")
    stack.start("worker")
    root, state = tmp_path / "sessions", tmp_path / "state.sqlite3"
    root.mkdir()
    follow(stack, root, state)
    session = Session(root, CODEX / "rollout_0.169.0_full.jsonl")
    session.lines = [line for line in session.lines if b'"task_complete"' not in line]
    session.write_until(None)
    run = "codex:01a21390-6edf-7eb3-9199-ed2d883b1952:01a21390-6efc-7bf3-9118-055dbf095d38"
    stack.wait(lambda: stack.settled([run]), GUARD, "the silent turn given up")
    root_span = [s for s in stack.receiver.spans(trace_id(run)) if s.parent_span_id is None][0]
    assert root_span.level == "ERROR" and "given up" in root_span.status_message
    assert len([s for s in stack.receiver.spans(trace_id(run)) if s.type == "generation"]) == 5


def test_while_redis_is_down_turns_wait_in_the_spool(stack, tmp_path):
    stack.start("dispatch")
    stack.start("worker")
    root, state = tmp_path / "sessions", tmp_path / "state.sqlite3"
    root.mkdir()
    follow(stack, root, state)
    session = Session(root)
    session.write_until(b'"task_started"')
    stack.wait(lambda: checkpoint_offset(state) > 0, GUARD, "the follower to read the file")
    stack.redis_server.stop()
    session.write_until(None)
    spool = Path(stack.env["CODEX_LANGFUSE_SPOOL_DIR"])
    stack.wait(lambda: spool.is_dir() and any(p.stat().st_size for p in spool.iterdir() if p.is_file()), GUARD,
               "the turn in the spool")
    stack.redis_server.start()  # the same port
    expected = session.turns()
    stack.wait(lambda: stack.settled(expected), GUARD, "the spooled turns delivered")
    assert_each_span_once(stack, expected)


def test_once_makes_one_pass_and_exits(stack, tmp_path):
    """`follow --once` (for a cron job): the complete turns sent, the open one left for next time."""
    stack.start("dispatch")
    stack.start("worker")
    root, state = tmp_path / "sessions", tmp_path / "state.sqlite3"
    root.mkdir()
    session = Session(root)
    session.write_until(b'"task_complete"')  # the first turn complete...
    session.write_until(b'"task_started"', partial=10)  # ...the second begun
    done = stack.cli("follow", str(root), "--once", "--state", str(state), "--idle-timeout", "600", timeout=GUARD)
    assert done.returncode == 0, done.stderr.decode()
    first = "codex:01a21390-35f9-7ff3-a7eb-3af17021e5c9:01a21390-360d-7771-827b-3163ebe1ad4e"
    stack.wait(lambda: stack.settled([first]), GUARD, "the complete turn")
    second = "codex:01a21390-35f9-7ff3-a7eb-3af17021e5c9:01a213a0-5d5b-7373-b483-bc20efe5632f"
    assert not stack.redis.exists(stack.keys.state(second))
    session.write_until(None)
    assert stack.cli("follow", str(root), "--once", "--state", str(state), timeout=GUARD).returncode == 0
    stack.wait(lambda: stack.settled([first, second]), GUARD, "the second turn on the next pass")
    assert stack.receiver.duplicates() == {}


class RecordingShipper:
    """Stands in for the TurnShipper: which file each turn was shipped from."""

    def __init__(self):
        self.shipped: list[tuple[str, str]] = []

    def ship(self, path: Path, turn, header_us) -> int:
        self.shipped.append((path.name, turn.run_id))
        return 0

    def settle(self) -> None:
        pass


def test_a_file_another_tool_writes_and_renames_is_not_a_rollout(tmp_path):
    """A `rollout-….tmp` written then renamed over the session (an editor, a sync tool, the test
    above): shipping from it raced the rename, and the turn went out twice."""
    from codex_langfuse.producer.follow import Follower
    from codex_langfuse.producer.rollout_state import RolloutState
    from codex_langfuse.producer.watch import Changes

    root = tmp_path / "sessions"
    root.mkdir()
    shipper = RecordingShipper()
    follower = Follower([root], shipper, RolloutState(tmp_path / "state.sqlite3"), idle_seconds=IDLE,
                        prefer_inotify=False)
    follower.step(Changes(rescan=True))  # the first pass scans
    session = Session(root)
    session.write_until(None)
    temporary = session.path.with_suffix(".tmp")
    temporary.write_bytes(session.path.read_bytes())
    follower.step(Changes({temporary, session.path}))  # what the watcher reports
    follower.step(Changes(rescan=True))
    assert {name for name, _ in shipper.shipped} == {session.path.name}
    assert len(shipper.shipped) == len(session.turns()) == 2
