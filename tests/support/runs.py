"""Runs as the ingest side receives them: a Codex JSONL fixture turned into stream entries.

`fixture_entries("real_run_0.169.0_full.jsonl", meta={"model": "gpt-5-codex"})` gives the
`start` entry (seq 0), one `line` entry per stdout line and an `end` entry, with timestamps that
grow by `STEP_US` per entry from `T0_US`, so a test can compute every expected time by hand:
the entry with sequence number `seq` has `ts == T0_US + seq * STEP_US`, and the fixture's line
number `i` (0-based) has `seq == i + 1`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from codex_langfuse.ingest.entries import Entry

CODEX_FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "codex"
T0_US = 1_795_624_547_000_000  # 2026-11-25T16:35:47Z, when the recorded 0.169.0 runs started
STEP_US = 1_000_000  # one second between entries: times in Langfuse (millisecond precision) stay distinct
DEFAULT_RUN_ID = "run-test-0001"


def fixture_lines(name: str) -> list[str]:
    """The stdout lines of a fixture in tests/fixtures/codex/, without line endings."""
    return (CODEX_FIXTURES / name).read_text(encoding="utf-8").splitlines()


def ts_of(seq: int, t0_us: int = T0_US, step_us: int = STEP_US) -> int:
    """The timestamp `run_entries` gives the entry with sequence number `seq`."""
    return t0_us + seq * step_us


def line_entry(run_id: str, seq: int, line: str | bytes, ts: int, max_bytes: int | None = None) -> Entry:
    """One `line` entry as the dispatcher builds it: bytes that are not UTF-8 are decoded with
    replacement characters and marked `binary`; with `max_bytes`, a longer line is cut and `trunc`
    holds its original length (README, "Stream entry format")."""
    raw = line.encode("utf-8") if isinstance(line, str) else line
    trunc = None
    if max_bytes is not None and len(raw) > max_bytes:
        trunc = len(raw)
        raw = raw[:max_bytes]
    try:
        data, binary = raw.decode("utf-8"), False
    except UnicodeDecodeError:
        data, binary = raw.decode("utf-8", "replace"), True
    return Entry(run=run_id, seq=seq, ts=ts, kind="line", data=data, binary=binary, trunc=trunc)


def json_entry(run_id: str, seq: int, kind: str, data: dict[str, Any], ts: int) -> Entry:
    """A `start`, `meta`, `score` or `end` entry."""
    return Entry(run=run_id, seq=seq, ts=ts, kind=kind, data=json.dumps(data))


def run_entries(
    lines: Iterable[str | bytes],
    *,
    run_id: str = DEFAULT_RUN_ID,
    meta: dict[str, Any] | None = None,
    exit_code: int | None = 0,
    signal: int | None = None,
    reason: str = "exited",
    end: bool = True,
    t0_us: int = T0_US,
    step_us: int = STEP_US,
    max_line_bytes: int | None = None,
) -> list[Entry]:
    """`start` (with `meta` as its data), one `line` per stdout line, then `end` unless `end=False`
    (a run whose producer stopped reporting)."""
    entries = [json_entry(run_id, 0, "start", dict(meta or {}), ts_of(0, t0_us, step_us))]
    for line in lines:
        seq = len(entries)
        entries.append(line_entry(run_id, seq, line, ts_of(seq, t0_us, step_us), max_line_bytes))
    if end:
        seq = len(entries)
        entries.append(json_entry(run_id, seq, "end", {"exit_code": exit_code, "signal": signal, "reason": reason},
                                  ts_of(seq, t0_us, step_us)))
    return entries


def fixture_entries(name: str, **options: Any) -> list[Entry]:
    """`run_entries` of a fixture in tests/fixtures/codex/ (same keyword options)."""
    return run_entries(fixture_lines(name), **options)
