"""Langfuse misbehaving: outages, rate limits, resets, timeouts, refusals. Afterwards every
expected observation is at the receiver exactly once, and the dead letters hold exactly what
was refused for good, with the right reasons. Replay delivers them, once, even when killed.

Time is compressed through settings (retry base 0.2 s, cap 1 s); no test asserts a duration
except that a retry never came sooner than Langfuse's Retry-After asked. Tests of what differs
between Langfuse servers (checking an in-doubt send, posting and replaying scores) run against
every server profile; the others against the default one (tests/conftest.py).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from codex_langfuse.ingest.observations import observation_id, trace_id
from tests.conftest import ALL_PROFILES, CODEX_FIXTURES, DEFAULT_PROFILE, every_profile
from tests.support.stack import REPO, Stack
from tests.test_pipeline import TS0, assert_trace_equals_mapping, expected_trace, fixture_lines, meta_for, run_lines

pytestmark = pytest.mark.integration

FULL = CODEX_FIXTURES / "real_run_0.169.0_full.jsonl"
FAILED_COMMAND = CODEX_FIXTURES / "real_run_0.169.0_command_failed.jsonl"
MCP = CODEX_FIXTURES / "real_run_0.169.0_mcp_tool_call.jsonl"


def start_backend(stack: Stack, workers: int = 1) -> None:
    stack.start("dispatch")
    for i in range(workers):
        stack.start("worker", f"worker-{i}")


def feed(stack: Stack, run_id: str, path=FULL) -> None:
    stack.feed(run_id, run_lines(run_id, path), meta=meta_for(path), ts0=TS0)


def status(stack: Stack) -> dict:
    answer = stack.cli("status", "--json")
    assert answer.returncode == 0, answer.stderr.decode()
    return json.loads(answer.stdout)


def replay(stack: Stack, *args: str) -> dict:
    answer = stack.cli("replay", "--json", *args, timeout=120)
    assert answer.stdout, answer.stderr.decode()
    return json.loads(answer.stdout)


def dead_letters(stack: Stack) -> list[dict]:
    return [json.loads(v) for v in stack.redis.hvals(stack.keys.dead_letters)]


def test_an_outage_of_503s_delays_but_loses_and_duplicates_nothing(stack):
    stack.receiver.fail("traces", 503, for_seconds=4)
    start_backend(stack)
    runs = {f"outage.copy{i}": path for i, path in enumerate([FULL, FAILED_COMMAND, MCP])}
    for run_id, path in runs.items():
        feed(stack, run_id, path)
    stack.wait(lambda: stack.settled(runs), timeout=90, what="delivery after the outage")
    assert any(r.status == 503 for r in stack.receiver.requests("traces"))
    assert stack.receiver.duplicates() == {}
    for run_id, path in runs.items():
        assert_trace_equals_mapping(stack, run_id, path)
    assert dead_letters(stack) == []


def test_429_retry_after_is_honoured(stack):
    stack.receiver.fail("traces", 429, times=1, retry_after=2)
    start_backend(stack)
    feed(stack, "limited")
    stack.wait(lambda: stack.settled(["limited"]), what="delivery after the 429")
    attempts = stack.receiver.requests("traces")
    assert attempts[0].status == 429 and attempts[1].status == 200
    assert attempts[1].received_at - attempts[0].received_at >= 2.0  # never sooner than asked
    assert stack.receiver.duplicates() == {}
    assert_trace_equals_mapping(stack, "limited", FULL)


# after processing, the retry checks what Langfuse has: the check is what differs between servers
@pytest.mark.parametrize("stack, stored", [(DEFAULT_PROFILE, False), *((profile, True) for profile in ALL_PROFILES)],
                         ids=["reset-before-processing", *(f"reset-after-processing-{p}" for p in ALL_PROFILES)],
                         indirect=["stack"])
def test_connection_resets_are_retried_without_duplicates(stack, stored):
    stack.receiver.reset_connection("traces", times=2, store=stored)
    start_backend(stack)
    feed(stack, "reset")
    stack.wait(lambda: stack.settled(["reset"]), what="delivery after resets")
    resets = sum(1 for r in stack.receiver.requests("traces") if r.status is None)
    if stored:
        # Langfuse had the spans: the retry asks first, finds them all, and sends nothing again.
        assert resets == 1 and stack.receiver.requests("observations")
    else:
        assert resets == 2
    assert stack.receiver.duplicates() == {}
    assert_trace_equals_mapping(stack, "reset", FULL)


@every_profile
def test_a_timeout_longer_than_the_client_after_langfuse_stored_the_spans_sends_nothing_twice(stack):
    http_timeout = stack.settings().http_timeout
    stack.receiver.delay("traces", http_timeout * 2, times=1, store=True)
    start_backend(stack)
    feed(stack, "slow")
    stack.wait(lambda: stack.settled(["slow"]), what="delivery after the timeout")
    assert stack.receiver.duplicates() == {}
    assert_trace_equals_mapping(stack, "slow", FULL)
    assert stack.receiver.requests("observations"), "after a timeout the worker asks what Langfuse has"


def test_400_for_chosen_spans_dead_letters_exactly_those(stack):
    run_id = "partly-rejected"
    command_span = observation_id(run_id, "item/item_2")
    plan_span = observation_id(run_id, "plan/item_1/4")
    stack.receiver.reject_spans(command_span, plan_span)
    start_backend(stack)
    feed(stack, run_id)
    stack.wait(lambda: stack.settled([run_id]), what="the run to settle")
    want, _ = expected_trace(run_id, FULL)
    got = {s.span_id for s in stack.receiver.spans(trace_id(run_id))}
    assert got == set(want) - {command_span, plan_span}
    assert stack.receiver.duplicates() == {}
    letters = dead_letters(stack)
    assert sorted(item["spanId"] for letter in letters for item in letter["items"]) == sorted([command_span, plan_span])
    assert {letter["reason"] for letter in letters} == {"rejected"}
    assert all("reject_spans" in letter["message"] for letter in letters)
    counts = status(stack)["dead_letters"]
    assert counts == {"rejected": {"letters": len(letters), "items": 2}}

    stack.receiver.clear_faults()
    first = replay(stack)
    assert (first["replayed"], first["skipped"], first["failed"]) == (2, 0, 0)
    assert {s.span_id for s in stack.receiver.spans(trace_id(run_id))} == set(want)
    second = replay(stack)
    assert (second["letters"], second["replayed"]) == (0, 0)
    assert stack.receiver.duplicates() == {}


@every_profile
def test_401_dead_letters_everything_at_once_and_replay_delivers_it_all_once(stack):
    stack.receiver.fail("traces", 401, for_seconds=3600)
    stack.receiver.fail("scores", 401, for_seconds=3600)
    start_backend(stack)
    runs = {f"unauthorized.copy{i}": path for i, path in enumerate([FULL, FAILED_COMMAND])}
    for run_id, path in runs.items():
        feed(stack, run_id, path)
    stack.wait(lambda: stack.settled(runs), what="everything dead-lettered")
    letters = dead_letters(stack)
    assert {letter["reason"] for letter in letters} == {"unauthorized"}
    expected_spans = {run: set(expected_trace(run, path)[0]) for run, path in runs.items()}
    lettered = {item["spanId"] for letter in letters if letter["kind"] == "spans" for item in letter["items"]}
    assert lettered == set().union(*expected_spans.values())
    # one request per job at most (runs woken together share it): a 401 says nothing about the
    # data, so nothing else is tried
    assert 1 <= len([r for r in stack.receiver.requests("traces") if r.status == 401]) <= len(runs)
    assert status(stack)["dead_letters"]["unauthorized"]["items"] == len(lettered) + 4 * len(runs)

    stack.receiver.clear_faults()
    dry = replay(stack, "--dry-run")
    assert dry["dry_run"] and dry["replayed"] == len(lettered) + 4 * len(runs)
    assert stack.receiver.spans() == []
    first = replay(stack)
    assert first["replayed"] == len(lettered) + 4 * len(runs) and first["failed"] == 0
    for run_id, path in runs.items():
        assert_trace_equals_mapping(stack, run_id, path)
    assert replay(stack)["replayed"] == 0
    assert stack.receiver.duplicates() == {}
    assert dead_letters(stack) == []


def test_replay_filters_by_run_and_reason(stack):
    stack.receiver.fail("traces", 403, for_seconds=3600)
    stack.receiver.fail("scores", 403, for_seconds=3600)
    start_backend(stack)
    feed(stack, "keep-me", MCP)
    feed(stack, "replay-me", FAILED_COMMAND)
    stack.wait(lambda: stack.settled(["keep-me", "replay-me"]), what="dead letters")
    stack.receiver.clear_faults()
    assert replay(stack, "--reason", "rejected")["letters"] == 0
    done = replay(stack, "--run-id", "replay-me")
    assert done["failed"] == 0 and done["replayed"] > 0
    assert stack.receiver.spans(trace_id("keep-me")) == []
    assert_trace_equals_mapping(stack, "replay-me", FAILED_COMMAND)
    assert {letter["run_id"] for letter in dead_letters(stack)} == {"keep-me"}
    assert replay(stack, "--older-than", "1h")["letters"] == 0
    assert replay(stack, "--limit", "1", "--dry-run")["letters"] == 1


def test_a_replay_killed_halfway_and_run_again_sends_every_observation_once(stack):
    stack.receiver.fail("traces", 401, for_seconds=3600)
    stack.receiver.fail("scores", 401, for_seconds=3600)
    start_backend(stack)
    runs = {f"killed-replay.copy{i}": [FULL, FAILED_COMMAND, MCP][i % 3] for i in range(12)}
    for run_id, path in runs.items():
        feed(stack, run_id, path)
    stack.wait(lambda: stack.settled(runs), timeout=90, what="everything dead-lettered")
    stack.receiver.clear_faults()
    # Slow answers (the spans are stored at once): the replay is killed while waiting for one.
    stack.receiver.delay("traces", 0.5, times=1000, store=True)
    process = subprocess.Popen([sys.executable, "-m", "codex_langfuse.producer.cli", "replay", "--json"], env=stack.env,
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        stack.wait(lambda: len({s.trace_id for s in stack.receiver.spans()}) >= 4, what="the replay to be halfway")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    assert len({s.trace_id for s in stack.receiver.spans()}) < len(runs)
    stack.receiver.clear_faults()
    again = replay(stack)
    assert again["failed"] == 0 and again["not_attempted"] == 0
    assert stack.receiver.duplicates() == {}
    for run_id, path in runs.items():
        assert_trace_equals_mapping(stack, run_id, path)
    assert dead_letters(stack) == []


def test_retries_exhausted_go_to_the_dead_letters(tmp_path):
    stack = Stack(tmp_path, retry_for=2)
    try:
        stack.receiver.fail("traces", 503, for_seconds=3600)
        start_backend(stack)
        feed(stack, "exhausted", MCP)
        stack.wait(lambda: stack.settled(["exhausted"]), what="retries to run out")
        letters = dead_letters(stack)
        assert {letter["reason"] for letter in letters} == {"retries_exhausted"}
        assert all(letter["attempts"] >= 2 and letter["last_failure"] > letter["first_failure"] for letter in letters)
        spans = {item["spanId"] for letter in letters if letter["kind"] == "spans" for item in letter["items"]}
        assert spans == set(expected_trace("exhausted", MCP)[0])
        stack.receiver.clear_faults()
        assert replay(stack)["failed"] == 0
        assert_trace_equals_mapping(stack, "exhausted", MCP)
    finally:
        stack.close()


def test_a_request_too_large_is_split_and_a_span_too_large_is_shrunk(tmp_path):
    from tests.support.langfuse_receiver import LangfuseReceiver

    receiver = LangfuseReceiver(max_body_bytes=12_000).start()
    stack = Stack(tmp_path, receiver=receiver, max_field_chars=50_000, max_output_chars=50_000)
    try:
        lines = fixture_lines(FULL)
        command = json.loads(lines[5])
        command["item"]["aggregated_output"] = "x" * 30_000
        lines[5] = json.dumps(command).encode()
        start_backend(stack)
        stack.feed("big", lines, meta=meta_for(FULL), ts0=TS0)
        stack.wait(lambda: stack.settled(["big"]), what="the big run")
        assert any(r.status == 413 for r in receiver.requests("traces"))
        assert dead_letters(stack) == []
        assert receiver.duplicates() == {}
        spans = receiver.spans(trace_id("big"))
        assert len(spans) == len(expected_trace("big", FULL)[0])
        tool = next(s for s in spans if s.name == "command")
        assert "too large for Langfuse" in tool.output
    finally:
        stack.close()


def test_healthy_runs_flow_while_another_run_is_retried(stack):
    """No head-of-line blocking: one run's spans keep failing, the others are delivered."""
    stuck = "stuck-run"
    stack.receiver.fail_traces(trace_id(stuck), status=503)
    start_backend(stack)
    feed(stack, stuck, FULL)
    time.sleep(0.5)
    healthy = {f"healthy.copy{i}": [FAILED_COMMAND, MCP][i % 2] for i in range(6)}
    for run_id, path in healthy.items():
        feed(stack, run_id, path)
    stack.wait(lambda: stack.settled(healthy), what="healthy runs while one is stuck")
    assert not stack.settled([stuck])
    report = status(stack)
    assert report["runs"]["retrying"] == 1
    # its next attempt is a scheduled job, or (between two attempts a second apart) queued or running
    queue = report["queue"]
    assert queue["scheduled"] + queue["depth"] + queue["in_progress"] >= 1
    stack.receiver.clear_faults()
    stack.wait(lambda: stack.settled([stuck]), what="the stuck run after the fault cleared")
    assert stack.receiver.duplicates() == {}
    assert_trace_equals_mapping(stack, stuck, FULL)


def test_status_json_counts_what_is_in_each_state(stack):
    """Put known numbers of things in each state, then read them back from `status --json`."""
    settings = stack.settings()
    # 1. Entries nobody has read: no dispatcher running yet.
    feed(stack, "unread", MCP)
    unread = len(fixture_lines(MCP)) + 2
    # 2. Entries read by a dispatcher that died: pending in the group.
    stack.redis.xgroup_create(settings.stream, stack.keys.group, id="0", mkstream=True)
    stolen = stack.redis.xreadgroup(stack.keys.group, "dead-dispatcher", {settings.stream: ">"}, count=3)
    report = status(stack)
    assert report["stream"]["length"] == unread
    assert report["stream"]["pending"] == 3 == len(stolen[0][1])
    assert report["stream"]["lag"] == unread - 3
    assert report["workers"]["alive"] == 0
    assert report["queue"]["depth"] == 0
    assert report["oldest_undelivered_age_seconds"] is not None
    # 3. A dispatcher files them; with no worker the jobs wait in the queue.
    assert stack.cli("dispatch", "--once").returncode == 0
    report = status(stack)
    assert report["stream"]["lag"] == 0
    assert report["queue"]["depth"] == 1  # one job for the woken runs, however many events
    assert report["runs"]["waiting"] == 1
    # 4. Dead letters of two reasons, and a worker alive.
    stack.receiver.reject_spans(observation_id("unread", "root"))
    stack.receiver.fail("scores", 403, for_seconds=3600)
    stack.start("worker", "worker-status")
    stack.wait(lambda: status(stack)["workers"]["alive"] == 1, what="the worker to register")
    # The dead dispatcher's 3 entries are claimed once idle long enough; until then the run waits.
    stack.wait(lambda: stack.cli("dispatch", "--once").returncode == 0 and status(stack)["stream"]["pending"] == 0,
               what="the dead dispatcher's entries to be claimed")
    stack.wait(lambda: stack.settled(["unread"]), what="the run to settle")
    report = status(stack)
    assert report["dead_letters"] == {"rejected": {"letters": 1, "items": 1},
                                      "forbidden": {"letters": 1, "items": 4}}
    assert report["queue"]["depth"] == 0 and report["runs"]["with_backlog"] == 0
    assert report["oldest_undelivered_age_seconds"] is None


def test_only_one_replay_runs_at_a_time(stack):
    """Two replays at once could send a letter twice: the second waits for the first's lock, and
    a lock left by a replay that died on this host is taken over at once."""
    from codex_langfuse.ingest.context import WorkerContext
    from codex_langfuse.ingest.lease import Leases
    from codex_langfuse.ingest.replay import LOCK_SECONDS, ReplayBusy, replay as run_replay

    ctx = WorkerContext.build(stack.settings())
    leases = Leases(stack.redis, LOCK_SECONDS)
    other = leases.acquire(stack.keys.replay_lock, owner="another-host:1:")
    with pytest.raises(ReplayBusy):
        run_replay(ctx, wait=0.5)
    assert run_replay(ctx, dry_run=True, wait=0.5).letters == 0  # a dry run sends nothing: no lock
    leases.release(stack.keys.replay_lock, other)

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leases.acquire(stack.keys.replay_lock, owner=f"{__import__('socket').gethostname()}:{dead.pid}:")
    assert run_replay(ctx, wait=0.5).letters == 0  # the dead holder's lock was taken over
    assert stack.redis.get(stack.keys.replay_lock) is None  # and released afterwards
