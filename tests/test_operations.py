"""A back end an operator can run: it refuses to start wrong, stays up through outages, tells the
truth in `status`, keeps two runs of one run id apart, and never re-opens a closed run.

Real processes, a real redis-server (killed and restarted), the strict receiver. Timings are
compressed through settings (tests/support/stack.py); waits are hang guards, not measurements.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from codex_langfuse.ingest.content import ContentPolicy
from codex_langfuse.ingest.delivery import score_payload
from codex_langfuse.ingest.entries import Entry
from codex_langfuse.ingest.fold import FoldContext, fold, new_state
from codex_langfuse.ingest.observations import trace_id
from codex_langfuse.ingest.otlp import encode_span
from codex_langfuse.ingest.pricing import PriceTable
from tests.conftest import CODEX_FIXTURES
from tests.support.redis_server import RedisServer, free_port
from tests.support.stack import REPO, Stack
from tests.test_pipeline import TS0, assert_trace_equals_mapping, fixture_lines, meta_for

pytestmark = pytest.mark.integration

FULL = CODEX_FIXTURES / "real_run_0.169.0_full.jsonl"
FAILED_COMMAND = CODEX_FIXTURES / "real_run_0.169.0_command_failed.jsonl"
INST_A, INST_B = "a1b2c3d4e5f60718", "0f1e2d3c4b5a6978"


def cli(stack: Stack, *args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "codex_langfuse.producer.cli", *args], env=env or stack.env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def without(env: dict, *names: str) -> dict:
    return {k: v for k, v in env.items() if k not in names}


def status(stack: Stack) -> dict:
    answer = cli(stack, "status", "--json")
    assert answer.returncode == 0, answer.stderr
    return json.loads(answer.stdout)


def expected_spans(key: str, entries: list[dict]) -> tuple[dict, dict]:
    """What the mapping makes of a run instance's stream entries, filed under run key `key`."""
    folded = [Entry.from_stream({k.encode(): (v if isinstance(v, bytes) else str(v).encode()) for k, v in e.items()})
              for e in entries]
    result = fold(new_state(key), folded, FoldContext(prices=PriceTable.load()))
    return ({o.id: encode_span(o, ContentPolicy()) for o in result.observations},
            {s.id: score_payload(s) for s in result.scores})


def no_traceback(answer: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in answer.stderr, answer.stderr


# ---- the destination is chosen, never defaulted ----

def test_a_worker_without_keys_or_a_chosen_sink_refuses_to_start_and_names_what_is_missing(stack, tmp_path):
    bare = without(stack.env, "LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY", "CODEX_LANGFUSE_SINK_DIR")
    for command in (["worker"], ["replay"]):
        answer = cli(stack, *command, env=bare)
        assert answer.returncode == 2, answer.stderr
        no_traceback(answer)
        assert answer.stderr.strip() == (
            f"codex-langfuse {command[0]}: no destination: LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY not set; set "
            f"them to send to Langfuse, or choose the local sink with CODEX_LANGFUSE_SINK_DIR=DIR (or --sink DIR)")
    only_public = {**bare, "LANGFUSE_PUBLIC_KEY": "pk-lf-1"}
    answer = cli(stack, "worker", env=only_public)
    assert answer.returncode == 2 and "LANGFUSE_SECRET_KEY not set" in answer.stderr

    # chosen explicitly, the sink works; the ledger of what it took is not Langfuse's
    stack.start("dispatch")
    stack.feed("to-the-sink", fixture_lines(FULL), meta=meta_for(FULL), ts0=TS0)
    sink = tmp_path / "chosen-sink"
    worker = subprocess.Popen([sys.executable, "-m", "codex_langfuse.producer.cli", "worker", "--sink", str(sink)],
                              env=stack.env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              start_new_session=True)
    try:
        stack.wait(lambda: stack.settled(["to-the-sink"]), what="the run in the sink")
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    assert len(list((sink / trace_id("to-the-sink")).glob("*.json"))) == 10
    assert stack.receiver.spans() == []
    ledgers = {k.decode() for k in stack.redis.scan_iter(match="codex-langfuse:ledger:*")}
    assert len({key.split(":")[2] for key in ledgers}) == 1  # one destination's ledger


def test_wrong_keys_stop_a_worker_at_start_with_langfuses_message(stack):
    answer = cli(stack, "worker", env={**stack.env, "LANGFUSE_SECRET_KEY": "sk-lf-wrong"})
    assert answer.returncode == 2
    no_traceback(answer)
    assert re.search(r"codex-langfuse worker: Langfuse at http://127\.0\.0\.1:\d+ refused: HTTP 401: Invalid "
                     r"credentials\. Confirm that you've configured the correct host", answer.stderr)
    answer = cli(stack, "worker", env={**stack.env, "LANGFUSE_BASE_URL": stack.receiver.base_url + "/not-langfuse"})
    assert answer.returncode == 2 and "no Langfuse API at" in answer.stderr and "check LANGFUSE_BASE_URL" in answer.stderr
    answer = cli(stack, "worker", env={**stack.env, "LANGFUSE_BASE_URL": "localhost:3000"})
    assert answer.returncode == 2
    assert answer.stderr.strip() == ("codex-langfuse worker: LANGFUSE_BASE_URL='localhost:3000': must be an http:// "
                                     "or https:// URL, e.g. https://cloud.langfuse.com")


# ---- run ids ----

def test_two_runs_with_one_run_id_are_both_delivered_complete_and_none_stays_open(stack):
    """A CI job calling Codex twice with `--run-id "$CI_JOB_ID"`, the two runs interleaved."""
    stack.start("dispatch")
    stack.start("worker")
    first = stack.entries("ci-job-7", fixture_lines(FULL), meta=meta_for(FULL), ts0=TS0, inst=INST_A)
    second = stack.entries("ci-job-7", fixture_lines(FAILED_COMMAND), meta=meta_for(FAILED_COMMAND), ts0=TS0 + 500,
                           inst=INST_B)
    interleaved = [e for pair in zip(first, second) for e in pair] + first[len(second):] + second[len(first):]
    stack.xadd(interleaved)
    keys = ["ci-job-7", f"ci-job-7/{INST_B}"]
    stack.wait(lambda: stack.settled(keys), what="both runs")

    want_first, scores_first = expected_spans(keys[0], first)
    want_second, scores_second = expected_spans(keys[1], second)
    got = {s.span_id: s for s in stack.receiver.spans(trace_id("ci-job-7"))}
    assert set(got) == set(want_first) | set(want_second)
    assert not set(want_first) & set(want_second)
    assert stack.receiver.duplicates() == {}
    assert {s.id for s in stack.receiver.scores()} == set(scores_first) | set(scores_second)
    roots = [s for s in got.values() if s.type == "agent"]
    assert len(roots) == 2 and all(r.parent_span_id is None for r in roots)

    # the user is told, and no run stays open for the sweep to wake again and again
    assert "run id ci-job-7 was reused by another run" in stack.log_text("dispatch-0")
    assert "reused run id ci-job-7, which another run used first" in stack.log_text("worker-1")
    report = status(stack)
    assert report["runs"]["reused_run_ids"] == 1 and report["runs"]["open"] == 0
    text = cli(stack, "status").stdout
    assert "reused run ids 1" in text
    scored = cli(stack, "score", "ci-job-7", "ci_passed", "true")
    assert scored.returncode == 0
    assert (f"codex-langfuse score: run id ci-job-7 was used by more than one run; the score goes to their one "
            f"trace {trace_id('ci-job-7')}") in scored.stderr


def test_entries_for_a_closed_run_never_reopen_it(stack):
    """A spool replayed after an outage sends a closed run's entries again, and a producer that
    sends no `inst` reuses the run id: nothing is duplicated, nothing lost, the run stays closed."""
    stack.start("dispatch")
    stack.start("worker")
    entries = stack.entries("closed-run", fixture_lines(FULL), meta=meta_for(FULL), ts0=TS0)
    stack.xadd(entries)
    stack.wait(lambda: stack.settled(["closed-run"]), what="the run")
    assert_trace_equals_mapping(stack, "closed-run", FULL)
    delivered = len(stack.receiver.spans())

    stack.xadd(entries)  # the same entries again
    late = dict(entries[1], seq=str(len(entries)), ts=str(TS0 + 10**9))  # read after the end
    stack.xadd([late])
    stack.wait(lambda: stack.settled(["closed-run"]) and len(stack.receiver.spans()) == delivered + 1,
               what="the late entry")
    # another run with the same id from a producer that sends no `inst`: its entries come as late
    # events of the closed run (README, Limits), not lost
    again = stack.entries("closed-run", [b'{"type":"thread.started","thread_id":"another"}'], meta={"prompt": "again"},
                          ts0=TS0 + 2 * 10**9)
    stack.xadd(again)
    stack.wait(lambda: stack.settled(["closed-run"]) and len(stack.receiver.spans()) == delivered + 1 + len(again),
               what="the reused run's entries")
    late_events = [s for s in stack.receiver.spans() if s.name == "late_entry"]
    assert len(late_events) == 1 + len(again)
    assert all(s.level == "WARNING" and "arrived after the run was closed" in s.status_message for s in late_events)
    assert stack.receiver.duplicates() == {}
    assert stack.redis.zcard(stack.keys.active) == 0
    time.sleep(2)  # four sweeps at 0.5 s: none may wake the closed run again
    assert stack.redis.zcard(stack.keys.active) == 0 and stack.redis.zscore(stack.keys.woken, "closed-run") is None


# ---- processes that stay up ----

def test_a_worker_and_a_dispatcher_survive_redis_killed_and_restarted_under_them(tmp_path):
    stack = Stack(tmp_path, redis_server=RedisServer(appendonly=True))
    try:
        stack.redis.config_set("appendfsync", "always")  # what a killed Redis had acknowledged, it has
        dispatcher = stack.start("dispatch")
        worker = stack.start("worker")
        stack.receiver.delay("traces", 4, times=1, store=True)  # Redis dies while the worker waits on Langfuse
        stack.feed("through-an-outage", fixture_lines(FULL), meta=meta_for(FULL), ts0=TS0)
        stack.wait(lambda: stack.receiver.requests("traces"), what="the worker to send")
        stack.redis_server.kill()
        time.sleep(6)  # the worker's request ends, its commit fails; both processes find Redis gone
        assert worker.poll() is None and dispatcher.poll() is None
        stack.redis_server.start()
        stack.feed("after-the-outage", fixture_lines(FAILED_COMMAND), meta=meta_for(FAILED_COMMAND), ts0=TS0)
        stack.wait(lambda: stack.settled(["through-an-outage", "after-the-outage"]), timeout=120,
                   what="both runs after Redis came back")
        assert worker.poll() is None and dispatcher.poll() is None
        assert_trace_equals_mapping(stack, "through-an-outage", FULL)
        assert_trace_equals_mapping(stack, "after-the-outage", FAILED_COMMAND)
        assert stack.receiver.duplicates() == {}
        assert "it starts again once Redis answers" in stack.log_text("worker-1")
        assert "unavailable" in stack.log_text("dispatch-0")
    finally:
        stack.close()


# ---- status tells the truth ----

def test_status_shows_the_workers_own_settings_drops_a_killed_one_and_checks_health(stack):
    stack.start("dispatch")
    stack.start("worker", "worker-a")
    stack.wait(lambda: status(stack)["workers"]["alive"] == 1 and status(stack)["dispatchers"]["alive"] == 1,
               what="the processes to register")
    report = status(stack)
    [registered] = report["workers"]["registered"]
    assert registered["destination"] == f"Langfuse at {stack.receiver.base_url}"
    assert registered["settings"]["lease_seconds"] == 4 and registered["settings"]["worker_class"] == "simple"
    assert "secret" not in json.dumps(report).lower().replace("secret_key", "")
    # a caller without keys sees what the workers do, not its own configuration
    caller = cli(stack, "status", env=without(stack.env, "LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY"))
    assert f"sending to     Langfuse at {stack.receiver.base_url}" in caller.stdout
    healthy = cli(stack, "status", "--check")
    assert healthy.returncode == 0, healthy.stderr

    stack.kill("worker-a", signal.SIGKILL)
    stack.wait(lambda: status(stack)["workers"]["alive"] == 0, timeout=60, what="the killed worker to be dropped")
    unhealthy = cli(stack, "status", "--check")
    assert unhealthy.returncode == 1
    assert "unhealthy: no live worker: nothing delivers (start `codex-langfuse worker`)" in unhealthy.stderr

    stack.feed("waits", fixture_lines(FULL), meta=meta_for(FULL))
    stack.wait(lambda: status(stack)["oldest_undelivered_age_seconds"] is not None, what="the run to wait")
    time.sleep(1.1)
    aged = cli(stack, "status", "--check", "--max-age", "1s", "--json")
    assert aged.returncode == 1
    problems = json.loads(aged.stdout)["check"]["problems"]
    assert any(p.startswith("the oldest undelivered event waits for") for p in problems)


def test_status_check_fails_while_dead_letters_grow(stack):
    stack.start("dispatch")
    stack.start("worker")
    stack.wait(lambda: cli(stack, "status", "--check").returncode == 0, what="a healthy back end")
    stack.receiver.reject_spans(*expected_spans("refused", stack.entries("refused", fixture_lines(FULL),
                                                                         meta=meta_for(FULL), ts0=TS0))[0])
    stack.feed("refused", fixture_lines(FULL), meta=meta_for(FULL), ts0=TS0)
    stack.wait(lambda: stack.settled(["refused"]), what="the refused run")
    answer = cli(stack, "status", "--check")
    assert answer.returncode == 1 and "unhealthy: dead letters are growing" in answer.stderr
    assert cli(stack, "status", "--check", "--window", "0s").returncode == 0


# ---- telemetry for operators ----

def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return answer.read().decode()


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_metrics_json_logs_and_one_line_per_delivered_run(tmp_path):
    stack = Stack(tmp_path, log_format="json")
    try:
        worker_port, dispatcher_port = free_port(), free_port()
        stack.start("dispatch", None, "--metrics-port", str(dispatcher_port), "--metrics-addr", "127.0.0.1")
        stack.start("worker", "worker-m", "--metrics-port", str(worker_port), "--metrics-addr", "127.0.0.1")
        entries = stack.feed("measured", fixture_lines(FULL), meta=meta_for(FULL), ts0=TS0)
        stack.wait(lambda: stack.settled(["measured"]), what="the run")
        stack.wait(lambda: metric(scrape(worker_port), "codex_langfuse_runs_delivered_total") == 1, what="the metrics")
        worker = scrape(worker_port)
        assert metric(worker, "codex_langfuse_spans_accepted_total") == 10
        assert metric(worker, "codex_langfuse_spans_sent_total") == 10
        assert metric(worker, "codex_langfuse_events_folded_total") == entries
        assert metric(worker, "codex_langfuse_delivery_delay_seconds_count") == 10
        dispatcher = scrape(dispatcher_port)
        assert metric(dispatcher, "codex_langfuse_entries_filed_total") == entries
        assert "codex_langfuse_stream_lag" in dispatcher

        lines = [json.loads(line) for line in stack.log_text("worker-m").splitlines() if line.startswith("{")]
        about_the_run = [line for line in lines if "measured" in line["message"]]
        assert about_the_run and all(line["run_id"] == "measured" for line in about_the_run)
        assert any(re.fullmatch(r"run measured: 10 spans, \$0\.0\d{3}", line["message"]) for line in about_the_run)
    finally:
        stack.close()


def test_the_procfile_formation_starts_a_killed_process_again_and_stops_on_a_wrong_setting(stack):
    """`honcho start` runs the Procfile: a dispatcher killed -9 comes back, the formation stays up;
    a worker refusing its settings (exit 2) is not restarted in a loop."""
    env = {**stack.env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    honcho = subprocess.Popen([sys.executable, "-m", "honcho", "start", "-f", str(REPO / "Procfile")], env=env,
                              cwd=stack.tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def dispatcher_pids() -> set[int]:
            return {json.loads(v)["pid"] for v in stack.redis.hvals(stack.keys.processes)
                    if json.loads(v)["role"] == "dispatcher"}

        stack.wait(lambda: len(dispatcher_pids()) == 1 and status(stack)["workers"]["alive"] == 1,
                   what="the formation")
        [first] = dispatcher_pids()
        os.kill(first, signal.SIGKILL)
        stack.wait(lambda: dispatcher_pids() - {first}, timeout=60, what="a new dispatcher")
        assert honcho.poll() is None
        stack.feed("under-honcho", fixture_lines(FULL), meta=meta_for(FULL), ts0=TS0)
        stack.wait(lambda: stack.settled(["under-honcho"]), what="the run")
    finally:
        os.killpg(honcho.pid, signal.SIGTERM)
        output = honcho.communicate(timeout=60)[0].decode(errors="replace")
    assert "dispatcher died; starting it again" in output

    wrong = {**env, "LANGFUSE_SECRET_KEY": "sk-lf-wrong"}
    answer = subprocess.run([sys.executable, "-m", "honcho", "start", "-f", str(REPO / "Procfile")], env=wrong,
                            cwd=stack.tmp, capture_output=True, text=True, timeout=120)
    assert "HTTP 401: Invalid credentials" in answer.stdout
    assert "worker died; starting it again" not in answer.stdout
