"""A run's books in Redis (`ingest.runs`), in fakeredis: waking runs, one queued job for them,
taking, committing and letting go of several runs at once, and what a lost lease writes (nothing).

Real processes, signals and a real redis-server exercise the same scripts in test_pipeline.py and
test_delivery_faults.py; here each rule is checked on its own.
"""

from __future__ import annotations

import fakeredis
import pytest
import redis

from codex_langfuse.ingest.entries import Entry
from codex_langfuse.ingest.items import Span
from codex_langfuse.ingest.keys import Keys
from codex_langfuse.ingest.runs import RunStore, Step
from codex_langfuse.ingest.state import RunState

KEYS = Keys()
NOW = 1_790_000_000.0


@pytest.fixture
def store() -> RunStore:
    return RunStore(fakeredis.FakeRedis(), KEYS, lease_seconds=60)


def entry(run: str, seq: int, kind: str = "line", data: str = "{}") -> Entry:
    return Entry(run=run, seq=seq, ts=1_790_000_000_000_000 + seq, kind=kind, data=data)


def span(span_id: str) -> Span:
    return Span.encode({"traceId": "a" * 32, "spanId": span_id, "endTimeUnixNano": "1"})


# ---- waking ----

def test_one_job_is_queued_for_the_woken_runs_until_a_worker_takes_it(store):
    assert store.wake(["a", "b"], NOW, NOW) is True  # queue a job
    assert store.wake(["c"], NOW, NOW) is False  # one is queued already: it will find c too
    assert store.pop_woken(10, NOW, job_started=True) == ["a", "b", "c"]
    assert store.wake(["a"], NOW + 1, NOW + 1) is True  # the job was taken: the next wake queues another


def test_a_run_woken_twice_is_due_at_the_earlier_time_and_popped_once(store):
    store.wake(["a"], NOW + 30, NOW)  # a delivery retry
    store.wake(["a"], NOW, NOW)  # then new entries
    assert store.pop_woken(10, NOW) == ["a"]
    assert store.pop_woken(10, NOW + 60) == []


def test_a_run_woken_for_later_needs_no_job_now_and_waits_for_its_time(store):
    assert store.wake(["later"], NOW + 30, NOW) is False
    assert store.pop_woken(10, NOW) == []
    assert store.pop_woken(10, NOW + 30) == ["later"]


def test_the_longest_waiting_runs_are_popped_first_and_no_more_than_asked(store):
    for i, run in enumerate(["r3", "r1", "r2"]):
        store.wake([run], NOW + i, NOW + i)
    assert store.pop_woken(2, NOW + 10) == ["r3", "r1"]
    assert store.pop_woken(2, NOW + 10) == ["r2"]


# ---- filing ----

def test_filing_is_idempotent_and_wakes_the_runs_once_all_are_filed(store):
    entries = [entry("a", 0), entry("a", 1), entry("b", 0)]
    assert store.file(entries, ["a", "a", "b"], NOW) == (True, 0)
    assert store.file(entries, ["a", "a", "b"], NOW) == (False, 0)  # filed again: nothing changes, a job is queued
    assert store.redis.hlen(KEYS.log("a")) == 2 and store.redis.hlen(KEYS.log("b")) == 1
    assert store.pop_woken(10, NOW) == ["a", "b"]
    assert {m.decode() for m in store.redis.zrange(KEYS.backlog, 0, -1)} == {"a", "b"}


def test_an_entry_filed_again_with_other_data_is_kept_aside_shown_once_and_never_folded(store):
    first, other = entry("a", 0), entry("a", 0, data='{"x": 1}')
    store.file([first], ["a"], NOW)
    store.pop_woken(10, NOW)
    assert store.file([other, entry("a", 1)], ["a", "a"], NOW).conflicts == 1
    assert store.file([other], ["a"], NOW).conflicts == 1  # redelivered: kept aside under the same name
    assert Entry.unpack("a", 0, store.redis.hget(KEYS.log("a"), "0")) == first
    assert store.pop_woken(10, NOW) == ["a"]  # woken to show it
    (taken,) = store.take(["a"], 100)
    [(name, sample)] = taken.conflicts.items()
    assert name == f"0:{other.digest()}" and sample["data"] == other.data
    assert sample["first_digest"] == first.digest() != other.digest()
    store.commit([Step("a", taken.token, RunState(run_id="a", next_seq=2), [], [], [0, 1], shown=[name])])
    assert not store.redis.exists(KEYS.conflicts("a"))


def test_the_digest_leaves_out_who_sent_a_start_and_nothing_else():
    start = entry("a", 0, kind="start", data='{"producer": "host-1", "model": "m"}')
    assert start.digest() == entry("a", 0, kind="start", data='{"model": "m", "producer": "host-2"}').digest()
    assert start.digest() != entry("a", 0, kind="start", data='{"model": "n", "producer": "host-1"}').digest()
    assert entry("a", 0).digest() != entry("a", 0, kind="meta").digest()
    assert entry("a", 0).digest() != Entry(run="a", seq=0, ts=1_790_000_000_000_001, kind="line", data="{}").digest()


def test_a_batch_that_cannot_be_filed_wakes_nothing_and_leaves_no_job_flag(store):
    """Else the dispatcher, whose call raised, never queues the job, and the flag stops the next one."""
    store.redis.set(KEYS.log("cursed"), "not a hash")
    with pytest.raises(redis.ResponseError):
        store.file([entry("cursed", 0), entry("blessed", 0)], ["cursed", "blessed"], NOW)
    assert not store.redis.exists(KEYS.drain) and store.pop_woken(10, NOW) == []
    assert store.file([entry("blessed", 0)], ["blessed"], NOW).job_needed is True


# ---- taking, committing, letting go ----

def test_a_run_held_by_another_worker_is_not_taken(store):
    store.file([entry("a", 0), entry("b", 0)], ["a", "b"], NOW)
    first = store.take(["a"], 100)
    assert [t.run for t in first] == ["a"] and [e.seq for e in first[0].entries] == [0]
    assert [t.run for t in store.take(["a", "b"], 100)] == ["b"]


def test_entries_are_read_from_the_next_seq_up_to_the_first_missing(store):
    store.file([entry("a", s) for s in (0, 1, 2, 4)], ["a"] * 4, NOW)
    (taken,) = store.take(["a"], 100)
    assert [e.seq for e in taken.entries] == [0, 1, 2] and taken.filed == 4


def test_a_step_is_written_at_once_with_its_outbox_and_the_folded_entries_removed(store):
    store.file([entry("a", 0), entry("a", 1)], ["a", "a"], NOW)
    (taken,) = store.take(["a"], 100)
    state = RunState(run_id="a", next_seq=2)
    score = {"id": "t-success", "traceId": "a" * 32, "name": "success", "value": 1.0}
    books = store.commit([Step("a", taken.token, state, [span("1" * 16)], [score], [0, 1])])["a"]
    assert sorted(books.slots) == ["1" * 16, "score:t-success"]
    assert store.load_state("a").next_seq == 2 and store.redis.hlen(KEYS.log("a")) == 0
    spans, scores = store.outbox("a", "a" * 32)
    assert [s.data for s in spans] == [span("1" * 16).data] and scores == [score]


def test_a_worker_that_lost_its_lease_writes_nothing(store):
    store.file([entry("a", 0)], ["a"], NOW)
    (taken,) = store.take(["a"], 100)
    store.redis.set(KEYS.lease("a"), "the next worker's token")  # it stalled; another took over
    state = RunState(run_id="a", next_seq=1)
    assert store.commit([Step("a", taken.token, state, [span("1" * 16)], [], [0])]) == {"a": None}
    assert store.load_state("a") is None and store.redis.hlen(KEYS.log("a")) == 1
    assert not store.redis.exists(KEYS.outbox("a"))


def test_letting_a_run_go_says_whether_its_next_entry_waits_and_forgets_a_finished_one(store):
    store.file([entry("a", 0), entry("a", 1)], ["a", "a"], NOW)
    (taken,) = store.take(["a"], 1)
    store.commit([Step("a", taken.token, RunState(run_id="a", next_seq=1), [], [], [0])])
    with store.redis.pipeline() as pipe:
        store.finish(pipe, "a", taken.token, 1, False)
        assert pipe.execute() == [[1, 0]]  # seq 1 waits: the run needs another step
    (taken,) = store.take(["a"], 1)
    store.commit([Step("a", taken.token, RunState(run_id="a", next_seq=2, closed=True), [], [], [1])])
    with store.redis.pipeline() as pipe:
        store.finish(pipe, "a", taken.token, 2, True)
        assert pipe.execute() == [[0, 0]]
    assert not store.redis.exists(KEYS.lease("a"))
    assert store.redis.zscore(KEYS.backlog, "a") is None and store.redis.zscore(KEYS.active, "a") is None
