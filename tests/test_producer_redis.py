"""The producer against a real redis-server that stops, freezes (SIGSTOP) and comes back,
runners killed with SIGKILL, and forks. Deadlines below only keep a broken build from hanging."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter

import pytest
import redis

from codex_langfuse.producer import DEFAULT_STREAM, Producer, decode_fields
from codex_langfuse.producer.spool import orphan_candidates
from tests.support.intercepted_redis import InterceptedClient

pytestmark = pytest.mark.integration

HANG_GUARD = 90  # seconds


def stream_entries(server) -> list[dict]:
    client = server.client(socket_timeout=5)
    try:
        return [decode_fields(fields) for _, fields in client.xrange(DEFAULT_STREAM)]
    finally:
        client.close()


def wait_for(predicate, what: str, timeout: float = HANG_GUARD):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


def count_by_key(entries) -> Counter:
    return Counter((entry["run"], entry["seq"]) for entry in entries)


def run_with_guard(function, *args):
    """Call function in a thread; fail (instead of hanging) if it does not return."""
    outcome = {}

    def target():
        outcome["value"] = function(*args)

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(HANG_GUARD)
    assert not worker.is_alive(), f"{function.__name__} did not return"
    return outcome["value"]


def emit_lines(run, count: int, prefix: str = "line") -> list[bool]:
    return [run.emit(f'{{"n":{n},"p":"{prefix}"}}') for n in range(count)]


def test_redis_stopped_lines_spool_and_arrive_exactly_once_after_restart(redis_server, tmp_path):
    redis_server.stop()
    producer = Producer(redis_url=redis_server.url, spool_dir=tmp_path)
    run = producer.start_run(run_id="outage-stopped")
    results = run_with_guard(emit_lines, run, 3000)
    assert all(results) and len(results) == 3000
    assert run.finish(0)
    assert run_with_guard(producer.flush, 30.0)
    stats = producer.stats()
    assert stats["spooled"] == 3002 and stats["sent"] == 0 and stats["queued"] == 0
    assert stats["redis_errors"] >= 1
    assert orphan_candidates(tmp_path), "the entries wait in a spool file"

    redis_server.start()  # same port
    wait_for(lambda: len(stream_entries(redis_server)) >= 3002, "the spool to drain into Redis")
    assert run_with_guard(producer.close, 10.0)
    entries = stream_entries(redis_server)
    counts = count_by_key(entries)
    assert set(counts) == {("outage-stopped", seq) for seq in range(3002)}
    assert set(counts.values()) == {1}
    assert [entry["seq"] for entry in entries] == list(range(3002))  # in order, too
    assert producer.stats()["spool_replayed"] == 3002
    assert orphan_candidates(tmp_path) == []


def test_redis_frozen_before_first_contact_close_keeps_its_deadline_and_nothing_is_duplicated(redis_server, tmp_path):
    redis_server.freeze()
    try:
        runner = Producer(redis_url=redis_server.url, spool_dir=tmp_path)
        run = runner.start_run(run_id="outage-frozen")
        assert all(run_with_guard(emit_lines, run, 2000))
        assert run.finish(0)
        # close waits for the hung Redis at most until its deadline; a guard thread catches a hang
        run_with_guard(runner.close, 3.0)
    finally:
        redis_server.thaw()
    # a later producer on the machine adopts the runner's spool file once the runner let go of it
    adopter = Producer(redis_url=redis_server.url, spool_dir=tmp_path, adopt_interval=0.2)
    adopter.start_run(run_id="adopter").finish(0)
    wait_for(lambda: len(stream_entries(redis_server)) >= 2002 + 2, "the frozen run to arrive")
    assert run_with_guard(adopter.close, 10.0)
    counts = count_by_key(stream_entries(redis_server))
    assert {key for key in counts if key[0] == "outage-frozen"} == {("outage-frozen", seq) for seq in range(2002)}
    assert set(counts.values()) == {1}


def test_redis_frozen_mid_session_every_entry_arrives_and_only_the_batch_in_flight_can_repeat(redis_server, tmp_path):
    producer = Producer(redis_url=redis_server.url, spool_dir=tmp_path, batch_size=100)
    run = producer.start_run(run_id="frozen-mid")
    assert all(emit_lines(run, 50, "before"))
    assert producer.flush(30)
    wait_for(lambda: len(stream_entries(redis_server)) == 51, "the first lines")
    redis_server.freeze()
    try:
        assert all(run_with_guard(emit_lines, run, 1000, "during"))
        assert run.finish(0)
        assert run_with_guard(producer.flush, 30.0)  # into the spool once the timeout fired
    finally:
        redis_server.thaw()
    wait_for(lambda: {entry["seq"] for entry in stream_entries(redis_server)} >= set(range(1052)), "every entry")
    assert run_with_guard(producer.close, 10.0)
    entries = stream_entries(redis_server)
    counts = count_by_key(entries)
    assert set(counts) == {("frozen-mid", seq) for seq in range(1052)}
    # Redis executes what sat in its socket when it froze, and the spool sends it again: at-least-once
    # (the ingest side dedupes by run+seq), bounded by one batch, and every copy identical
    assert sum(counts.values()) - len(counts) <= 100
    copies = {}
    for entry in entries:
        assert copies.setdefault(entry["seq"], entry) == entry


RUNNER = textwrap.dedent("""
    import json, sys, time
    from codex_langfuse.producer import Producer
    producer = Producer(redis_url=sys.argv[1], spool_dir=sys.argv[2])
    run = producer.start_run(run_id="killed-runner")
    for n in range(int(sys.argv[3])):
        run.emit(b'{"n":%d}' % n)
    assert producer.flush(60), producer.stats()
    print(json.dumps(producer.stats()), flush=True)
    time.sleep(600)
""")


def test_spool_of_a_runner_killed_while_redis_is_down_is_adopted_and_delivered(redis_server, tmp_path):
    redis_server.stop()
    runner = subprocess.Popen(
        [sys.executable, "-c", RUNNER, redis_server.url, str(tmp_path), "1500"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        report = run_with_guard(runner.stdout.readline)
        assert json.loads(report)["spooled"] == 1501
    finally:
        os.kill(runner.pid, signal.SIGKILL)
        runner.wait(HANG_GUARD)
    [left_behind] = orphan_candidates(tmp_path)

    redis_server.start()
    adopter = Producer(redis_url=redis_server.url, spool_dir=tmp_path, adopt_interval=0.2)
    adopter.start_run(run_id="next-runner").finish(0)
    wait_for(lambda: len([e for e in stream_entries(redis_server) if e["run"] == "killed-runner"]) >= 1501, "adoption")
    wait_for(lambda: not left_behind.exists(), "the adopted spool file to be removed")
    assert run_with_guard(adopter.close, 10.0)
    entries = [entry for entry in stream_entries(redis_server) if entry["run"] == "killed-runner"]
    assert [entry["seq"] for entry in entries] == list(range(1501))
    assert entries[0]["kind"] == "start" and entries[-1]["data"] == b'{"n":1499}'
    assert adopter.stats()["spool_replayed"] == 1501


def test_fork_child_delivers_its_own_entries_and_not_the_parents_queue(redis_server, tmp_path):
    parent_pid = os.getpid()
    gate = threading.Event()

    def gated_client():
        def hold_the_parents_writes():
            if os.getpid() == parent_pid:  # the parent's sender holds its batch until we say so
                gate.wait(HANG_GUARD)

        return InterceptedClient(redis.Redis.from_url(redis_server.url, socket_timeout=5), hold_the_parents_writes)

    producer = Producer(redis_url=redis_server.url, spool_dir=tmp_path, redis_client_factory=gated_client)
    parent_run = producer.start_run(run_id="parent-run")
    wait_for(lambda: producer.stats()["queued"] == 0, "the sender to take the start entry")
    assert all(emit_lines(parent_run, 20, "parent"))
    assert producer.stats()["queued"] == 20  # queued in the parent when it forks

    child_pid = os.fork()
    if child_pid == 0:
        status = 1
        try:
            child_run = producer.start_run(run_id="child-run")
            emit_lines(child_run, 5, "child")
            child_run.finish(0)
            wrote_into_parents_run = parent_run.emit("from the child")  # refused: its numbers are the parent's
            status = 0 if producer.close(30) and not wrote_into_parents_run else 3
        finally:
            os._exit(status)
    _, wait_status = os.waitpid(child_pid, 0)
    assert os.waitstatus_to_exitcode(wait_status) == 0

    after_child = stream_entries(redis_server)
    assert count_by_key(after_child) == Counter({("child-run", seq): 1 for seq in range(7)})  # and nothing of the parent
    gate.set()
    parent_run.finish(0)
    assert run_with_guard(producer.close, 30.0)
    counts = count_by_key(stream_entries(redis_server))
    assert {key: n for key, n in counts.items() if key[0] == "parent-run"} == {("parent-run", seq): 1 for seq in range(22)}


def test_a_child_forked_while_the_redis_client_is_busy_does_not_hang(redis_server, tmp_path):
    """A fork while another thread holds the Redis client's pool lock (here held on purpose): the
    child's copy of that lock stays held forever, and closing the parent's client there waits on
    it. The child must leave that client alone and make its own."""
    producer = Producer(redis_url=redis_server.url, spool_dir=tmp_path)
    first = producer.start_run(run_id="before-fork")
    first.finish(0)
    assert producer.flush(HANG_GUARD)
    pool = producer._sender._client.connection_pool
    held, release = threading.Event(), threading.Event()

    def hold() -> None:  # what the sender thread in the middle of a command may hold at the fork
        with pool._lock:
            held.set()
            release.wait(HANG_GUARD)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(HANG_GUARD)
    child_pid = os.fork()
    if child_pid == 0:
        status = 1
        try:
            child_run = producer.start_run(run_id="after-fork")
            child_run.finish(0)
            status = 0 if producer.close(20) else 3
        finally:
            os._exit(status)
    release.set()
    holder.join()
    deadline = time.monotonic() + HANG_GUARD
    while time.monotonic() < deadline:
        pid, wait_status = os.waitpid(child_pid, os.WNOHANG)
        if pid:
            break
        time.sleep(0.05)
    else:
        os.kill(child_pid, signal.SIGKILL)
        os.waitpid(child_pid, 0)
        pytest.fail("the forked child hung")
    assert os.waitstatus_to_exitcode(wait_status) == 0
    assert {e["run"] for e in stream_entries(redis_server)} == {"before-fork", "after-fork"}
    assert producer.close(10)


LEAVE_SPOOLS = textwrap.dedent("""
    import os, sys
    from codex_langfuse.producer import Producer
    redis_url, spool_dir, stream, files = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    for number in range(files):
        producer = Producer(redis_url=redis_url, stream=stream, spool_dir=spool_dir)
        run = producer.start_run(run_id=f"left-{stream.replace(':', '-')}-{number}")
        for n in range(10):
            run.emit(b'{"n":%d}' % n)
        run.finish(0)
        assert producer.flush(60), producer.stats()
    os._exit(0)  # dies without closing: its spool files stay behind, unlocked
""")


def leave_spools(redis_server, spool_dir, files: int, stream: str = DEFAULT_STREAM) -> None:
    redis_server.stop()
    subprocess.run([sys.executable, "-c", LEAVE_SPOOLS, redis_server.url, str(spool_dir), stream, str(files)],
                   check=True, timeout=HANG_GUARD, stderr=subprocess.DEVNULL)
    redis_server.start()


def test_close_of_a_short_lived_producer_delivers_dead_producers_spools_within_its_deadline(redis_server, tmp_path):
    leave_spools(redis_server, tmp_path, files=20)
    assert len(orphan_candidates(tmp_path)) == 20
    producer = Producer(redis_url=redis_server.url, spool_dir=tmp_path)  # the default adoption interval
    producer.start_run(run_id="short").finish(0)
    started = time.monotonic()
    assert run_with_guard(producer.close, 5.0)
    assert time.monotonic() - started < 5.0 + 1.0  # its deadline, and a socket timeout at worst
    assert orphan_candidates(tmp_path) == []
    counts = count_by_key(stream_entries(redis_server))
    assert {key for key in counts if key[0].startswith("left-")} == {
        (f"left-codex-langfuse-events-{number}", seq) for number in range(20) for seq in range(12)}
    assert producer.stats()["spool_replayed"] == 20 * 12


def test_spools_written_for_another_stream_or_redis_are_left_alone(redis_server, tmp_path):
    leave_spools(redis_server, tmp_path, files=1, stream="other:events")
    [foreign] = orphan_candidates(tmp_path)
    adopter = Producer(redis_url=redis_server.url, spool_dir=tmp_path, adopt_interval=0.2)
    adopter.start_run(run_id="adopter").finish(0)
    time.sleep(1.0)  # several adoption rounds
    assert run_with_guard(adopter.close, 5.0)
    assert orphan_candidates(tmp_path) == [foreign]
    assert [entry["run"] for entry in stream_entries(redis_server)] == ["adopter", "adopter"]
    other_db = Producer(redis_url=redis_server.url.rsplit("/", 1)[0] + "/3", stream="other:events", spool_dir=tmp_path)
    assert run_with_guard(other_db.close, 5.0)  # same stream name, another database: not its spool either
    assert orphan_candidates(tmp_path) == [foreign]
