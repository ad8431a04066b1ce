"""No job loops forever (ingest/job.py), against a real redis-server: a fold step that keeps
raising is tried a few times, then its entries are folded one by one and the one that still
raises is set aside as a `fold_failed` dead letter while the rest of the run, its root included,
is delivered; a job that keeps failing otherwise sets its run aside with what it held."""

from __future__ import annotations

import json
import time

import pytest
from rq.registry import ScheduledJobRegistry

from codex_langfuse.ingest.context import WorkerContext, use_context
from codex_langfuse.ingest.deadletters import FOLD_FAILED, DeadLetters
from codex_langfuse.ingest.job import FOLD_ATTEMPTS, JOB_ATTEMPTS, process_run, process_woken
from codex_langfuse.ingest.observations import trace_id
from codex_langfuse.ingest.replay import replay
from codex_langfuse.ingest.settings import Settings
from codex_langfuse.ingest.show import load_trace
from codex_langfuse.ingest.transport import SinkTransport
from tests.support.runs import fixture_entries, fixture_lines

pytestmark = pytest.mark.integration

FULL = "real_run_0.169.0_full.jsonl"


@pytest.fixture
def worker(redis_server, tmp_path):
    settings = Settings(redis_url=redis_server.url, sink_dir=tmp_path / "sink")
    ctx = WorkerContext.build(settings, transport=SinkTransport(tmp_path / "sink"))
    use_context(ctx)
    yield ctx
    use_context(None)


def file_run(ctx: WorkerContext, run_id: str) -> list:
    entries = fixture_entries(FULL, run_id=run_id, meta={"codex_version": "0.169.0", "model": "gpt-5-codex"})
    ctx.store.file(entries, [entry.run for entry in entries], time.time())
    return entries


def thread_of(name: str) -> str:
    return json.loads(fixture_lines(name)[0])["thread_id"]


def test_a_fold_that_keeps_raising_sets_the_entry_aside_and_delivers_the_rest(worker, tmp_path):
    # A thread's recorded usage that is not JSON (written by someone else): folding the turn's
    # usage raises, every time.
    worker.redis.set(worker.keys.thread_usage(thread_of(FULL)), "not json")
    entries = file_run(worker, "broken")
    for attempt in range(1, FOLD_ATTEMPTS):
        summary = process_run("broken")
        assert summary["fold_retries"] == 1
        assert ScheduledJobRegistry(queue=worker.queue).count == attempt  # tried again later, not failed
        assert load_trace(tmp_path / "sink", "broken") is None
    process_run("broken")
    letters = list(DeadLetters(worker.redis, worker.keys).select(run_id="broken"))
    assert [(letter.reason, letter.kind) for letter in letters] == [(FOLD_FAILED, "entries")]
    [item] = letters[0].items
    turn_completed = next(e for e in entries if '"turn.completed"' in e.data)
    assert (item["seq"], item["data"]) == (turn_completed.seq, turn_completed.data)
    assert item["error"].startswith("ValidationError")
    spans, scores = load_trace(tmp_path / "sink", "broken")
    names = sorted(s["name"] for s in spans)
    assert "codex exec" in names and "command" in names and "agent_message" in names  # root and the good spans
    root = next(s for s in spans if s["name"] == "codex exec")
    counters = json.loads(next(a["value"]["stringValue"] for a in root["attributes"]
                               if a["key"] == "langfuse.observation.metadata.counters"))
    assert counters["unfoldable_entries"] == 1
    assert {s["name"] for s in scores} == {"success", "failed_commands", "files_changed", "errors"}
    store = worker.store
    assert not worker.redis.hlen(worker.keys.log("broken")) and not worker.redis.hlen(worker.keys.outbox("broken"))
    assert worker.redis.zscore(worker.keys.backlog, "broken") is None
    assert store.load_state("broken").closed
    report = replay(worker)  # a letter of entries is kept, not sent
    assert (report.unsendable, report.replayed, report.failed) == (1, 0, 0)
    assert len(list(DeadLetters(worker.redis, worker.keys).select(run_id="broken"))) == 1


def test_a_run_whose_step_keeps_failing_is_set_aside_with_what_it_held(worker):
    file_run(worker, "cursed")
    worker.redis.set(worker.keys.state("cursed"), "{not a state")
    for attempt in range(1, JOB_ATTEMPTS):
        summary = process_run("cursed")
        assert (summary["step_retries"], summary["set_aside"]) == (1, 0)
        assert ScheduledJobRegistry(queue=worker.queue).count == attempt  # tried again later
    summary = process_run("cursed")
    assert summary["set_aside"] == 1
    [letter] = DeadLetters(worker.redis, worker.keys).select(run_id="cursed")
    assert (letter.reason, letter.kind) == (FOLD_FAILED, "entries")
    assert [item["seq"] for item in letter.items] == list(range(len(fixture_lines(FULL)) + 2))
    assert f"failed {JOB_ATTEMPTS} times in a row" in letter.message
    keys = worker.keys
    assert not worker.redis.exists(keys.log("cursed"), keys.faults("cursed"))
    assert worker.redis.zscore(keys.backlog, "cursed") is None and worker.redis.zscore(keys.active, "cursed") is None
    assert letter.trace_id == trace_id("cursed")  # so replay and status can name it
    assert worker.redis.zscore(keys.woken, "cursed") is None and not worker.redis.exists(keys.lease("cursed"))


def test_a_run_that_cannot_be_read_does_not_hold_back_the_others_of_its_job(worker, tmp_path):
    file_run(worker, "cursed")
    file_run(worker, "blessed")
    worker.redis.set(worker.keys.state("cursed"), "{not a state")
    summary = process_woken()
    assert summary["step_retries"] == 1
    spans, scores = load_trace(tmp_path / "sink", "blessed")
    assert "codex exec" in {s["name"] for s in spans} and scores
    assert load_trace(tmp_path / "sink", "cursed") is None


def test_the_faults_count_only_failures_in_a_row(worker):
    store = worker.store
    assert [store.count_fault("r", "job") for _ in range(3)] == [1, 2, 3]
    store.clear_faults("r", "job")
    assert store.count_fault("r", "job") == 1
    assert 0 < worker.redis.ttl(worker.keys.faults("r")) <= 3600  # and they are forgotten
