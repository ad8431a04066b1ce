"""The Python API against fakeredis: entry contract, sequence numbers, caps, never raising."""

from __future__ import annotations

import json

import os
import sys
import threading
import time
from collections import Counter, defaultdict

import fakeredis
import pytest

from codex_langfuse.producer import DEFAULT_STREAM, Producer, decode_fields, trace_id
from codex_langfuse.producer.entries import replayed_instance_id
from tests.support.intercepted_redis import InterceptedClient

HANG_GUARD = 60  # seconds; only keeps a broken build from hanging the suite


@pytest.fixture
def fake_server():
    return fakeredis.FakeServer()


@pytest.fixture
def make_producer(fake_server, tmp_path):
    made = []

    def make(**kwargs):
        kwargs.setdefault("spool_dir", tmp_path / "spool")
        kwargs.setdefault("redis_client_factory", lambda: fakeredis.FakeRedis(server=fake_server))
        producer = Producer(**kwargs)
        made.append(producer)
        return producer

    yield make
    for producer in made:
        producer.close(5)


def stream_entries(fake_server) -> list[dict]:
    client = fakeredis.FakeRedis(server=fake_server)
    return [decode_fields(fields) for _, fields in client.xrange(DEFAULT_STREAM)]


def gated_client(fake_server, gate: threading.Event) -> InterceptedClient:
    """A client whose writes wait for `gate`: a hung Redis, without time."""
    return InterceptedClient(fakeredis.FakeRedis(server=fake_server), lambda: gate.wait(HANG_GUARD))


def test_entries_follow_the_stream_contract(make_producer, fake_server):
    producer = make_producer()
    run = producer.start_run(
        run_id="run-contract", model="gpt-5-codex", name="nightly", user_id="u1", session_id="s1",
        tags=("a", "b"), metadata={"ci": "yes"}, environment="staging", prompt="fix it", cwd="/w", codex_version="0.169.0",
    )
    assert run.run_id == "run-contract" and run.trace_id == trace_id("run-contract")
    assert run.emit(b'{"type":"thread.started"}\n')
    assert run.emit('{"type":"turn.started"}\r\n')
    assert run.emit(b"\xff\xfe not utf-8 \x00")
    assert run.update(prompt="from stdin")
    assert run.score("success", True, data_type="BOOLEAN", comment="ci")
    assert run.finish(3)
    assert producer.close(10)

    entries = stream_entries(fake_server)
    assert [entry["seq"] for entry in entries] == list(range(7))
    assert [entry["kind"] for entry in entries] == ["start", "line", "line", "line", "meta", "score", "end"]
    assert all(entry["v"] == "1" and entry["run"] == "run-contract" and entry["trunc"] is None for entry in entries)
    stamps = [entry["ts"] for entry in entries]
    assert stamps == sorted(stamps)
    assert abs(stamps[0] - time.time() * 1_000_000) < 3600 * 1_000_000  # microseconds, not ms or ns
    start = entries[0]["data"]
    assert {key: start[key] for key in start if key != "producer"} == {
        "name": "nightly", "model": "gpt-5-codex", "user_id": "u1", "session_id": "s1", "tags": ["a", "b"],
        "metadata": {"ci": "yes"}, "environment": "staging", "prompt": "fix it", "cwd": "/w", "codex_version": "0.169.0",
    }
    assert start["producer"]["name"] == "codex-langfuse"
    assert [entry["data"] for entry in entries[1:4]] == [
        b'{"type":"thread.started"}', b'{"type":"turn.started"}', b"\xff\xfe not utf-8 \x00",
    ]
    assert entries[4]["data"] == {"prompt": "from stdin"}
    assert entries[5]["data"] == {"name": "success", "value": True, "data_type": "BOOLEAN", "comment": "ci"}
    assert entries[6]["data"] == {"exit_code": 3, "signal": None, "reason": "exited"}


def test_sequence_numbers_are_gapless_per_run_with_many_threads(make_producer, fake_server):
    producer = make_producer()
    runs = [producer.start_run(run_id=f"threaded-{index}") for index in range(3)]
    threads_per_run, lines_per_thread = 4, 300
    results = []

    def emit_all(run, thread_number):
        results.extend(run.emit(f"{thread_number}:{line}") for line in range(lines_per_thread))

    workers = [threading.Thread(target=emit_all, args=(run, number)) for run in runs for number in range(threads_per_run)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(HANG_GUARD)
    for run in runs:
        run.finish(0)
    assert all(results) and len(results) == len(runs) * threads_per_run * lines_per_thread
    assert producer.close(30)

    by_run = defaultdict(list)
    for entry in stream_entries(fake_server):
        by_run[entry["run"]].append(entry)
    expected_count = 2 + threads_per_run * lines_per_thread
    for run in runs:
        entries = by_run[run.run_id]
        assert sorted(entry["seq"] for entry in entries) == list(range(expected_count))
        lines = Counter(entry["data"] for entry in entries if entry["kind"] == "line")
        assert lines == Counter(f"{t}:{n}".encode() for t in range(threads_per_run) for n in range(lines_per_thread))
        # the stream order is the sequence order within a run
        assert [entry["seq"] for entry in entries] == list(range(expected_count))


def test_emit_hands_off_while_redis_hangs(make_producer, fake_server):
    gate = threading.Event()
    producer = make_producer(redis_client_factory=lambda: gated_client(fake_server, gate))
    run = producer.start_run(run_id="hung")
    results = []
    emitter = threading.Thread(target=lambda: results.extend(run.emit(f"line {n}") for n in range(2000)))
    emitter.start()
    emitter.join(HANG_GUARD)
    assert not emitter.is_alive() and len(results) == 2000 and all(results)
    assert producer.stats()["sent"] == 0  # nothing got through the hung client yet...
    gate.set()
    run.finish(0)
    assert producer.close(30)
    assert len(stream_entries(fake_server)) == 2002  # ...and then everything did


def test_full_queue_refuses_counts_and_keeps_the_sequence_gapless(make_producer, fake_server):
    gate = threading.Event()
    producer = make_producer(queue_max_bytes=20_000, redis_client_factory=lambda: gated_client(fake_server, gate))
    run = producer.start_run(run_id="capped")
    payload = b"x" * 1000
    outcomes = [run.emit(payload) for _ in range(100)]
    accepted = sum(outcomes)
    assert 0 < accepted < 100
    assert producer.stats()["dropped_queue_full"] == 100 - accepted
    gate.set()
    assert producer.flush(30)
    assert run.emit(b"after the queue drained")
    run.finish(0)
    assert producer.close(30)
    entries = stream_entries(fake_server)
    assert [entry["seq"] for entry in entries] == list(range(len(entries)))
    assert len(entries) == 1 + accepted + 2
    assert entries[-2]["data"] == b"after the queue drained"


def test_lines_read_together_are_handed_off_together_and_a_full_queue_takes_a_prefix(make_producer, fake_server):
    """`run` and `tee` hand over every line of a read at once; a cap hit midway keeps the first
    ones, drops the rest (counted), and the sequence stays gapless."""
    gate = threading.Event()
    producer = make_producer(queue_max_bytes=20_000, redis_client_factory=lambda: gated_client(fake_server, gate))
    run = producer.start_run(run_id="chunked")
    lines = [(f'{{"n":{n}}}\n'.encode() + b" " * 900, None) for n in range(60)]
    taken = run.emit_lines(lines)
    assert 0 < taken < 60
    assert producer.stats()["dropped_queue_full"] == 60 - taken
    gate.set()
    assert producer.flush(30)
    assert run.emit_lines([(b'{"n":"later"}', None), (b'{"n":"last"}\r\n', None)]) == 2
    run.finish(0)
    assert producer.close(30)
    entries = stream_entries(fake_server)
    assert [entry["seq"] for entry in entries] == list(range(len(entries)))
    line_entries = [entry for entry in entries if entry["kind"] == "line"]
    assert [json.loads(entry["data"])["n"] for entry in line_entries] == [*range(taken), "later", "last"]
    first = line_entries[:taken]
    assert len({entry["ts"] for entry in first}) == 1  # read together: one time


def test_start_is_retried_before_the_next_entry_when_the_queue_was_full(make_producer, fake_server):
    gate = threading.Event()
    producer = make_producer(queue_max_bytes=5_000, redis_client_factory=lambda: gated_client(fake_server, gate))
    filler = producer.start_run(run_id="filler")
    deadline = time.monotonic() + HANG_GUARD
    while producer.stats()["queued"] and time.monotonic() < deadline:
        time.sleep(0.01)  # the sender took the start entry and now hangs on it: the queue is ours to fill
    while filler.emit(b"y" * 1000):
        pass
    while filler.emit(b"y"):  # top it up to the last few bytes
        pass
    late = producer.start_run(run_id="late")  # its start entry does not fit now
    assert not late.emit(b"dropped with its start")
    gate.set()
    assert producer.flush(30)
    assert late.emit(b"kept")
    late.finish(0)
    assert producer.close(30)
    entries = [entry for entry in stream_entries(fake_server) if entry["run"] == "late"]
    assert [(entry["seq"], entry["kind"]) for entry in entries] == [(0, "start"), (1, "line"), (2, "end")]
    assert entries[1]["data"] == b"kept"


def test_long_lines_are_cut_and_carry_their_length(make_producer, fake_server):
    producer = make_producer(max_line_bytes=10)
    run = producer.start_run(run_id="long")
    assert run.emit(b"0123456789abcdefghijklmno\n")
    assert run.emit(b"0123456789")
    assert run.emit(b"0123456789", original_length=4096)  # already cut by the caller
    run.finish(0)
    assert producer.close(10)
    lines = [entry for entry in stream_entries(fake_server) if entry["kind"] == "line"]
    assert [(entry["data"], entry["trunc"]) for entry in lines] == [
        (b"0123456789", 25), (b"0123456789", None), (b"0123456789", 4096),
    ]
    assert producer.stats()["truncated"] == 2


def test_an_oversized_json_line_is_shrunk_so_it_still_parses(make_producer, fake_server):
    """A command with megabytes of output: its item.completed line keeps exit code and status."""
    output = "".join(f"line {n}\n" for n in range(200_000))  # ~1.3 MB
    line = ('{"type":"item.completed","item":{"id":"item_3","type":"command_execution","id":"dup",'
            f'"command":"make test","aggregated_output":{json.dumps(output)},"exit_code":2,"status":"failed"}}}}')
    producer = make_producer(max_line_bytes=256 * 1024)  # the line is ~2.5 MB: within 16x, shrinkable
    run = producer.start_run(run_id="big-output")
    assert run.emit(line.encode())
    run.finish(2)
    assert producer.close(10)
    [entry] = [e for e in stream_entries(fake_server) if e["kind"] == "line"]
    assert entry["trunc"] == len(line.encode())
    assert len(entry["data"]) <= 256 * 1024
    text = entry["data"].decode()
    assert text.count('"id":') == 2  # order and the duplicate key survive
    item = json.loads(text)["item"]
    assert (item["exit_code"], item["status"], item["command"]) == (2, "failed", "make test")
    assert item["aggregated_output"].startswith("line 0\nline 1\n")
    assert "characters cut by codex-langfuse" in item["aggregated_output"]


def test_a_silent_open_run_sends_heartbeats_and_a_finished_one_does_not(make_producer, fake_server):
    """Codex silent in a long command must not look like a dead producer to the idle timeout."""
    producer = make_producer(heartbeat_seconds=0.05)
    quiet = producer.start_run(run_id="quiet")
    done = producer.start_run(run_id="done")
    done.finish(0)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert producer.flush(5)
        beats = [e for e in stream_entries(fake_server) if e["run"] == "quiet" and e["kind"] == "meta"]
        if len(beats) >= 2:
            break
        time.sleep(0.02)
    assert len(beats) >= 2 and all(beat["data"] == {} for beat in beats)
    quiet.emit(b'{"type":"turn.started"}')
    quiet.finish(0)
    assert producer.close(10)
    seqs = [e["seq"] for e in stream_entries(fake_server) if e["run"] == "quiet"]
    assert seqs == list(range(len(seqs)))  # heartbeats take sequence numbers: still gapless
    assert [e["kind"] for e in stream_entries(fake_server) if e["run"] == "done"] == ["start", "end"]


def test_calls_never_raise_and_count_what_they_refuse(make_producer, fake_server):
    producer = make_producer()
    run = producer.start_run(run_id="odd")
    assert run.emit(12345) is False  # not a line
    assert run.score("x", float("nan")) is False
    assert run.score("x", 1, data_type="PERCENT") is False
    assert run.score("", 1) is False
    assert run.score("x", {"not": "a score"}) is False
    assert run.finish("zero") is False
    assert run.finish(0, reason="vanished") is False
    assert producer.stats()["errors"] == 7
    assert run.finish(0) is True
    assert run.finish(1) is True  # idempotent: the first end stands
    assert run.emit("after the end") is False
    assert run.update(prompt="late") is False
    assert producer.close(10)
    entries = stream_entries(fake_server)
    assert [entry["kind"] for entry in entries] == ["start", "end"]
    assert entries[-1]["data"]["exit_code"] == 0


def test_close_ends_open_runs_and_refuses_later_entries(make_producer, fake_server):
    producer = make_producer()
    run = producer.start_run(run_id="left-open")
    run.emit("only line")
    assert producer.close(10)
    assert run.emit("too late") is False
    newcomer = producer.start_run(run_id="after-close")
    assert newcomer.emit("refused") is False
    assert producer.stats()["dropped_closed"] >= 1
    entries = stream_entries(fake_server)
    assert entries[-1]["kind"] == "end"
    assert entries[-1]["data"] == {"exit_code": None, "signal": None, "reason": "closed"}


def test_invalid_run_id_is_refused_at_start():
    producer = Producer(redis_url="redis://127.0.0.1:9/0")
    with pytest.raises(ValueError):
        producer.start_run(run_id="not/valid")
    assert producer.close(1)


def test_default_run_id_is_a_uuid4(make_producer):
    import uuid

    run = make_producer().start_run()
    assert uuid.UUID(run.run_id).version == 4


def test_stats_names(make_producer):
    assert {
        "submitted", "sent", "spooled", "spool_replayed", "dropped_queue_full", "dropped_spool_full",
        "truncated", "redis_errors",
    } <= set(make_producer().stats())


_io_log: list | None = None  # (what, thread) while a test records; audit hooks cannot be removed


def _audit(event, args):
    if _io_log is not None and event in ("open", "socket.connect", "socket.sendto", "socket.sendmsg"):
        _io_log.append((event, threading.current_thread()))


sys.addaudithook(_audit)


def test_no_file_or_socket_io_on_the_emitting_thread(tmp_path, monkeypatch):
    """Invariant 1, observed: with Redis refusing, the entries go to the spool - on the sender thread."""
    global _io_log
    log: list = []
    for name in ("write", "pwrite", "fsync"):
        original = getattr(os, name)

        def recording(*args, _original=original, _name=name):
            log.append((f"os.{_name}", threading.current_thread()))
            return _original(*args)

        monkeypatch.setattr(os, name, recording)
    producer = Producer(redis_url="redis://127.0.0.1:9/0", spool_dir=tmp_path)
    _io_log = log
    try:
        run = producer.start_run(run_id="no-io")
        results = [run.emit(f"line {n}") for n in range(2000)]
        results += [run.update(prompt="p"), run.score("s", 1), run.finish(0)]
        on_caller = [what for what, thread in log if thread is threading.current_thread()]
        assert producer.flush(HANG_GUARD)
    finally:
        _io_log = None
    assert all(results)
    assert on_caller == []
    seen_elsewhere = {what for what, thread in log if thread is not threading.current_thread()}
    assert {"socket.connect", "os.pwrite"} <= seen_elsewhere  # the sender did try Redis and write the spool
    assert producer.stats()["spooled"] == 2004
    producer.close(5)


# ---- what Langfuse will store: the environment; joining the caller's trace ----

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_an_environment_is_sent_as_langfuse_stores_it_with_a_warning(make_producer, fake_server, caplog):
    producer = make_producer()
    with caplog.at_level("WARNING", logger="codex_langfuse.producer"):
        producer.start_run(run_id="env", environment="LangfuseStaging").finish(0)
    producer.close(5)
    (start,) = [e for e in stream_entries(fake_server) if e["kind"] == "start"]
    assert start["data"]["environment"] == "staging"
    assert "'LangfuseStaging' is sent as 'staging'" in caplog.text


def test_an_environment_langfuse_would_not_keep_is_a_clear_error(make_producer, fake_server):
    producer = make_producer()
    with pytest.raises(ValueError, match=r"environment 'ci\.nightly' cannot be used.*store it as 'default'"):
        producer.start_run(run_id="env", environment="ci.nightly")
    producer.close(5)
    assert stream_entries(fake_server) == []


def test_a_parent_and_model_parameters_go_into_the_start_entry(make_producer, fake_server):
    producer = make_producer()
    producer.start_run(run_id="joined", parent=TRACEPARENT, set_trace_attributes=True,
                       model_parameters={"reasoning_effort": "high"}).finish(0)
    producer.close(5)
    (start,) = [e for e in stream_entries(fake_server) if e["kind"] == "start"]
    assert start["data"]["parent"] == TRACEPARENT
    assert start["data"]["set_trace_attributes"] is True
    assert producer.start_run(run_id="joined-2", parent=TRACEPARENT).trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert start["data"]["model_parameters"] == {"reasoning_effort": "high"}


@pytest.mark.parametrize("parent", [
    "not a traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",          # no flags
    "00-00000000000000000000000000000000-b7ad6b7169203331-01",                         # all-zero trace id
    "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",                         # all-zero span id
    "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",                         # uppercase
    "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",                         # invalid version
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",                   # 00 has 4 fields
])
def test_an_invalid_parent_is_ignored_with_a_warning_never_raised(make_producer, fake_server, caplog, parent):
    producer = make_producer()
    with caplog.at_level("WARNING", logger="codex_langfuse.producer"):
        run = producer.start_run(run_id="alone", parent=parent)
    run.finish(0)
    producer.close(5)
    (start,) = [e for e in stream_entries(fake_server) if e["kind"] == "start"]
    assert "parent" not in start["data"]
    assert "not a W3C traceparent" in caplog.text


def test_a_later_trace_context_version_with_more_fields_is_accepted(make_producer, fake_server):
    producer = make_producer()
    producer.start_run(run_id="future", parent="01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what").finish(0)
    producer.close(5)
    (start,) = [e for e in stream_entries(fake_server) if e["kind"] == "start"]
    assert start["data"]["parent"].startswith("01-0af7651916cd43dd8448eb211c80319c")

def test_every_entry_of_a_run_carries_its_inst_and_a_reused_run_id_gets_another(make_producer, fake_server):
    """`inst` tells apart two runs that reuse one run id (a CI job calling Codex twice)."""
    producer = make_producer()
    first = producer.start_run(run_id="ci-job-7")
    first.emit(b'{"type":"turn.started"}')
    first.update(model="m")
    first.score("s", 1)
    first.finish(0)
    second = producer.start_run(run_id="ci-job-7")
    second.emit_lines([(b"a", None), (b"b", None)])
    second.finish(1)
    assert producer.close(10)
    entries = stream_entries(fake_server)
    insts = [entry["inst"] for entry in entries]
    assert insts == [first.inst] * 5 + [second.inst] * 4
    assert first.inst != second.inst and all(len(inst) == 16 and int(inst, 16) >= 0 for inst in insts)


def test_finish_carries_the_end_of_codexs_stderr(make_producer, fake_server):
    producer = make_producer()
    run = producer.start_run(run_id="failed-to-start")
    assert run.finish(1, stderr="x" * 10_000 + "Not inside a trusted directory\n")
    assert producer.close(10)
    end = stream_entries(fake_server)[-1]["data"]
    assert end["exit_code"] == 1 and end["stderr"].endswith("Not inside a trusted directory\n")
    assert len(end["stderr"]) == 8192  # the last few KiB


def test_emit_queues_the_line_it_was_given_and_the_sender_strips_and_fits_it(make_producer, fake_server):
    """The caller's thread appends the object it got; the line ending goes and a long line is fitted
    on the sender thread, exactly as before."""
    gate = threading.Event()
    producer = make_producer(max_line_bytes=8, redis_client_factory=lambda: gated_client(fake_server, gate))
    run = producer.start_run(run_id="as-read")
    deadline = time.monotonic() + HANG_GUARD
    while producer.stats()["queued"] and time.monotonic() < deadline:
        time.sleep(0.01)  # the sender took the start entry and waits at the gate: what follows stays queued
    line = b"abc\r\n"
    assert run.emit(line)
    assert producer._sender._queue[-1][3] is line  # the object itself: no copy on the caller's thread
    assert run.emit(b"a\n\n") and run.emit(b"0123456789abcdef" * 20 + b"\n")
    gate.set()
    run.finish(0)
    assert producer.close(10)
    lines = [(entry["data"], entry["trunc"]) for entry in stream_entries(fake_server) if entry["kind"] == "line"]
    assert lines == [(b"abc", None), (b"a\n", None), (b"01234567", 320)]


def test_a_history_sent_again_keeps_its_inst_and_an_invalid_inst_is_refused(make_producer, fake_server):
    """`import` and `verify` send a turn again under the same inst: one run sent twice, not a reuse."""
    producer = make_producer()
    again = [producer.start_run(run_id="codex:t:1", inst=replayed_instance_id("codex:t:1")) for _ in range(2)]
    for run in again:
        run.finish(0)
    assert again[0].inst == again[1].inst == replayed_instance_id("codex:t:1") != replayed_instance_id("codex:t:2")
    with pytest.raises(ValueError):
        producer.start_run(run_id="r", inst="not/an inst")
    assert producer.close(10)
    assert {entry["inst"] for entry in stream_entries(fake_server)} == {again[0].inst}


def test_a_run_sent_again_after_an_attempt_that_failed_midway_is_numbered_as_the_first_time(
        make_producer, fake_server):
    """`follow` ships a turn, the file goes away under it (the attempt raises, the run never
    finished) and the turn is shipped again: its entries must be the first attempt's, seq for seq,
    or its observations get other ids than `import` and `verify` give them."""
    producer = make_producer()
    inst = replayed_instance_id("codex:t:1")
    first = producer.start_run(run_id="codex:t:1", inst=inst, ts=1_795_000_000_000_000)
    first.emit_recorded([(b'{"a": 1}', 1_795_000_000_000_001)])  # then the attempt raised
    second = producer.start_run(run_id="codex:t:1", inst=inst, ts=1_795_000_000_000_000)
    second.emit_recorded([(b'{"a": 1}', 1_795_000_000_000_001), (b'{"b": 2}', 1_795_000_000_000_002)])
    second.finish(None, ts=1_795_000_000_000_003)
    assert producer.close(10)
    sent = [(e["seq"], e["kind"], e["data"]) for e in stream_entries(fake_server)]
    first_attempt, retry = sent[:2], sent[2:]
    assert [seq for seq, _, _ in first_attempt] == [0, 1]
    assert [(seq, kind) for seq, kind, _ in retry] == [(0, "start"), (1, "line"), (2, "line"), (3, "end")]
    assert first_attempt == retry[:2]  # the same entries: filed once by the back end
