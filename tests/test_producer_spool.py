"""The spool file format and the sender's use of it (Redis simulated with fakeredis)."""

from __future__ import annotations

import os
import threading
import time

import fakeredis
import pytest
import redis

from codex_langfuse.producer import DEFAULT_STREAM, Producer, decode_fields
from codex_langfuse.producer.entries import entry_fields
from codex_langfuse.producer.spool import HEADER_LEN, SpoolFile, decode_record, encode_record, orphan_candidates

HANG_GUARD = 60


def record(seq: int, data: bytes = b"payload", run: str = "r") -> dict:
    return entry_fields(run, seq, "line", data, ts=1_700_000_000_000_000 + seq)


def test_records_round_trip_any_bytes():
    every_byte = bytes(range(256)) + b"\n\r\n" + "é".encode() + b"\xed\xa0\x80"
    fields = dict(record(5, every_byte), trunc="9999", future_field="kept")
    line = encode_record(fields)
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and line.isascii()
    assert decode_record(line[:-1]) == fields


@pytest.mark.parametrize("line", [b"", b"not json", b"[1]", b'{"run":"r"}', b'{"run":"r","data":"***"}',
                                  b'{"run":"r","data":"eA==","seq":1}'])
def test_lines_that_are_not_records_decode_to_none(line):
    assert decode_record(line) is None


def test_append_read_confirm_and_adopt_from_the_confirmed_offset(tmp_path):
    spool = SpoolFile.create(tmp_path)
    assert spool.path.name.startswith(f"p{os.getpid()}-") and spool.path.suffix == ".spool"
    assert spool.append([encode_record(record(seq)) for seq in range(10)], max_bytes=1 << 20) == 10
    records, offset, skipped = spool.read(max_records=4, max_bytes=1 << 20)
    assert [int(fields["seq"]) for fields in records] == [0, 1, 2, 3] and skipped == 0
    spool.confirm(offset)
    spool.release(delete=False)  # as if the process died here

    adopted = SpoolFile.adopt(spool.path)
    assert adopted is not None and adopted.pending
    records, offset, _ = adopted.read(max_records=100, max_bytes=1 << 20)
    assert [int(fields["seq"]) for fields in records] == list(range(4, 10))
    adopted.confirm(offset)
    assert not adopted.pending
    adopted.release(delete=True)
    assert not spool.path.exists()


def test_a_live_owner_keeps_its_file(tmp_path):
    spool = SpoolFile.create(tmp_path)
    spool.append([encode_record(record(0))], max_bytes=1 << 20)
    assert SpoolFile.adopt(spool.path) is None  # flock is held (per open file, so even in-process)
    assert orphan_candidates(tmp_path) == [spool.path]
    assert orphan_candidates(tmp_path, exclude=[spool.path]) == []
    spool.release(delete=False)
    assert SpoolFile.adopt(spool.path) is not None


def test_a_crash_mid_append_leaves_earlier_records_readable(tmp_path):
    spool = SpoolFile.create(tmp_path)
    spool.append([encode_record(record(seq)) for seq in range(3)], max_bytes=1 << 20)
    spool.release(delete=False)
    with open(spool.path, "ab") as file:
        file.write(encode_record(record(3))[:-7])  # the last append was cut short
    adopted = SpoolFile.adopt(spool.path)
    records, offset, skipped = adopted.read(max_records=100, max_bytes=1 << 20)
    assert [int(fields["seq"]) for fields in records] == [0, 1, 2] and skipped == 0
    adopted.confirm(offset)
    records, offset, skipped = adopted.read(max_records=100, max_bytes=1 << 20)
    assert records == [] and skipped == 1 and offset == adopted.end


def test_a_damaged_line_is_skipped_and_the_rest_read(tmp_path):
    spool = SpoolFile.create(tmp_path)
    spool.append([encode_record(record(0)), b'{"garbage\n', encode_record(record(2))], max_bytes=1 << 20)
    records, _, skipped = spool.read(max_records=100, max_bytes=1 << 20)
    assert [int(fields["seq"]) for fields in records] == [0, 2] and skipped == 1


def test_records_longer_than_a_read_block_are_read_whole(tmp_path):
    spool = SpoolFile.create(tmp_path)
    big = os.urandom(300_000)
    spool.append([encode_record(record(0, big)), encode_record(record(1))], max_bytes=1 << 22)
    records, offset, _ = spool.read(max_records=100, max_bytes=1024)
    assert len(records) == 1 and records[0]["data"] == big
    spool.confirm(offset)
    records, _, _ = spool.read(max_records=100, max_bytes=1024)
    assert [int(fields["seq"]) for fields in records] == [1]


def test_cap_and_compaction(tmp_path):
    spool = SpoolFile.create(tmp_path)
    line = encode_record(record(0))
    cap = HEADER_LEN + 3 * len(line)
    assert spool.append([line] * 5, max_bytes=cap) == 3
    records, offset, _ = spool.read(100, 1 << 20)
    spool.confirm(offset)  # everything sent: the owner's file shrinks back to its header
    assert os.path.getsize(spool.path) == HEADER_LEN and not spool.pending
    assert spool.append([line] * 5, max_bytes=cap) == 3


class SwitchableRedis:
    """fakeredis that refuses connections while `down` is set."""

    def __init__(self, server, down: threading.Event):
        self.real = fakeredis.FakeRedis(server=server)
        self.down = down
        self.connection_pool = self.real.connection_pool

    def pipeline(self, transaction=True):
        if self.down.is_set():
            raise redis.ConnectionError("refused (simulated)")
        return self.real.pipeline(transaction=transaction)

    def close(self):
        pass


def wait_for(predicate, what: str):
    deadline = time.monotonic() + HANG_GUARD
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.02)


def test_sender_spools_while_redis_refuses_then_drains_in_order(tmp_path):
    server, down = fakeredis.FakeServer(), threading.Event()
    down.set()
    producer = Producer(spool_dir=tmp_path, redis_client_factory=lambda: SwitchableRedis(server, down))
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
    producer = Producer(spool_dir=tmp_path, spool_max_bytes=20_000, redis_client_factory=lambda: SwitchableRedis(server, down))
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
    producer = Producer(spool_dir=blocker / "spool", redis_client_factory=lambda: SwitchableRedis(server, down))
    run = producer.start_run(run_id="nowhere")
    assert run.emit("lost")
    assert producer.flush(HANG_GUARD)
    assert producer.stats()["dropped_spool_error"] == 2
    producer.close(1)
