"""A rollout file cut into turns, in one pass, holding only a few offsets (memory does not grow
with the file): the part of `import` and `follow` that decides what one run is.

The rule: a turn is a contiguous byte range of one rollout file, from the records that lead into
it (instructions, context messages, settings: its preamble) to its last record. `task_started`
opens a turn and `task_complete`/`turn_aborted` ends it (0.1xx); before those existed, the
user's `user_message` event (0.20: the user's transcript message) opens the next turn and so ends
the previous one. A forked session's copy of its parent's history (a second `session_meta`, then
the parent's records) belongs to no turn of the fork: the parent's file has those turns. The
splitter's state is small JSON, saved as a checkpoint, so a later pass goes on from any line.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from codex_langfuse.producer.entries import trace_id
from codex_langfuse.producer.rollouts import (
    Record, classify, is_prelude, is_user_prompt_item, parse_time, read_lines, run_id_for, uuid7_ms,
)


@dataclass
class Thread:
    """What the session header says about the thread (kept in every turn's start entry)."""

    thread_id: str = ""
    session_id: str | None = None
    created_us: int | None = None
    cli_version: str | None = None
    originator: str | None = None
    source: Any = None
    cwd: str | None = None
    model_provider: str | None = None
    git: dict[str, Any] | None = None
    parent_thread_id: str | None = None
    forked_from_id: str | None = None
    agent_nickname: str | None = None

    @classmethod
    def from_header(cls, payload: Mapping[str, Any], ts_us: int | None) -> "Thread":
        source = payload.get("source")
        spawn = source.get("subagent", {}).get("thread_spawn", {}) if isinstance(source, dict) else {}
        spawn = spawn if isinstance(spawn, dict) else {}
        git = payload.get("git")
        return cls(
            thread_id=str(payload.get("id") or ""),
            session_id=_text(payload.get("session_id")),
            created_us=parse_time(payload.get("timestamp")) or ts_us,
            cli_version=_text(payload.get("cli_version")),
            originator=_text(payload.get("originator")),
            source=source,
            cwd=_text(payload.get("cwd")),
            model_provider=_text(payload.get("model_provider")),
            git=git if isinstance(git, dict) else None,
            parent_thread_id=_text(payload.get("parent_thread_id")) or _text(spawn.get("parent_thread_id")),
            forked_from_id=_text(payload.get("forked_from_id")),
            agent_nickname=_text(payload.get("agent_nickname")) or _text(spawn.get("agent_nickname")),
        )


@dataclass
class OpenTurn:
    key: str
    start: int  # byte offset of the turn's first record (its preamble included)
    first_us: int | None
    last_us: int | None
    turn_id: str | None = None
    number: int = 0  # the turn's place in this file, 1-based
    parent_turn_id: str | None = None
    prior_total: dict[str, Any] | None = None  # the thread's token total before the turn


@dataclass
class Turn:
    """One complete (or given-up) turn: a byte range of a file plus what its start entry says."""

    run_id: str
    thread_id: str
    key: str
    start: int
    end: int
    started_us: int
    ended_us: int
    status: str  # completed | aborted | superseded | ended | abandoned
    thread: Thread
    turn_id: str | None = None
    number: int = 0
    parent_turn_id: str | None = None
    prior_total: dict[str, Any] | None = None

    @property
    def trace_id(self) -> str:
        return trace_id(self.run_id)


@dataclass
class SplitterState:
    """Everything needed to continue splitting a file from `offset` (a checkpoint saves it)."""

    offset: int = 0
    thread: Thread | None = None
    header_us: int | None = None
    task_events: bool = False  # the file marks turns with task_started (0.1xx)
    copying: bool = False  # inside a fork's copy of its parent's history
    copy_prompt_start: int | None = None
    turn: OpenTurn | None = None
    pending_start: int | None = None  # where records leading into the next turn begin
    pending_first_us: int | None = None
    turns: int = 0
    token_total: dict[str, Any] | None = None
    last_us: int | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "SplitterState":
        raw = json.loads(text)
        state = cls(**{k: v for k, v in raw.items() if k not in ("thread", "turn")})
        if raw.get("thread"):
            state.thread = Thread(**raw["thread"])
        if raw.get("turn"):
            state.turn = OpenTurn(**raw["turn"])
        return state


class TurnSplitter:
    """Finds the turns of one rollout file, fed its lines in order (`feed`), in one pass.

    Turn boundaries: `task_started` opens a turn and `task_complete`/`turn_aborted` ends it
    (0.1xx); before those existed, the user's `user_message` event (or, in 0.20, the user's
    transcript message) opens the next turn and so ends the previous one. Records that lead into
    a turn (instructions, context messages, settings) are held as a pending range and join it.
    """

    def __init__(self, state: SplitterState | None = None):
        self.state = state or SplitterState()

    def feed(self, offset: int, following: int, line: bytes) -> list[Turn]:
        state = self.state
        state.offset = following
        record = classify(line)
        if record is None:
            self._content(offset, None)
            return []
        ts = record.ts_us if record.ts_us is not None else state.header_us
        if ts is not None:
            state.last_us = max(state.last_us or ts, ts)
        if record.kind == "session_meta":
            return self._session_meta(record, offset, ts)
        if state.thread is None:
            state.thread = Thread(thread_id="")  # no header (a cut file): turns are still found
        if record.kind == "event_msg" and record.sub == "token_count":
            info = record.payload.get("info")
            total = info.get("total_token_usage") if isinstance(info, dict) else None
            if isinstance(total, dict):
                state.token_total = total
        if state.copying:
            return self._copied(record, offset, ts)
        return self._record(record, offset, ts)

    # -- the parts --

    def _session_meta(self, record: Record, offset: int, ts: int | None) -> list[Turn]:
        state = self.state
        thread_id = str(record.payload.get("id") or "")
        if state.thread is None or not state.thread.thread_id:
            state.thread = Thread.from_header(record.payload, ts)
            state.header_us = state.thread.created_us
            return []
        if thread_id and thread_id != state.thread.thread_id:
            # A fork's copy of another thread's history begins: it belongs to that thread.
            closed = self._close_open("superseded", offset)
            state.copying = True
            state.copy_prompt_start = None
            state.pending_start = None
            return closed
        return []

    def _copied(self, record: Record, offset: int, ts: int | None) -> list[Turn]:
        state = self.state
        thread = state.thread
        if record.kind == "event_msg" and record.sub == "task_started":
            born = uuid7_ms(record.turn_id)
            created = uuid7_ms(thread.thread_id if thread else None)
            if created is None and thread is not None and thread.created_us is not None:
                created = thread.created_us // 1000
            if born is not None and created is not None and born >= created:
                state.copying = False
                return self._record(record, offset, ts)
            return []
        if record.kind == "turn_context" and not record.turn_id:
            # Codex copies no turn_context into a fork: this one is the fork's own first turn.
            state.copying = False
            start = state.copy_prompt_start if state.copy_prompt_start is not None else offset
            state.copy_prompt_start = None
            return self._open(None, start, ts) + self._record(record, offset, ts)
        if self._opens_turn_without_tasks(record):
            state.copy_prompt_start = offset
        elif record.sub not in ("message",) and not is_prelude(record):
            state.copy_prompt_start = None
        return []

    def _opens_turn_without_tasks(self, record: Record) -> bool:
        if record.kind == "event_msg" and record.sub == "user_message":
            return True
        return record.kind == "raw" and is_user_prompt_item(record)

    def _record(self, record: Record, offset: int, ts: int | None) -> list[Turn]:
        state = self.state
        if record.kind == "event_msg" and record.sub == "task_started":
            state.task_events = True
            closed = self._close_open("superseded", self._pending_or(offset))
            attribution = record.payload.get("turn_attribution")
            parent = attribution.get("parent_turn_id") if isinstance(attribution, dict) else None
            return closed + self._open(record.turn_id, self._pending_or(offset), ts, parent_turn_id=_text(parent))
        if record.kind == "event_msg" and record.sub in ("task_complete", "turn_aborted"):
            if state.turn is None:
                return []
            self._touch(ts)
            status = "completed" if record.sub == "task_complete" else "aborted"
            return self._close_open(status, state.offset)
        if not state.task_events and self._opens_turn_without_tasks(record):
            start = self._pending_or(offset)
            closed = self._close_open("ended", start)
            return closed + self._open(None, start, ts)
        if is_prelude(record) and (state.turn is None or not state.task_events):
            if state.pending_start is None:
                state.pending_start = offset
                state.pending_first_us = ts
            return []
        self._content(offset, ts)
        return []

    def _content(self, offset: int, ts: int | None) -> None:
        """A record that belongs to the open turn (with any pending records before it), or, with no
        turn open, leads into the next one."""
        state = self.state
        if state.turn is None:
            if state.pending_start is None:
                state.pending_start = offset
                state.pending_first_us = ts
            return
        state.pending_start = None
        state.pending_first_us = None
        self._touch(ts)

    def _touch(self, ts: int | None) -> None:
        turn = self.state.turn
        if turn is not None and ts is not None:
            turn.first_us = turn.first_us if turn.first_us is not None else ts
            turn.last_us = max(turn.last_us or ts, ts)

    def _pending_or(self, offset: int) -> int:
        return self.state.pending_start if self.state.pending_start is not None else offset

    def _open(self, turn_id: str | None, start: int, ts: int | None, parent_turn_id: str | None = None) -> list[Turn]:
        state = self.state
        state.turns += 1
        first = state.pending_first_us if state.pending_start is not None and state.pending_first_us else ts
        key = turn_id or f"n{state.turns}"
        state.turn = OpenTurn(key=key, start=start, first_us=first, last_us=ts, turn_id=turn_id, number=state.turns,
                              parent_turn_id=parent_turn_id, prior_total=state.token_total)
        state.pending_start = None
        state.pending_first_us = None
        return []

    def _close_open(self, status: str, end: int) -> list[Turn]:
        state = self.state
        turn = state.turn
        if turn is None:
            return []
        state.turn = None
        thread = state.thread or Thread()
        started = turn.first_us if turn.first_us is not None else (state.header_us or 0)
        ended = turn.last_us if turn.last_us is not None else started
        return [Turn(
            run_id=run_id_for(thread.thread_id or "unknown", turn.key), thread_id=thread.thread_id, key=turn.key,
            start=turn.start, end=end, started_us=started, ended_us=max(ended, started), status=status,
            thread=thread, turn_id=turn.turn_id, number=turn.number, parent_turn_id=turn.parent_turn_id,
            prior_total=turn.prior_total,
        )]

    def finish(self, now_us: int, idle_us: int, final: bool = False) -> list[Turn]:
        """The open turn, if it is over: quiet for `idle_us` (a given-up turn, or, for files
        without task events, one that simply ended), or the file is `final` (not written to any
        more) and has no task events. Otherwise it stays open for a later pass."""
        state = self.state
        turn = state.turn
        if turn is None:
            return []
        quiet = (state.last_us or 0) + idle_us <= now_us
        if not state.task_events and (final or quiet):
            return self._close_open("ended", state.offset)
        if quiet:
            return self._close_open("abandoned", state.offset)
        return []



def split_file(path: Path, now_us: int, idle_us: int, state: SplitterState | None = None,
               final: bool = True) -> tuple[list[Turn], TurnSplitter]:
    """The turns of a file that are over, read from the splitter's offset; the splitter keeps the
    open turn (if any) for a later pass."""
    splitter = TurnSplitter(state)
    turns: list[Turn] = []
    for offset, following, line in read_lines(path, splitter.state.offset, final=final):
        turns.extend(splitter.feed(offset, following, line))
    turns.extend(splitter.finish(now_us, idle_us, final=final))
    return turns, splitter


# ---- what a turn's start entry says ---------------------------------------------------------------


def start_data(turn: Turn, path: Path) -> dict[str, Any]:
    """The `start` entry of a turn's run (README, "Stream entry format"): trace attributes the
    worker uses as they are, and under `rollout` what the rollout fold needs from outside the range."""
    thread = turn.thread
    metadata: dict[str, Any] = {"source": "rollout", "rollout_file": path.name}
    rollout: dict[str, Any] = {
        "thread_id": turn.thread_id, "turn_id": turn.turn_id, "turn_key": turn.key, "turn_number": turn.number,
        "started_us": turn.started_us, "ended_us": turn.ended_us, "status": turn.status,
        "prior_token_total": turn.prior_total, "originator": thread.originator,
    }
    for key, value in (("originator", thread.originator), ("agent_nickname", thread.agent_nickname),
                       ("model_provider", thread.model_provider), ("turn_id", turn.turn_id)):
        if value:
            metadata[key] = value
    if thread.parent_thread_id:
        metadata["parent_thread_id"] = thread.parent_thread_id
        if turn.parent_turn_id:
            parent_run = run_id_for(thread.parent_thread_id, turn.parent_turn_id)
            metadata.update(parent_turn_id=turn.parent_turn_id, parent_run_id=parent_run,
                            parent_trace_id=trace_id(parent_run))
    if thread.forked_from_id:
        metadata["forked_from_thread_id"] = thread.forked_from_id
    data: dict[str, Any] = {
        "name": "codex exec" if thread.originator == "codex_exec" else "codex",
        # Codex's own session id groups a thread with its sub-agents (older versions: the parent)
        "session_id": thread.session_id or thread.parent_thread_id or turn.thread_id or None,
        "cwd": thread.cwd,
        "codex_version": thread.cli_version,
        "format": "rollout",
        "rollout": rollout,
        "metadata": metadata,
    }
    git = thread.git or {}
    for key, name in (("repository_url", "repository"), ("branch", "branch"), ("commit_hash", "commit")):
        if isinstance(git.get(key), str) and git[key]:
            data[name] = git[key]
    return {key: value for key, value in data.items() if value is not None}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
