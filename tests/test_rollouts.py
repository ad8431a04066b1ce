"""Rollout files read as turns (producer/rollouts.py): every era of the fixtures, byte ranges, run
ids, forks' copied history, incremental reading as `follow` does it, and given-up turns."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from codex_langfuse.producer.entries import RUN_ID_PATTERN, trace_id
from codex_langfuse.producer.rollouts import classify, find_rollouts, read_lines, read_records, run_id_for, uuid7_ms
from codex_langfuse.producer.rollout_turns import SplitterState, TurnSplitter, split_file, start_data

FIXTURES = Path(__file__).parent / "fixtures"
ROLLOUTS = FIXTURES / "rollouts"
SHARED = FIXTURES / "codex"
NEVER_IDLE = 10 ** 16  # µs (317 years): no turn is given up
LATER = 2 * 10 ** 15  # µs (2033): after every fixture was written


def fixture(version: str, scenario: str, thread_prefix: str = "") -> Path:
    files = [p for p in find_rollouts([ROLLOUTS / version / scenario]) if thread_prefix in p.name]
    assert files, (version, scenario, thread_prefix)
    return files[0]


def turns_of(path: Path, final: bool = True):
    turns, splitter = split_file(path, LATER, NEVER_IDLE, final=final)
    return turns, splitter


# (file, [(turn key or None for n<k>, status, first prompt words)])
EXPECTED_TURNS = {
    SHARED / "rollout_0.169.0_full.jsonl": [("01a21390-6efc-7bf3-9118-055dbf095d38", "completed")],
    SHARED / "rollout_0.169.0_resumed_two_turns.jsonl": [("01a21390-360d-7771-827b-3163ebe1ad4e", "completed"),
                                                        ("01a213a0-5d5b-7373-b483-bc20efe5632f", "completed")],
    SHARED / "rollout_v0.98.0.jsonl": [("n1", "ended")],
    ROLLOUTS / "0.20.0/full": [("n1", "ended")],
    ROLLOUTS / "0.42.0/full": [("n1", "ended")],
    ROLLOUTS / "0.98.0/resume": [("n1", "ended"), ("n2", "ended")],
    ROLLOUTS / "0.98.0/turn_failed": [("n1", "ended")],
    ROLLOUTS / "0.130.0/full": [("01a22e8b-10a2-7793-b1f4-f0b9e80274c8", "completed")],
    ROLLOUTS / "0.130.0/resume": [("01a22e8b-1479-7420-9f11-de4a4b28e399", "completed"),
                                  ("01a22e8b-1638-7e62-a64c-1281d60731f0", "completed")],
    ROLLOUTS / "0.130.0/turn_failed": [("01a22e8b-1908-7341-a60d-3e453be54600", "completed")],
    ROLLOUTS / "0.151.0/resume": [("01a22e89-f0b2-7ac2-9b2e-67b8b1672db2", "completed"),
                                  ("01a22e89-f25b-7f53-9a4a-384fa8de5e82", "completed")],
    ROLLOUTS / "0.169.0/turn_failed": [("01a22e8a-0184-73d3-89a3-17131b9d2515", "completed")],
    ROLLOUTS / "0.169.0/interrupted": [("01a22e8a-03c3-7b72-a36d-003ebe837ada", "aborted")],
    ROLLOUTS / "0.169.0/archived": [("01a22e8b-f2c3-7ed0-98a0-3cc8098a3603", "completed")],
}


@pytest.mark.parametrize("where", sorted(EXPECTED_TURNS, key=str), ids=lambda p: str(p.relative_to(FIXTURES)))
def test_every_era_splits_into_its_turns(where):
    path = where if where.is_file() else find_rollouts([where])[0]
    turns, splitter = turns_of(path)
    assert [(t.key, t.status) for t in turns] == EXPECTED_TURNS[where]
    assert splitter.state.turn is None  # (records after the last turn's end wait for the next turn)
    for turn in turns:
        assert RUN_ID_PATTERN.fullmatch(turn.run_id)
        assert turn.run_id == f"codex:{turn.thread_id}:{turn.key}"
        assert turn.trace_id == trace_id(turn.run_id)
        assert turn.started_us <= turn.ended_us
    # consecutive turns: each begins where the previous ended, and nothing of a turn is dropped
    for earlier, later in zip(turns, turns[1:]):
        assert earlier.end == later.start


def test_a_turn_range_holds_its_records_and_what_led_into_it():
    path = ROLLOUTS / "0.98.0/resume"
    turns, splitter = turns_of(find_rollouts([path])[0])
    second = turns[1]
    lines = [line for _, _, line in read_lines(find_rollouts([path])[0], second.start, second.end)]
    records = [classify(line) for line in lines]
    # the second run's instructions and prompt came before its user_message: they are its own
    assert records[0].sub == "message" and records[0].payload["role"] == "developer"
    assert any(r.kind == "event_msg" and r.sub == "user_message" and r.payload["message"] == "Continue where you left off"
               for r in records)
    # ...and the last token_count of the first run, repeated by Codex, is known as the prior total
    assert second.prior_total["input_tokens"] == 2100
    shipped = [classify(line) for line, _ in read_records(find_rollouts([path])[0], second.start, second.end,
                                                           splitter.state.header_us)]
    assert not any(r.sub == "message" and r.payload.get("role") == "developer" for r in shipped)
    assert len(shipped) < len(records)


def test_run_ids_are_a_pure_function_of_the_data():
    path = find_rollouts([ROLLOUTS / "0.151.0/resume"])[0]
    first = [t.run_id for t in turns_of(path)[0]]
    assert first == [t.run_id for t in turns_of(path)[0]]
    assert len(set(first)) == 2
    assert run_id_for("a b/c", "n1") == "codex:a_b_c:n1"
    long = run_id_for("x" * 200, "y" * 200)
    assert RUN_ID_PATTERN.fullmatch(long)


def test_a_forks_copy_of_its_parents_history_is_no_turn_of_the_fork():
    child = fixture("0.130.0", "subagent_fork", "1d7b")
    parent = fixture("0.130.0", "subagent_fork", "1cc5")
    child_turns, _ = turns_of(child)
    parent_turns, _ = turns_of(parent)
    # the child's file copies the parent's turn 01a22e8c-1ced… (a task_started that never completes)
    assert b"01a22e8c-1ced-75e3-803b-de9d331390de" in child.read_bytes()
    assert [t.key for t in child_turns] == ["01a22e8c-1dbc-76c0-90f5-e41ac8cedb70"]
    assert [t.key for t in parent_turns] == ["01a22e8c-1ced-75e3-803b-de9d331390de"]
    # the copied token_count (1000) is the total before the fork's own turn: not counted again
    assert child_turns[0].prior_total["input_tokens"] == 1000
    copied_end = child_turns[0].start
    assert b"Delegate counting the files" in child.read_bytes()[:copied_end]
    assert child_turns[0].thread.parent_thread_id == parent_turns[0].thread_id
    assert child_turns[0].thread.forked_from_id == parent_turns[0].thread_id


def test_a_paginated_fork_references_its_parent_and_holds_only_its_own_turn():
    fork = fixture("0.169.0", "fork", "fe65")
    turns, _ = turns_of(fork)
    assert len(turns) == 1
    first_line = next(read_lines(fork))[2]
    assert json.loads(first_line)["payload"]["history_base"]["thread_id"] == turns[0].thread.forked_from_id


def test_a_sub_agents_turn_names_its_parent_turn_and_trace():
    parent_turn = turns_of(fixture("0.169.0", "subagent", "f9ee"))[0][0]
    child = fixture("0.169.0", "subagent", "fa9b")
    child_turn = turns_of(child)[0][0]
    assert child_turn.parent_turn_id == parent_turn.turn_id
    data = start_data(child_turn, child)
    assert data["metadata"]["parent_thread_id"] == parent_turn.thread_id
    assert data["metadata"]["parent_run_id"] == parent_turn.run_id
    assert data["metadata"]["parent_trace_id"] == parent_turn.trace_id
    assert data["session_id"] == parent_turn.thread_id  # Codex's session id: the parent's
    assert data["format"] == "rollout" and data["codex_version"] == "0.169.0"
    assert data["branch"] == "main" and len(data["commit"]) == 40


def test_compressed_sessions_read_the_same_as_plain_ones(tmp_path):
    import zstandard

    compressed = fixture("0.169.0", "archived")
    assert compressed.name.endswith(".jsonl.zst")
    plain = tmp_path / compressed.name.removesuffix(".zst")
    plain.write_bytes(zstandard.ZstdDecompressor().stream_reader(compressed.open("rb")).read())
    assert list(read_lines(compressed)) == list(read_lines(plain))
    a, b = turns_of(compressed)[0], turns_of(plain)[0]
    assert [(t.run_id, t.start, t.end, t.status) for t in a] == [(t.run_id, t.start, t.end, t.status) for t in b]
    middle = a[0].start + 1000
    assert list(read_lines(compressed, a[0].start, middle)) == list(read_lines(plain, a[0].start, middle))


def test_reading_resumes_from_any_line_with_a_saved_state():
    """What `follow` does across restarts: stop after any line, save the state as JSON, go on."""
    path = SHARED / "rollout_0.169.0_resumed_two_turns.jsonl"
    whole = [(t.run_id, t.start, t.end, t.status, t.prior_total) for t in turns_of(path)[0]]
    offsets = [following for _, following, _ in read_lines(path)]
    for stop in offsets[::5]:
        splitter = TurnSplitter()
        found = []
        for offset, following, line in read_lines(path, 0, stop):
            found += splitter.feed(offset, following, line)
        resumed = TurnSplitter(SplitterState.from_json(splitter.state.to_json()))
        for offset, following, line in read_lines(path, resumed.state.offset):
            found += resumed.feed(offset, following, line)
        found += resumed.finish(LATER, NEVER_IDLE, final=True)
        assert [(t.run_id, t.start, t.end, t.status, t.prior_total) for t in found] == whole, stop


def test_a_line_being_written_waits_for_its_newline(tmp_path):
    source = SHARED / "rollout_0.169.0_full.jsonl"
    data = source.read_bytes()
    growing = tmp_path / source.name.replace("rollout_", "rollout-")
    growing.write_bytes(data[:-40])  # the last line (task_complete) is cut
    turns, splitter = split_file(growing, LATER, NEVER_IDLE, final=False)
    assert turns == [] and splitter.state.turn is not None
    with growing.open("ab") as out:
        out.write(data[-40:])
    more, _ = split_file(growing, LATER, NEVER_IDLE, splitter.state, final=False)
    assert [t.status for t in more] == ["completed"]


def test_a_silent_open_turn_is_given_up_after_the_idle_time(tmp_path):
    source = SHARED / "rollout_0.169.0_full.jsonl"
    lines = source.read_bytes().splitlines(keepends=True)
    cut = tmp_path / "rollout-cut.jsonl"
    cut.write_bytes(b"".join(line for line in lines if b'"task_complete"' not in line))
    last = max(classify(line).ts_us for line in lines if classify(line).ts_us)
    turns, splitter = split_file(cut, last + 5_000_000, 10_000_000, final=False)
    assert turns == [] and splitter.state.turn is not None  # silent for 5 s of 10: still open
    turns = splitter.finish(last + 10_000_000, 10_000_000)
    assert [t.status for t in turns] == ["abandoned"]
    assert turns[0].end == cut.stat().st_size


def test_without_task_events_the_last_turn_ends_when_the_file_is_done():
    path = fixture("0.42.0", "full")
    turns, splitter = split_file(path, LATER, NEVER_IDLE, final=False)
    assert turns == [] and splitter.state.turn is not None  # it may go on
    assert [t.status for t in splitter.finish(LATER, NEVER_IDLE, final=True)] == ["ended"]


def test_unreadable_lines_stay_in_their_turn(tmp_path):
    lines = (SHARED / "rollout_0.169.0_full.jsonl").read_bytes().splitlines(keepends=True)
    broken = tmp_path / "rollout-broken.jsonl"
    broken.write_bytes(b"".join(lines[:10] + [b"{not json\n", b"\xff\xfe binary\n"] + lines[10:]))
    turns, splitter = turns_of(broken)
    assert len(turns) == 1
    shipped = [line for line, _ in read_records(broken, turns[0].start, turns[0].end, splitter.state.header_us)]
    assert b"{not json" in shipped and b"\xff\xfe binary" in shipped


def test_find_rollouts_takes_files_and_directories(tmp_path):
    shutil.copytree(ROLLOUTS / "0.169.0", tmp_path / "tree")
    (tmp_path / "tree" / "notes.txt").write_text("not a rollout")
    found = find_rollouts([tmp_path / "tree", SHARED / "rollout_v0.98.0.jsonl", tmp_path / "missing"])
    assert SHARED / "rollout_v0.98.0.jsonl" in found
    assert len([p for p in found if p.is_relative_to(tmp_path)]) == 7  # 2 + 2 + 1 + 1 + 1 (.zst)
    assert all(p.name.startswith("rollout") for p in found)


def test_uuid7_times():
    assert uuid7_ms("01a22e8c-1ced-75e3-803b-de9d331390de") < uuid7_ms("01a22e8c-1d7b-71d1-b094-0dbc85a57d11")
    assert uuid7_ms("88cc976c-4c05-4dfa-98eb-20a8e3eaad7f") is None  # a v4 id
    assert uuid7_ms(None) is None
