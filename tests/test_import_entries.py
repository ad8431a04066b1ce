"""What `import` puts on the stream for a turn (producer/importer.py through the real Producer, into
fakeredis): the entry contract of README, the records' own times, and exactly the entries `verify`
folds to know which observations a turn's trace must hold."""

from __future__ import annotations

import json
from pathlib import Path

import fakeredis

from codex_langfuse.ingest.entries import Entry
from codex_langfuse.ingest.fold import FoldContext, fold, new_state
from codex_langfuse.ingest.verify import expected_span_ids, turn_entries
from codex_langfuse.producer import Producer
from codex_langfuse.producer.importer import TurnShipper, import_files
from codex_langfuse.producer.rollout_state import RolloutState
from codex_langfuse.producer.rollouts import classify
from codex_langfuse.producer.rollout_turns import split_file

SOURCE = Path(__file__).parent / "fixtures" / "codex" / "rollout_0.169.0_resumed_two_turns.jsonl"
NOW, IDLE = 2 * 10 ** 15, 10 ** 16


def shipped_entries(server, stream="codex-langfuse:events") -> dict[str, list[Entry]]:
    runs: dict[str, list[Entry]] = {}
    for _, fields in fakeredis.FakeRedis(server=server).xrange(stream):
        entry = Entry.from_stream(fields)
        runs.setdefault(entry.run, []).append(entry)
    return runs


def producer_for(server, tmp_path, **options):
    return Producer(redis_url="redis://fake", spool_dir=tmp_path / "spool",
                    redis_client_factory=lambda: fakeredis.FakeRedis(server=server), **options)


def test_a_turn_goes_out_as_start_lines_end_with_the_records_times(tmp_path):
    server = fakeredis.FakeServer()
    producer = producer_for(server, tmp_path)
    state = RolloutState(tmp_path / "state.sqlite3")
    report = import_files([SOURCE], TurnShipper(producer, state), state, idle_seconds=IDLE / 1e6)
    producer.close(5)
    assert report.sent == 2
    runs = shipped_entries(server)
    turns, splitter = split_file(SOURCE, NOW, IDLE)
    assert set(runs) == {turn.run_id for turn in turns}
    for turn in turns:
        entries = runs[turn.run_id]
        assert [e.seq for e in entries] == list(range(len(entries)))
        assert entries[0].kind == "start" and entries[-1].kind == "end" and {e.kind for e in entries[1:-1]} == {"line"}
        start = entries[0].payload()
        assert start["format"] == "rollout" and start["rollout"]["turn_id"] == turn.turn_id
        assert start["producer"]["name"] == "codex-langfuse"
        assert entries[0].ts == turn.started_us and entries[-1].ts == turn.ended_us
        assert json.loads(entries[-1].data)["reason"] == "eof"
        for entry in entries[1:-1]:
            record = classify(entry.data.encode())
            assert record.ts_us == entry.ts  # the stream entry's ts is when Codex wrote the record
            assert record.kind not in ("session_meta", "world_state")
        # verify folds the very same entries (the producer's own key aside)
        expected = list(turn_entries(SOURCE, turn, splitter.state.header_us))
        assert [(e.seq, e.ts, e.kind, e.data) for e in entries[1:]] == [(e.seq, e.ts, e.kind, e.data) for e in expected[1:]]
    assert state.shipped(runs) == set(runs)


def test_oversized_lines_are_made_smaller_the_same_way_on_both_sides(tmp_path):
    lines = SOURCE.read_bytes().splitlines(keepends=True)
    big = ('{"timestamp":"2026-11-25T16:35:48.160Z","type":"response_item","payload":{"type":"function_call_output",'
           '"call_id":"call_mock_1","output":"Process exited with code 0\\nOutput:\\n' + "x" * 300_000 + '"}}\n')
    at = next(i for i, line in enumerate(lines) if b'"function_call_output"' in line and b"call_mock_1" in line)
    path = tmp_path / "rollout-big.jsonl"
    path.write_bytes(b"".join(lines[:at] + [big.encode(), b"\xff\xfe not utf-8\n"] + lines[at + 1:]))
    server = fakeredis.FakeServer()
    producer = producer_for(server, tmp_path, max_line_bytes=100_000)
    import_files([path], TurnShipper(producer, None), None, idle_seconds=IDLE / 1e6)
    producer.close(5)
    runs = shipped_entries(server)
    turns, splitter = split_file(path, NOW, IDLE)
    first = turns[0]
    sent = runs[first.run_id]
    shrunk = [e for e in sent if e.trunc]
    assert len(shrunk) == 1 and shrunk[0].trunc == len(big) - 1 and len(shrunk[0].data.encode()) <= 100_000
    assert json.loads(shrunk[0].data)["payload"]["call_id"] == "call_mock_1"  # still JSON: still paired
    assert any(e.binary for e in sent)
    context = FoldContext()
    worker = fold(new_state(first.run_id), sent, context)
    expected = fold(new_state(first.run_id), turn_entries(path, first, splitter.state.header_us, 100_000), context)
    assert [o.id for o in worker.observations] == [o.id for o in expected.observations]
    assert expected_span_ids(path, first, splitter.state.header_us, context)  # (default limit: 1 MiB)
    command = [o for o in worker.observations if o.name == "command"][0]
    assert command.metadata["exit_code"] == 0


def test_redis_down_the_turns_go_to_the_spool_and_are_shipped(tmp_path):
    from codex_langfuse.producer.spool import orphan_candidates

    producer = Producer(redis_url="redis://127.0.0.1:1/0", spool_dir=tmp_path / "spool", redis_timeout=0.2)
    state = RolloutState(tmp_path / "state.sqlite3")
    report = import_files([SOURCE], TurnShipper(producer, state), state, idle_seconds=IDLE / 1e6)
    assert report.sent == 2
    stats = producer.stats()
    assert stats["spooled"] == stats["submitted"] > 0 and stats["sent"] == 0
    producer.close(2)
    assert orphan_candidates(tmp_path / "spool")
    assert len(state.shipped(t.run_id for t in split_file(SOURCE, NOW, IDLE)[0])) == 2
