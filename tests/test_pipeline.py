"""Integration: stream -> dispatchers -> RQ workers -> Langfuse receiver, with real processes.

The expected trace of each run is what the pure mapping makes of the same entries: the
pipeline must deliver exactly that, each span once, however many dispatchers and workers
share the work, and whichever of them is killed.
"""

from __future__ import annotations

import json
import random
import re
import signal
import time
from pathlib import Path

import pytest

from codex_langfuse.ingest.content import ContentPolicy
from codex_langfuse.ingest.delivery import score_payload
from codex_langfuse.ingest.entries import Entry
from codex_langfuse.ingest.fold import FoldContext, fold, new_state
from codex_langfuse.ingest.observations import trace_id
from codex_langfuse.ingest.otlp import encode_span
from codex_langfuse.ingest.pricing import PriceTable
from tests.conftest import CODEX_FIXTURES, every_profile
from tests.support.stack import Stack

pytestmark = pytest.mark.integration

FIXTURES = sorted(CODEX_FIXTURES.glob("real_run_*.jsonl")) + [CODEX_FIXTURES / "repo_docs_exec_md_sample.jsonl"]
TS0 = 1_790_000_000_000_000


def fixture_lines(path: Path) -> list[bytes]:
    """The recorded lines; a run id ending in `.copy<n>` gets its own Codex thread id, since two
    runs printing one thread id are a resume (and would share thread-cumulative usage)."""
    return path.read_bytes().splitlines()


def run_lines(run_id: str, path: Path) -> list[bytes]:
    lines = fixture_lines(path)
    if ".copy" not in run_id:
        return lines
    suffix = run_id.split(".copy")[1].encode()
    return [re.sub(rb'("thread_id":"[^"]+)"', rb'\1-' + suffix + b'"', line) for line in lines]


def meta_for(path: Path) -> dict:
    return {"model": "gpt-5-codex", "prompt": f"prompt of {path.stem}", "name": "codex exec",
            "tags": ["ci", path.stem], "metadata": {"fixture": path.name}}


def expected_trace(run_id: str, path: Path, ts0: int = TS0) -> tuple[dict[str, dict], dict[str, dict]]:
    """What the pure mapping makes of the run, encoded as the worker encodes it."""
    data = [("start", json.dumps(meta_for(path)))] + [("line", l.decode()) for l in run_lines(run_id, path)]
    data.append(("end", json.dumps({"exit_code": 0, "signal": None, "reason": "exited"})))
    entries = [Entry(run=run_id, seq=i, ts=ts0 + i * 1000, kind=k, data=d) for i, (k, d) in enumerate(data)]
    result = fold(new_state(run_id), entries, FoldContext(prices=PriceTable.load()))
    spans = {o.id: encode_span(o, ContentPolicy()) for o in result.observations}
    scores = {s.id: score_payload(s) for s in result.scores}
    return spans, scores


def received(stack: Stack, trace: str) -> tuple[dict[str, dict], dict[str, dict]]:
    spans = {s.span_id: s for s in stack.receiver.spans(trace)}
    scores = {s.id: s for s in stack.receiver.scores() if s.trace_id == trace}
    return spans, scores


def assert_trace_equals_mapping(stack: Stack, run_id: str, path: Path, ts0: int = TS0) -> None:
    want_spans, want_scores = expected_trace(run_id, path, ts0)
    got_spans, got_scores = received(stack, trace_id(run_id))
    assert set(got_spans) == set(want_spans), path.name
    for span_id, span in want_spans.items():
        got = got_spans[span_id]
        assert got.name == span["name"]
        assert got.parent_span_id == span.get("parentSpanId")
        assert got.start_time_unix_nano == int(span["startTimeUnixNano"])
        assert got.end_time_unix_nano == int(span["endTimeUnixNano"])
        want_attrs = {a["key"]: next(iter(a["value"].values())) for a in span["attributes"]}
        assert got.type == want_attrs["langfuse.observation.type"]
        assert got.level == want_attrs["langfuse.observation.level"]
        for key in ("langfuse.observation.usage_details", "langfuse.observation.cost_details"):
            if key in want_attrs:
                got_value = got.usage_details if key.endswith("usage_details") else got.cost_details
                assert got_value == json.loads(want_attrs[key])
    assert set(got_scores) == set(want_scores)
    for score_id, score in want_scores.items():
        assert got_scores[score_id].value == score["value"]


@every_profile
def test_one_run_becomes_its_trace_exactly_once(stack):
    stack.start("dispatch")
    stack.start("worker")
    path = CODEX_FIXTURES / "real_run_0.169.0_full.jsonl"
    stack.feed("run-full", fixture_lines(path), meta=meta_for(path), ts0=TS0)
    stack.wait(lambda: stack.settled(["run-full"]), what="the run to settle")
    assert_trace_equals_mapping(stack, "run-full", path)
    assert stack.receiver.duplicates() == {}
    traces_requests = stack.receiver.requests("traces")
    assert traces_requests and all(r.has_v4_header for r in traces_requests)
    # the trace at the receiver: 1 agent root, 1 generation with cost, 3 tools, 6 events
    types = sorted(s.type for s in stack.receiver.spans(trace_id("run-full")))
    assert types.count("agent") == 1 and types.count("generation") == 1 and types.count("tool") == 3
    generation = next(s for s in stack.receiver.spans(trace_id("run-full")) if s.type == "generation")
    assert generation.usage_details["total"] == 6260
    assert generation.cost_details["total"] == pytest.approx(0.0065, abs=1e-9)


def interleaved_entries(runs: dict[str, Path], seed: int) -> list[tuple[str, int, str, bytes]]:
    """All entries of all runs in one shuffled order: runs interleave, and even a run's own
    entries arrive out of order (as spooled entries do after an outage)."""
    entries = []
    for run_id, path in runs.items():
        data = [("start", json.dumps(meta_for(path)).encode())] + [("line", l) for l in run_lines(run_id, path)]
        data.append(("end", json.dumps({"exit_code": 0, "signal": None, "reason": "exited"}).encode()))
        entries += [(run_id, seq, kind, payload) for seq, (kind, payload) in enumerate(data)]
    random.Random(seed).shuffle(entries)
    return entries


def feed_entries(stack: Stack, entries) -> None:
    settings = stack.settings()
    with stack.redis.pipeline(transaction=False) as pipe:
        for run_id, seq, kind, payload in entries:
            pipe.xadd(settings.stream, {"v": "1", "run": run_id, "seq": str(seq), "ts": str(TS0 + seq * 1000),
                                        "kind": kind, "data": payload})
        pipe.execute()


def collect_canonical(stack: Stack, runs) -> dict[str, list[tuple]]:
    out = {}
    for run_id in runs:
        spans = stack.receiver.spans(trace_id(run_id))
        out[run_id] = sorted((s.span_id, s.parent_span_id, s.name, s.start_time_unix_nano, s.end_time_unix_nano, s.level,
                              json.dumps(s.attributes, sort_keys=True, default=str)) for s in spans)
    return out


def test_two_dispatchers_and_two_workers_give_the_same_traces_as_one_of_each(tmp_path):
    runs = {f"run-{p.stem}.copy{i}": p for i, p in enumerate(FIXTURES * 2)}
    entries = interleaved_entries(runs, seed=7)
    results = []
    for dispatchers, workers in ((1, 1), (2, 2)):
        stack = Stack(tmp_path / f"{dispatchers}x{workers}")
        try:
            feed_entries(stack, entries)
            for i in range(dispatchers):
                stack.start("dispatch", f"dispatch-{i}")
            for i in range(workers):
                stack.start("worker", f"worker-{i}")
            stack.wait(lambda: stack.settled(runs), timeout=120, what="all runs to settle")
            assert stack.receiver.duplicates() == {}
            for run_id, path in runs.items():
                assert_trace_equals_mapping(stack, run_id, path)
            results.append(collect_canonical(stack, runs))
        finally:
            stack.close()
    assert results[0] == results[1]


# The in-doubt check of the real-time v2 listing (latest, v4.16) and of the v1 one (v3); latest would
# repeat v4.16's path here at ~30 s (the sweep's floor before it wakes a run whose worker died).
@pytest.mark.parametrize("stack", ["v4.16", "v3"], indirect=True)
def test_a_worker_killed_mid_send_loses_and_duplicates_nothing(stack):
    """The receiver stores the spans but answers late; the worker is SIGKILLed while waiting.
    The next worker finds the run's send in flight, asks Langfuse what it has, sends the rest."""
    stack.receiver.delay("traces", 30, times=1, store=True)
    stack.start("dispatch")
    stack.start("worker", "worker-doomed")
    path = CODEX_FIXTURES / "real_run_0.169.0_full.jsonl"
    stack.feed("run-killed", fixture_lines(path), meta=meta_for(path), ts0=TS0)
    stack.wait(lambda: len(stack.receiver.spans(trace_id("run-killed"))) > 0, what="the first (slow) send")
    stack.kill("worker-doomed", signal.SIGKILL)
    stack.start("worker", "worker-heir")
    stack.wait(lambda: stack.settled(["run-killed"]), timeout=90, what="the run to settle after the kill")
    assert stack.receiver.duplicates() == {}
    assert_trace_equals_mapping(stack, "run-killed", path)
    observation_reads = stack.receiver.requests("observations")
    assert observation_reads, "the heir must ask Langfuse what it already has before re-sending"


def test_a_dispatcher_that_died_after_reading_is_taken_over(stack):
    """Entries read by a dispatcher that never acknowledged them are claimed by another."""
    settings = stack.settings()
    path = CODEX_FIXTURES / "real_run_0.169.0_command_failed.jsonl"
    stack.feed("run-orphaned", fixture_lines(path), meta=meta_for(path), ts0=TS0)
    client = stack.redis
    client.xgroup_create(settings.stream, stack.keys.group, id="0", mkstream=True)
    stolen = client.xreadgroup(stack.keys.group, "dead-dispatcher", {settings.stream: ">"}, count=1000)
    assert len(stolen[0][1]) == len(fixture_lines(path)) + 2
    stack.start("dispatch")
    stack.start("worker")
    stack.wait(lambda: stack.settled(["run-orphaned"]), timeout=60, what="claimed entries to be delivered")
    assert_trace_equals_mapping(stack, "run-orphaned", path)
    assert client.xpending(settings.stream, stack.keys.group)["pending"] == 0

    def consumers() -> set[str]:
        return {c["name"].decode() for c in client.xinfo_consumers(settings.stream, stack.keys.group)}

    # the dead dispatcher's consumer goes once its entries were claimed; the live one stays
    stack.wait(lambda: "dead-dispatcher" not in consumers(), what="the dead consumer to be removed")
    assert len(consumers()) == 1


def test_dispatchers_and_workers_killed_at_random_under_load(stack):
    """Kill -9 a dispatcher and a worker while many runs flow; every span arrives exactly once."""
    runs = {f"load.copy{i}": FIXTURES[i % len(FIXTURES)] for i in range(40)}
    entries = interleaved_entries(runs, seed=11)
    for name in ("dispatch-a", "dispatch-b"):
        stack.start("dispatch", name)
    for name in ("worker-a", "worker-b"):
        stack.start("worker", name)
    half = len(entries) // 2
    feed_entries(stack, entries[:half])
    time.sleep(0.3)
    stack.kill("dispatch-a", signal.SIGKILL)
    stack.kill("worker-a", signal.SIGKILL)
    feed_entries(stack, entries[half:])
    stack.wait(lambda: stack.settled(runs), timeout=180, what="all runs to settle after the kills")
    assert stack.receiver.duplicates() == {}
    for run_id, path in runs.items():
        assert_trace_equals_mapping(stack, run_id, path)


def test_invalid_stream_entries_go_to_the_poison_stream_and_the_rest_flows(stack):
    settings = stack.settings()
    stack.redis.xadd(settings.stream, {"v": "1", "run": "bad id with spaces", "seq": "0", "ts": "1", "kind": "line",
                                       "data": "{}"})
    stack.redis.xadd(settings.stream, {"v": "1", "run": "run-x", "seq": "not-a-number", "ts": "1", "kind": "line"})
    path = CODEX_FIXTURES / "real_run_0.169.0_mcp_tool_call.jsonl"
    stack.feed("run-good", fixture_lines(path), meta=meta_for(path), ts0=TS0)
    stack.start("dispatch")
    stack.start("worker")
    stack.wait(lambda: stack.settled(["run-good"]), what="the good run")
    assert_trace_equals_mapping(stack, "run-good", path)
    poison = stack.redis.xrange(stack.keys.poison)
    assert len(poison) == 2
    assert all(b"invalid entry" in fields[b"_reason"] for _, fields in poison)


def test_an_entry_that_keeps_failing_in_the_dispatcher_is_moved_aside(tmp_path):
    """Filing fails for one run's entries (its log key holds the wrong type): they are retried
    MAX_DELIVERIES times, then moved to the poison stream; the other runs never wait for them."""
    stack = Stack(tmp_path, max_deliveries=2, claim_min_idle_ms=300)
    try:
        stack.redis.set(stack.keys.log("cursed"), "not a hash")
        path = CODEX_FIXTURES / "real_run_0.169.0_mcp_tool_call.jsonl"
        stack.feed("cursed", fixture_lines(path), meta=meta_for(path), ts0=TS0)
        stack.feed("blessed", fixture_lines(path), meta=meta_for(path), ts0=TS0)
        stack.start("dispatch")
        stack.start("worker")
        stack.wait(lambda: stack.settled(["blessed"]), what="the healthy run")
        cursed = len(fixture_lines(path)) + 2
        stack.wait(lambda: stack.redis.xlen(stack.keys.poison) == cursed, what="the failing entries to be moved aside")
        poisoned = stack.redis.xrange(stack.keys.poison)
        assert {fields[b"run"] for _, fields in poisoned} == {b"cursed"}
        assert all(b"failed 3 times in the dispatcher" in fields[b"_reason"] for _, fields in poisoned)
        settings = stack.settings()
        assert stack.redis.xpending(settings.stream, stack.keys.group)["pending"] == 0
        assert_trace_equals_mapping(stack, "blessed", path)
    finally:
        stack.close()
