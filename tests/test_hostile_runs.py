"""The hostile runs of issue 8 end to end, with real processes (a runner writing the stream as the
runner user, a dispatcher and a worker process, the Langfuse receiver): each has its root and its
valid spans delivered within a minute, the bad part shown as an event, a poison entry or a dead
letter, and the failed-job count stays at zero."""

from __future__ import annotations

import json
import os
import time

import pytest
from rq.registry import FailedJobRegistry

from codex_langfuse.ingest import connections
from codex_langfuse.ingest.content import ContentPolicy
from codex_langfuse.ingest.deadletters import FOLD_FAILED, DeadLetters
from codex_langfuse.ingest.entries import Entry, InvalidEntry
from codex_langfuse.ingest.fold import FoldContext, fold, new_state
from codex_langfuse.ingest.observations import trace_id
from codex_langfuse.ingest.otlp import encode_span
from codex_langfuse.ingest.pricing import PriceTable
from tests.conftest import CODEX_FIXTURES

pytestmark = pytest.mark.integration

MINUTE = 60  # the issue's bound for delivery; also the hang guard
FULL = CODEX_FIXTURES / "real_run_0.169.0_full.jsonl"
LINES = FULL.read_bytes().splitlines()
TS0 = int(time.time() * 1e6)
START = json.dumps({"model": "gpt-5-codex", "codex_version": "0.169.0"})
END_OK = json.dumps({"exit_code": 0, "signal": None, "reason": "exited"})


def stream_fields(run_id: str, entries: list[tuple[str, str | bytes]], **override: str) -> list[dict[str, bytes]]:
    out = []
    for seq, (kind, data) in enumerate(entries):
        fields = {"v": "1", "run": run_id, "seq": str(seq), "ts": str(TS0 + seq * 1000), "kind": kind, "data": data}
        fields.update(override)
        out.append({k.encode(): v if isinstance(v, bytes) else str(v).encode() for k, v in fields.items()})
    return out


def expected_span_ids(run_id: str, fields: list[dict[str, bytes]]) -> dict[str, dict]:
    """What the pure mapping makes of the entries the dispatcher can file, encoded as a worker does."""
    entries = []
    for entry in fields:
        try:
            entries.append(Entry.from_stream(entry))
        except InvalidEntry:
            continue
    result = fold(new_state(run_id), entries, FoldContext(prices=PriceTable.load()))
    return {o.id: encode_span(o, ContentPolicy()) for o in result.observations}


def deep_unknown_item(depth: int) -> str:
    return ('{"type":"item.completed","item":{"id":"deep","type":"mystery","v":' + '{"a":' * depth + "1"
            + "}" * depth + "}}")


def line_entries(lines: list[bytes]) -> list[tuple[str, bytes]]:
    return [("line", line) for line in lines]


TURN_FAILED = json.dumps({"type": "turn.failed", "error": {"message": "[" * 100_000}}).encode()
ISSUE_RUNS: dict[str, tuple[list[tuple[str, str | bytes]], str]] = {
    # run id: (entries, the name of the span that shows the bad part)
    "hostile-user-id-5": ([("start", json.dumps({"user_id": 5, "model": "gpt-5-codex"})), *line_entries(LINES),
                           ("end", END_OK)], "invalid_entry"),
    "hostile-score-400-digits": ([("start", START), *line_entries(LINES),
                                  ("score", '{"name": "big", "value": ' + "7" * 400 + "}"), ("end", END_OK)],
                                 "invalid_entry"),
    "hostile-data-100k-brackets": ([("start", "[" * 100_000), *line_entries(LINES), ("line", "[" * 100_000),
                                    ("end", END_OK)], "invalid_line"),
    "hostile-turn-failed-100k": ([("start", START), *line_entries(LINES[:-1] + [TURN_FAILED]),
                                  ("end", json.dumps({"exit_code": 1, "signal": None, "reason": "exited"}))],
                                 "turn 1"),  # the failed turn, its message as it was
    "hostile-item-600-deep": ([("start", START), *line_entries(LINES[:3]), ("line", deep_unknown_item(600)),
                               *line_entries(LINES[3:]), ("end", END_OK)], "item:mystery"),
}


def failed_jobs(stack) -> int:
    settings = stack.settings()
    return FailedJobRegistry(queue=connections.queue(settings, stack.redis)).count


def test_the_hostile_runs_of_the_issue_are_delivered_with_the_bad_part_shown(stack):
    stack.start("dispatch")
    stack.start("worker")
    written = {}
    for run_id, (entries, _) in ISSUE_RUNS.items():
        written[run_id] = stream_fields(run_id, entries)
        stack.xadd(written[run_id])
    stack.wait(lambda: stack.settled(ISSUE_RUNS), timeout=MINUTE, what="the hostile runs to be delivered")
    for run_id, (_, shown_by) in ISSUE_RUNS.items():
        received = {s.span_id: s for s in stack.receiver.spans(trace_id(run_id))}
        expected = expected_span_ids(run_id, written[run_id])
        assert set(received) == set(expected), run_id  # the root and every valid span, each once
        assert sum(1 for s in received.values() if s.type == "agent") == 1
        shown = [s for s in received.values() if s.name == shown_by]
        assert shown, (run_id, sorted(s.name for s in received.values()))
    assert stack.receiver.duplicates() == {}
    user_id_5 = next(s for s in stack.receiver.spans(trace_id("hostile-user-id-5")) if s.name == "invalid_entry")
    assert user_id_5.level == "WARNING" and "user_id: Input should be a valid string" in user_id_5.status_message
    for failed in (s for s in stack.receiver.spans(trace_id("hostile-turn-failed-100k")) if s.name in ("turn 1", "codex exec")):
        assert failed.level == "ERROR" and failed.status_message == "[" * 500
    assert failed_jobs(stack) == 0
    time.sleep(3)  # six sweeps: nothing is re-queued to fail again
    assert failed_jobs(stack) == 0
    assert stack.redis.xlen(stack.keys.poison) == 0


def test_contract_breaches_are_poison_or_events_at_once(stack):
    stack.start("dispatch")
    stack.start("worker")
    # ts=inf on one entry: poisoned with its reason, and its run shows it and ends without waiting for it
    inf = stream_fields("ts-inf", [("start", START), *line_entries(LINES), ("end", END_OK)])
    inf[4][b"ts"] = b"inf"
    stack.xadd(inf)
    # v=2: not a format this back end reads
    stack.xadd(stream_fields("version-2", [("start", START), ("end", END_OK)], v="2"))
    # a sequence number filed again with other data (not a later run: its time is within the run)
    stack.xadd(stream_fields("dup-seq", [("start", START), *line_entries(LINES), ("end", END_OK)]))
    stack.wait(lambda: stack.settled(["ts-inf", "dup-seq"]), timeout=MINUTE, what="the runs to be delivered")
    again = stream_fields("dup-seq", [("start", START), *line_entries(LINES)])[3]
    again[b"data"] = b'{"type":"item.completed","item":{"id":"x","type":"agent_message","text":"other"}}'
    stack.xadd([again])

    poison = {fields[b"run"]: fields[b"_reason"].decode() for _, fields in stack.redis.xrange(stack.keys.poison)}
    assert poison[b"ts-inf"] == "invalid entry: ts: 'inf' is not a finite number"
    assert poison[b"version-2"] == "invalid entry: v: entry format version '2' is not one this back end reads ('1')"
    assert stack.redis.get(stack.keys.state("version-2")) is None  # never folded as v1
    ts_inf = stack.receiver.spans(trace_id("ts-inf"))
    shown = next(s for s in ts_inf if s.name == "invalid_entry")
    assert shown.level == "WARNING" and shown.status_message == "ts: 'inf' is not a finite number"
    assert sum(1 for s in ts_inf if s.type == "agent") == 1
    stack.wait(lambda: any(s.name == "duplicate_entry" for s in stack.receiver.spans(trace_id("dup-seq"))),
               timeout=MINUTE, what="the duplicate to be shown")
    duplicate = next(s for s in stack.receiver.spans(trace_id("dup-seq")) if s.name == "duplicate_entry")
    assert duplicate.level == "WARNING" and "seq 3 arrived again with different data" in duplicate.status_message
    settings = stack.settings()
    stack.wait(lambda: stack.redis.xpending(settings.stream, stack.keys.group)["pending"] == 0
               and stack.redis.xlen(settings.stream) == 0, timeout=MINUTE, what="the stream to be trimmed")
    assert failed_jobs(stack) == 0


def test_junk_through_tee_is_capped_to_k_events_and_one_summary(stack):
    stack.start("dispatch")
    stack.start("worker")
    junk = os.urandom(1_000_000)
    answer = stack.cli("tee", "--run-id", "urandom", stdin=junk, timeout=MINUTE)
    assert answer.returncode == 0 and answer.stdout == junk
    stack.wait(lambda: stack.settled(["urandom"]), timeout=MINUTE, what="the junk run to be delivered")
    spans = stack.receiver.spans(trace_id("urandom"))
    invalid = [s for s in spans if s.name == "invalid_line"]
    assert len(invalid) == stack.settings().max_problem_events == 100
    [summary] = [s for s in spans if s.name == "problems_not_shown"]
    root = next(s for s in spans if s.type == "agent")
    counters = json.loads(root.metadata["counters"]) if isinstance(root.metadata["counters"], str) \
        else root.metadata["counters"]
    assert counters["invalid_lines"] > 100
    hidden = summary.metadata["count"]
    hidden = json.loads(hidden) if isinstance(hidden, str) else hidden
    assert hidden == counters["invalid_lines"] - 100
    assert len(spans) < 110  # not thousands


def test_a_run_whose_fold_keeps_failing_is_dead_lettered_and_the_rest_delivered(stack):
    thread = json.loads(LINES[0])["thread_id"]
    stack.redis.set(stack.keys.thread_usage(thread), "not json")  # makes folding the turn's usage raise
    stack.start("dispatch")
    stack.start("worker")
    fields = stream_fields("fold-fails", [("start", START), *line_entries(LINES), ("end", END_OK)])
    stack.xadd(fields)
    stack.wait(lambda: stack.settled(["fold-fails"]), timeout=MINUTE, what="the run to be delivered")
    [letter] = DeadLetters(stack.redis, stack.keys).select(run_id="fold-fails")
    assert (letter.reason, letter.kind) == (FOLD_FAILED, "entries")
    assert [json.loads(item["data"])["type"] for item in letter.items] == ["turn.completed"]
    spans = stack.receiver.spans(trace_id("fold-fails"))
    assert sum(1 for s in spans if s.type == "agent") == 1
    assert {"command", "agent_message", "reasoning"} <= {s.name for s in spans}
    status = json.loads(stack.cli("status", "--json").stdout)
    assert status["dead_letters"][FOLD_FAILED] == {"letters": 1, "items": 1}
    assert status["queue"]["failed_jobs"] == 0
