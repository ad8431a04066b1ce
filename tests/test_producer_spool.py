"""The spool file format and the sender's use of it (Redis simulated with fakeredis)."""

from __future__ import annotations

import os
import threading
import time

import fakeredis
import pytest
import redis

from codex_langfuse.producer import DEFAULT_STREAM, Producer, decode_fields
from codex_langfuse.producer.spool import HEADER_LEN, SpoolFile, decode_record, encode_record, orphan_candidates
from codex_langfuse.producer.xadd import LINES
from tests.support.intercepted_redis import InterceptedClient

HANG_GUARD = 60
DEST = "0123456789abcdef"


def item(seq: int, data: bytes = b"payload", run: str = "r") -> tuple:
    """A queued item as the sender holds it: (run, inst, seq, kind, data, ts, extra)."""
    return (run, "00ff00ff00ff00ff", seq, "line", data, 1_700_000_000_000_000 + seq, None)


def record(seq: int, data: bytes = b"payload", run: str = "r") -> bytes:
    return encode_record(item(seq, data, run), DEST)


def seqs(records) -> list[int]:
    return [queued[2] for queued, _ in records]


QUEUED = [
    ("r", "00ff00ff00ff00ff", 5, "line", bytes(range(256)) + b"\n\r\n" + "é".encode() + b"\xed\xa0\x80", 17, 9999),
    ("r", None, 0, "start", b'{"model":"m"}', 1, None),
    ("r", "00ff00ff00ff00ff", 7, LINES, b'{"a":1}\n\xff\r\n\n', 2, 3),
    ("run.with:odd-chars_1", "00ff00ff00ff00ff", 9, "line", b"", 3, None),
]


def test_records_round_trip_any_bytes_with_their_destination(tmp_path):
    spool = SpoolFile.create(tmp_path)
    assert spool.append([encode_record(queued, DEST) for queued in QUEUED], max_bytes=1 << 20) == len(QUEUED)
    records, offset, skipped = spool.read(max_records=100, max_bytes=1 << 20)
    assert records == [(queued, DEST) for queued in QUEUED] and skipped == 0 and offset == spool.end


def test_records_of_the_earlier_base64_format_are_still_read(tmp_path):
    spool = SpoolFile.create(tmp_path)
    old = b'{"v":"1","run":"r","seq":"1","ts":"2","kind":"line","data":"eA==","trunc":"9"}\n'
    spool.append([old, record(2)], max_bytes=1 << 20)
    records, _, skipped = spool.read(max_records=100, max_bytes=1 << 20)
    assert records == [(("r", None, 1, "line", b"x", 2, 9), None), (item(2), DEST)] and skipped == 0


@pytest.mark.parametrize("line", [b"", b"not json", b"[1]", b'{"run":"r"}', b'{"run":"r","data":"***"}',
                                  b'{"run":"r","data":"eA==","seq":1}',
                                  b'{"run":"r","data":"eA==","seq":"1","ts":"2","kind":"line","n":"1"}'])
def test_lines_that_are_not_records_decode_to_none(line):
    assert decode_record(line) is None


def test_a_record_whose_data_is_not_what_its_header_says_is_skipped(tmp_path):
    spool = SpoolFile.create(tmp_path)
    damaged = record(1).replace(b'"size":"7"', b'"size":"3"')  # its data then does not end where a newline is
    spool.append([record(0), damaged, record(2)], max_bytes=1 << 20)
    records, _, skipped = spool.read(max_records=100, max_bytes=1 << 20)
    assert seqs(records) == [0, 2] and skipped >= 1


def test_append_read_confirm_and_adopt_from_the_confirmed_offset(tmp_path):
    spool = SpoolFile.create(tmp_path)
    assert spool.path.name.startswith(f"p{os.getpid()}-") and spool.path.suffix == ".spool"
    assert spool.append([record(seq) for seq in range(10)], max_bytes=1 << 20) == 10
    assert spool.destination() == DEST
    records, offset, skipped = spool.read(max_records=4, max_bytes=1 << 20)
    assert seqs(records) == [0, 1, 2, 3] and skipped == 0
    spool.confirm(offset)
    spool.release(delete=False)  # as if the process died here

    adopted = SpoolFile.adopt(spool.path)
    assert adopted is not None and adopted.pending
    records, offset, _ = adopted.read(max_records=100, max_bytes=1 << 20)
    assert seqs(records) == list(range(4, 10))
    adopted.confirm(offset)
    assert not adopted.pending
    adopted.release(delete=True)
    assert not spool.path.exists()


def test_a_live_owner_keeps_its_file(tmp_path):
    spool = SpoolFile.create(tmp_path)
    spool.append([record(0)], max_bytes=1 << 20)
    assert SpoolFile.adopt(spool.path) is None  # flock is held (per open file, so even in-process)
    assert orphan_candidates(tmp_path) == [spool.path]
    assert orphan_candidates(tmp_path, exclude=[spool.path]) == []
    spool.release(delete=False)
    assert SpoolFile.adopt(spool.path) is not None


@pytest.mark.parametrize("cut", [-1, -4, 20], ids=["before its newline", "in its data", "in its header"])
def test_a_crash_mid_append_leaves_earlier_records_readable(tmp_path, cut):
    spool = SpoolFile.create(tmp_path)
    spool.append([record(seq) for seq in range(3)], max_bytes=1 << 20)
    spool.release(delete=False)
    with open(spool.path, "ab") as file:
        file.write(record(3)[:cut])  # the last append was cut short
    adopted = SpoolFile.adopt(spool.path)
    records, offset, skipped = adopted.read(max_records=100, max_bytes=1 << 20)
    assert seqs(records) == [0, 1, 2] and skipped == 0
    adopted.confirm(offset)
    records, offset, skipped = adopted.read(max_records=100, max_bytes=1 << 20)
    assert records == [] and skipped == 1 and offset == adopted.end


def test_a_damaged_line_is_skipped_and_the_rest_read(tmp_path):
    spool = SpoolFile.create(tmp_path)
    spool.append([record(0), b'{"garbage\n', record(2)], max_bytes=1 << 20)
    records, _, skipped = spool.read(max_records=100, max_bytes=1 << 20)
    assert seqs(records) == [0, 2] and skipped == 1


def test_records_longer_than_a_read_block_are_read_whole(tmp_path):
    spool = SpoolFile.create(tmp_path)
    big = os.urandom(300_000)
    spool.append([record(0, big), record(1)], max_bytes=1 << 22)
    records, offset, _ = spool.read(max_records=100, max_bytes=1024)
    assert len(records) == 1 and records[0][0][4] == big
    spool.confirm(offset)
    records, _, _ = spool.read(max_records=100, max_bytes=1024)
    assert seqs(records) == [1]


def test_cap_and_compaction(tmp_path):
    spool = SpoolFile.create(tmp_path)
    line = record(0)
    cap = HEADER_LEN + 3 * len(line)
    assert spool.append([line] * 5, max_bytes=cap) == 3
    records, offset, _ = spool.read(100, 1 << 20)
    spool.confirm(offset)  # everything sent: the owner's file shrinks back to its header
    assert os.path.getsize(spool.path) == HEADER_LEN and not spool.pending
    assert spool.append([line] * 5, max_bytes=cap) == 3


def switchable_redis(server, down: threading.Event) -> InterceptedClient:
    """fakeredis that refuses connections while `down` is set."""

    def refuse_while_down():
        if down.is_set():
            raise redis.ConnectionError("refused (simulated)")

    return InterceptedClient(fakeredis.FakeRedis(server=server), refuse_while_down)


def wait_for(predicate, what: str):
    deadline = time.monotonic() + HANG_GUARD
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.02)


def test_sender_spools_while_redis_refuses_then_drains_in_order(tmp_path):
    server, down = fakeredis.FakeServer(), threading.Event()
    down.set()
    producer = Producer(spool_dir=tmp_path, redis_client_factory=lambda: switchable_redis(server, down))
    run = producer.start_run(run_id="spooled")
    assert all(run.emit(f"line {n}".encode() + b"\xff") for n in range(1000))
    run.finish(0)
    assert producer.flush(HANG_GUARD)  # in the spool file
    stats = producer.stats()
    assert stats["spooled"] == 1002 and stats["sent"] == 0 and stats["redis_errors"] >= 1
    [spool_path] = orphan_candidates(tmp_path)
    assert os.path.getsize(spool_path) > HEADER_LEN

    down.clear()
    client = fakeredis.FakeRedis(server=server)
    wait_for(lambda: client.xlen(DEFAULT_STREAM) >= 1002, "the spool to drain")
    assert producer.close(10)
    entries = [decode_fields(fields) for _, fields in client.xrange(DEFAULT_STREAM)]
    assert [entry["seq"] for entry in entries] == list(range(1002))
    assert entries[5]["data"] == b"line 4\xff"
    assert producer.stats()["spool_replayed"] == 1002
    assert not spool_path.exists()  # drained and closed: nothing left behind


def test_spool_cap_drops_and_counts(tmp_path, caplog):
    server, down = fakeredis.FakeServer(), threading.Event()
    down.set()
    producer = Producer(spool_dir=tmp_path, spool_max_bytes=20_000, redis_client_factory=lambda: switchable_redis(server, down))
    run = producer.start_run(run_id="spool-cap")
    for n in range(200):
        run.emit(b"z" * 500)
    assert producer.flush(HANG_GUARD)
    stats = producer.stats()
    assert stats["dropped_spool_full"] > 0
    assert stats["spooled"] + stats["dropped_spool_full"] == 201
    [spool_path] = orphan_candidates(tmp_path)
    assert os.path.getsize(spool_path) <= 20_000
    producer.close(1)
    assert len([r for r in caplog.records if "reached its cap" in r.getMessage()]) == 1  # once per episode
    assert all(r.name == "codex_langfuse.producer" for r in caplog.records)


def test_unwritable_spool_counts_the_loss_and_never_raises(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    server, down = fakeredis.FakeServer(), threading.Event()
    down.set()
    producer = Producer(spool_dir=blocker / "spool", redis_client_factory=lambda: switchable_redis(server, down))
    run = producer.start_run(run_id="nowhere")
    assert run.emit("lost")
    assert producer.flush(HANG_GUARD)
    assert producer.stats()["dropped_spool_error"] == 2
    producer.close(1)
