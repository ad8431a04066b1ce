"""Codex's own session history on disk, its files and records: the runner side of `import` and `follow`.

Codex writes every session (the terminal UI, the IDE extension, the desktop app and `codex exec`
alike) to `$CODEX_HOME/sessions/YYYY/MM/DD/rollout-<time>-<thread id>.jsonl` (moved to
`archived_sessions/`, possibly compressed as `.jsonl.zst`). Its eras:

- 0.20: unenveloped: a `{"id", "timestamp", "instructions"}` header, then the model transcript
  (`{"type": "message" | "function_call" | …}`) and `{"record_type": "state"}` lines, no
  per-line time, no token counts.
- 0.2x–0.98: `{"timestamp", "type", "payload"}` records (`session_meta`, `response_item`,
  `event_msg`, `turn_context`); a turn opens with the user's `user_message` event and has no end.
- 0.1xx: `task_started` / `task_complete` / `turn_aborted` with turn ids; since 0.148 `ordinal`,
  since 0.153 `token_usage_record`; since 0.144 paginated (`history_base`, forks referencing the
  parent's file instead of copying it).

The rule here: a rollout line is a `Record` (its envelope, its payload's type, its own time);
`rollout_turns` cuts a file into turns, and `read_records` reads a turn's byte range back to ship
it, without what the pipeline does not need. Standard library only; `zstandard` is imported for
`.jsonl.zst` files alone.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator, Mapping

from codex_langfuse.producer.entries import RUN_ID_PATTERN

ROLLOUT_NAME = re.compile(r"^rollout-.+\.jsonl(\.zst)?$")
RUN_ID_PREFIX = "codex"
READ_SIZE = 1 << 20
# Records that lead into a turn (they are written before the turn's own first record).
PRELUDE_EVENTS = {"thread_settings_applied"}
# Never shipped: session headers (their fields go into the run's start entry), the world state
# snapshots (large, derived), system/developer instructions, 0.20's state markers.
DROPPED_TYPES = {"session_meta", "world_state"}
INJECTED_USER_TEXT = re.compile(r"^\s*(<(?P<tag>[a-z_][a-z0-9_-]*)[\s>].*</(?P=tag)>\s*$|# AGENTS\.md instructions)",
                                re.DOTALL)


def codex_home(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    return Path(environ.get("CODEX_HOME") or Path.home() / ".codex").expanduser()


def default_roots(environ: Mapping[str, str] | None = None) -> list[Path]:
    """Where Codex keeps its history: `$CODEX_HOME/sessions` and `$CODEX_HOME/archived_sessions`."""
    home = codex_home(environ)
    return [home / "sessions", home / "archived_sessions"]


def is_rollout(path: Path) -> bool:
    return ROLLOUT_NAME.match(path.name) is not None


def find_rollouts(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Rollout files named by `paths` (files, or directories searched recursively), oldest first
    (their names begin with the session's start time, so a parent comes before its sub-agents)."""
    found: dict[Path, None] = {}
    for given in paths:
        path = Path(given).expanduser()
        if path.is_dir():
            for dirpath, _, names in os.walk(path):
                for name in names:
                    if ROLLOUT_NAME.match(name):
                        found[Path(dirpath) / name] = None
        elif path.is_file():
            found[path] = None
    return sorted(found, key=lambda p: (p.name, str(p)))


# ---- reading lines ------------------------------------------------------------------------------


def _open_binary(path: Path) -> BinaryIO:
    if path.name.endswith(".zst"):
        import zstandard  # only for compressed sessions: `pip install codex-langfuse[zstd]`

        return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)  # type: ignore[return-value]
    return open(path, "rb")


def read_lines(path: Path, start: int = 0, end: int | None = None, final: bool = True
               ) -> Iterator[tuple[int, int, bytes]]:
    """(offset, next offset, line without its newline) from byte `start` of the (decompressed)
    file up to `end`. A last line without a newline is yielded only when `final` (Codex may be
    writing it). Memory holds one read buffer and one line, however large the file."""
    with _open_binary(path) as handle:
        if start:
            if path.name.endswith(".zst"):
                _skip(handle, start)
            else:
                handle.seek(start)
        offset = start
        buffer = b""
        while end is None or offset < end:
            chunk = handle.read(READ_SIZE)
            if not chunk:
                break
            buffer += chunk
            position = 0  # within the buffer: each line is sliced once, the tail kept once
            while True:
                newline = buffer.find(b"\n", position)
                if newline < 0:
                    break
                following = offset + newline + 1 - position
                yield offset, following, buffer[position:newline].rstrip(b"\r")
                offset, position = following, newline + 1
                if end is not None and offset >= end:
                    return
            buffer = buffer[position:]
        if buffer and final and (end is None or offset < end):
            yield offset, offset + len(buffer), buffer.rstrip(b"\r")


def _skip(handle: BinaryIO, count: int) -> None:
    while count > 0:
        chunk = handle.read(min(count, READ_SIZE))
        if not chunk:
            return
        count -= len(chunk)


# ---- records ------------------------------------------------------------------------------------


@dataclass
class Record:
    """One rollout line, classified: envelope `kind` (`session_meta`, `response_item`, `event_msg`,
    `turn_context`, `token_usage_record`, …, or `raw` for 0.20's unenveloped lines), the
    payload's `type`, its time (None when the line has none) and the payload."""

    kind: str
    sub: str
    ts_us: int | None
    payload: dict[str, Any]

    @property
    def turn_id(self) -> str | None:
        value = self.payload.get("turn_id")
        return value if isinstance(value, str) and value else None


def parse_time(text: Any) -> int | None:
    """An RFC 3339 time (Codex writes `2026-11-25T16:36:02.446Z`) in microseconds since the epoch."""
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return int(moment.timestamp() * 1_000_000)


def classify(line: bytes) -> Record | None:
    """The record of one line, or None when it is not a JSON object."""
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    payload = obj.get("payload")
    if isinstance(obj.get("type"), str) and isinstance(payload, dict) and "timestamp" in obj:
        return Record(obj["type"], str(payload.get("type") or ""), parse_time(obj.get("timestamp")), payload)
    if "record_type" in obj:
        return Record("state", str(obj.get("record_type")), None, obj)
    if "type" not in obj and "id" in obj and "timestamp" in obj:
        return Record("session_meta", "", parse_time(obj.get("timestamp")), obj)  # the 0.20 header
    return Record("raw", str(obj.get("type") or ""), None, obj)


def message_text(payload: Mapping[str, Any]) -> str:
    parts = payload.get("content")
    if isinstance(parts, str):
        return parts
    texts = []
    for part in parts if isinstance(parts, list) else []:
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            texts.append(part["text"])
    return "\n".join(texts)


def is_injected(text: str) -> bool:
    """True for the context Codex adds as a user message (environment, AGENTS.md, notifications)."""
    return INJECTED_USER_TEXT.match(text) is not None


def is_user_prompt_item(record: Record) -> bool:
    """A transcript message the user typed (0.20 has nothing else to tell the prompt by)."""
    return (record.sub == "message" and record.payload.get("role") == "user"
            and not is_injected(message_text(record.payload)))


def is_prelude(record: Record) -> bool:
    """Records written ahead of a turn's own first record: instructions, the context messages,
    the user's message as a transcript item, settings."""
    if record.sub == "message" and record.payload.get("role") in ("developer", "system", "user"):
        return True
    if record.kind == "event_msg":
        return record.sub in PRELUDE_EVENTS
    return record.kind in ("world_state", "state")


def is_shipped(record: Record | None, line: bytes) -> bool:
    """Whether a record of a turn's range goes to the stream: the pipeline needs no headers, no
    world snapshots, no instructions (the developer message is the largest record of a turn)."""
    if record is None:
        return bool(line.strip())  # unreadable: shipped, the worker keeps it as a warning
    if record.kind in DROPPED_TYPES or record.kind == "state":
        return False
    return not (record.sub == "message" and record.payload.get("role") in ("developer", "system"))


# ---- ids -------------------------------------------------------------------------------------------


def uuid7_ms(value: Any) -> int | None:
    """The millisecond time inside a UUIDv7 (Codex's thread and turn ids since 0.1xx), else None."""
    if not isinstance(value, str) or len(value) != 36 or value[14:15] != "7":
        return None
    try:
        return int(value.replace("-", "")[:12], 16)
    except ValueError:
        return None


def _id_part(value: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", value)
    return cleaned if len(cleaned) <= 56 else hashlib.sha256(value.encode()).hexdigest()[:32]


def run_id_for(thread_id: str, turn_key: str) -> str:
    """The run id of one turn: `codex:<thread id>:<turn id>` (or `:n<k>`, the k-th turn, where
    Codex wrote no turn ids). A pure function of the data, so importing twice names the same runs."""
    run_id = f"{RUN_ID_PREFIX}:{_id_part(thread_id)}:{_id_part(turn_key)}"
    assert RUN_ID_PATTERN.fullmatch(run_id), run_id
    return run_id


def read_records(path: Path, start: int, end: int, header_us: int | None) -> Iterator[tuple[bytes, int]]:
    """The shipped lines of a byte range with their times (a line without one: the last time seen,
    else the session's start)."""
    last = header_us or 0
    for _, _, line in read_lines(path, start, end):
        record = classify(line)
        if record is not None and record.ts_us is not None:
            last = record.ts_us
        if is_shipped(record, line):
            yield line, last
