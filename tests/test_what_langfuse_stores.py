"""What a user sees in Langfuse after runs went through the whole pipeline, on every server
generation (tests/support/langfuse_receiver.py PROFILES): the trace as the server stores and shows
it, not the spans as they were sent.

- metadata strings are stored as sent (plain), trace metadata only on the run's root, where it
  becomes the trace's; a span's own metadata keeps its keys;
- the environment as Langfuse keeps it (the producer's, normalised, else the worker's);
- every derived score arrives, whichever shape the scores route takes;
- a send whose outcome was unknown is checked and completes exactly once, also when the check
  itself answers slower than the client waits, and never waits forever when nothing can answer;
- a run started with a TRACEPARENT lives in the caller's trace, under the caller's span.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from langfuse.api.client import LangfuseAPI

from codex_langfuse.ingest.observations import observation_id, root_id, trace_id
from tests.conftest import CODEX_FIXTURES, every_profile
from tests.support.stack import REPO, Stack
from tests.test_pipeline import TS0, assert_trace_equals_mapping, fixture_lines, meta_for

pytestmark = pytest.mark.integration

FULL = CODEX_FIXTURES / "real_run_0.169.0_full.jsonl"
FAILED_COMMAND = CODEX_FIXTURES / "real_run_0.169.0_command_failed.jsonl"
DERIVED = {"success", "failed_commands", "files_changed", "errors"}


def start_backend(stack: Stack) -> None:
    stack.start("dispatch")
    stack.start("worker")


def scores_of(stack: Stack, trace: str) -> dict[str, object]:
    return {score.name: score for score in stack.receiver.scores() if score.trace_id == trace}


@every_profile
def test_what_a_user_sees_of_runs_with_metadata_and_environments(stack):
    stack.env["CODEX_LANGFUSE_ENVIRONMENT"] = "LangfuseCI"  # the worker's default: stored as "ci"
    # the first request of spans is stored but never answered: the worker must check, not re-send
    stack.receiver.reset_connection("traces", times=1, store=True)
    start_backend(stack)
    # entries written by a producer that did not normalise (another language's, straight to Redis)
    meta = meta_for(FAILED_COMMAND)
    meta |= {"environment": "Staging", "metadata": meta["metadata"] | {"status": "ci", "ticket": "ABC-1", "attempt": 2}}
    stack.feed("stored-as-shown", fixture_lines(FAILED_COMMAND), meta=meta, ts0=TS0)
    stack.feed("worker-environment", fixture_lines(FULL), meta=meta_for(FULL), ts0=TS0)
    stack.wait(lambda: stack.settled(["stored-as-shown", "worker-environment"]), what="both runs")

    assert stack.receiver.duplicates() == {}
    assert stack.receiver.requests("observations"), "the unanswered send was checked"
    trace = stack.receiver.trace(trace_id("stored-as-shown"))
    assert trace.environment == "staging"
    assert {row.environment for row in trace.observations} == {"staging"}
    # metadata as a user filters on it: strings plain, other values JSON
    assert (trace.metadata["ticket"], trace.metadata["attempt"], trace.metadata["run_id"]) == (
        "ABC-1", "2", "stored-as-shown")
    assert trace.metadata["fixture"] == FAILED_COMMAND.name
    assert trace.metadata["status"] == "ci"
    # the run's metadata did not overwrite the failed command's own
    command = trace.observation(observation_id("stored-as-shown", "item/item_1"))
    assert command.name == "command" and command.level == "ERROR"
    assert command.metadata["status"] == "failed"
    assert not {"run_id", "ticket"} & set(command.metadata)
    assert (trace.name, trace.input) == ("codex exec", f"prompt of {FAILED_COMMAND.stem}")
    scores = scores_of(stack, trace_id("stored-as-shown"))
    assert set(scores) == DERIVED
    assert {score.environment for score in scores.values()} == {"staging"}
    assert scores["failed_commands"].value == 1.0

    other = stack.receiver.trace(trace_id("worker-environment"))
    assert other.environment == "ci"
    assert {score.environment for score in scores_of(stack, other.id).values()} == {"ci"}
    assert_trace_equals_mapping(stack, "worker-environment", FULL)


@every_profile
def test_an_in_doubt_send_whose_check_answers_later_than_the_client_waits_completes_once(stack):
    stack.env["CODEX_LANGFUSE_IN_DOUBT_WAIT"] = "120"  # far longer than the checks take: no blind re-send
    slow = stack.settings().http_timeout + 0.5
    stack.receiver.reset_connection("traces", times=1, store=True)
    stack.receiver.delay("observations", slow, times=1, store=True)  # the first check times out
    start_backend(stack)
    stack.feed("slow-check", fixture_lines(FULL), meta=meta_for(FULL), ts0=TS0)
    stack.wait(lambda: stack.settled(["slow-check"]), timeout=120, what="the run after slow checks")
    checks = stack.receiver.requests("observations")
    assert checks[0].fault == f"delay {slow}s (stored)" and len(checks) >= 2
    assert stack.receiver.duplicates() == {}
    assert_trace_equals_mapping(stack, "slow-check", FULL)


def test_when_nothing_can_say_what_langfuse_has_the_doubtful_spans_go_again_after_the_wait(stack):
    # nothing was stored, but the worker cannot know: no listing answers (404 on v2 and on v1)
    stack.receiver.reset_connection("traces", times=1, store=False)
    stack.receiver.fail("observations", 404, for_seconds=3600)
    start_backend(stack)
    stack.feed("unknowable", fixture_lines(FULL), meta=meta_for(FULL), ts0=TS0)
    stack.wait(lambda: stack.settled(["unknowable"]), timeout=120, what="the held spans to go again")
    assert stack.receiver.duplicates() == {}
    assert_trace_equals_mapping(stack, "unknowable", FULL)
    # said in the worker's log: a re-send Langfuse could not confirm may be a second copy
    assert "in-doubt span(s) again after 6 s without a confirmation" in stack.log_text("worker-1")


# ---- a run in its caller's trace ---------------------------------------------------------------

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"


def caller_root(stack: Stack) -> None:
    """The caller's own span, the trace's root, as its OpenTelemetry exporter sends it."""
    api = LangfuseAPI(base_url=stack.receiver.base_url, username=stack.receiver.public_key,
                      password=stack.receiver.secret_key)
    attributes = {"langfuse.trace.name": "nightly workflow", "langfuse.observation.input": "fix the build",
                  "langfuse.trace.metadata.workflow": "nightly", "user.id": "ci-bot"}
    api.opentelemetry.export_traces(resource_spans=[{"scopeSpans": [{"scope": {"name": "runner"}, "spans": [{
        "traceId": CALLER_TRACE, "spanId": CALLER_SPAN, "name": "workflow", "kind": 1,
        "startTimeUnixNano": str(TS0 * 1000 - 10**9), "endTimeUnixNano": str(TS0 * 1000 + 10**11),
        "attributes": [{"key": k, "value": {"stringValue": v}} for k, v in attributes.items()]}]}]}],
        request_options={"additional_headers": {"x-langfuse-ingestion-version": "4"}})


def tee(stack: Stack, run_id: str, path, traceparent: str) -> None:
    done = subprocess.run([sys.executable, "-m", "codex_langfuse.producer.cli", "tee", "--run-id", run_id],
                          env={**stack.env, "TRACEPARENT": traceparent, "CODEX_LANGFUSE_HEARTBEAT_SECONDS": "60"},
                          cwd=REPO, input=path.read_bytes(), capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()


def test_runs_with_a_traceparent_live_in_the_callers_trace_under_its_span(stack):
    caller_root(stack)
    start_backend(stack)
    tee(stack, "joined-1", FAILED_COMMAND, TRACEPARENT)
    tee(stack, "joined-2", FULL, TRACEPARENT)
    stack.wait(lambda: stack.settled(["joined-1", "joined-2"]), what="the joined runs")
    assert stack.receiver.spans(trace_id("joined-1")) == [] and stack.receiver.spans(trace_id("joined-2")) == []
    trace = stack.receiver.trace(CALLER_TRACE)
    # the caller's trace stays the caller's: its name, input, metadata, user
    assert (trace.name, trace.input, trace.metadata["workflow"], trace.user_id) == (
        "nightly workflow", "fix the build", "nightly", "ci-bot")
    assert "run_id" not in trace.metadata
    for run in ("joined-1", "joined-2"):
        root = trace.observation(root_id(run))
        assert (root.type, root.parent_id) == ("agent", CALLER_SPAN)
        assert root.metadata["run_id"] == run  # the run's metadata is its root's own
        run_rows = [row for row in trace.observations if row.id != CALLER_SPAN and row.id != root.id
                    and row.parent_id == root.id]
        assert run_rows, run
        scores = {s.name: s for s in stack.receiver.scores() if s.observation_id == root.id}
        assert set(scores) == DERIVED
        assert {(s.trace_id, s.observation_id) for s in scores.values()} == {(CALLER_TRACE, root.id)}
    assert len({s.id for s in stack.receiver.scores()}) == 2 * len(DERIVED)  # per run, not per trace
    assert stack.receiver.duplicates() == {}
    # a score attached later lands on the run's root in the caller's trace
    assert stack.cli("score", "joined-2", "reviewed", "true").returncode == 0
    stack.wait(lambda: any(s.name == "reviewed" for s in stack.receiver.scores()) and stack.settled(["joined-2"]),
               what="the later score")
    (later,) = [s for s in stack.receiver.scores() if s.name == "reviewed"]
    assert (later.trace_id, later.observation_id) == (CALLER_TRACE, root_id("joined-2"))
