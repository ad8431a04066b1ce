"""The back-end commands as a user runs them: demo, score, show."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from codex_langfuse.ingest.observations import score_id, trace_id
from tests.conftest import CODEX_FIXTURES, every_profile
from tests.support.stack import PYTHONPATH, REPO
from tests.test_pipeline import TS0, fixture_lines, meta_for

pytestmark = pytest.mark.integration


def test_demo_runs_end_to_end_into_the_local_sink_and_shows_the_trace(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LANGFUSE_", "CODEX_LANGFUSE_"))}
    env.update(XDG_STATE_HOME=str(tmp_path / "state"), PYTHONPATH=PYTHONPATH)
    answer = subprocess.run([sys.executable, "-m", "codex_langfuse.producer.cli", "demo"], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert answer.returncode == 0, answer.stderr
    out = answer.stdout
    assert "(10 observations)" in out
    assert "generation turn 1" in out and "model=gpt-5-codex" in out and "cost $0.006500" in out
    assert "scores: errors=0.0, failed_commands=0.0, files_changed=1.0, success=1.0" in out
    run_id = out.split("codex-langfuse show ")[1].split()[0]
    sink = tmp_path / "state" / "codex-langfuse" / "sink" / trace_id(run_id)
    assert len(list(sink.glob("*.json"))) == 10
    assert len(list((sink / "scores").glob("*.json"))) == 4
    shown = subprocess.run([sys.executable, "-m", "codex_langfuse.producer.cli", "show", run_id], env=env, cwd=REPO,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "agent      codex demo" in shown.stdout


def test_demo_with_langfuse_keys_sends_to_langfuse_and_says_when_it_refuses(tmp_path):
    from tests.support.langfuse_receiver import LangfuseReceiver

    with LangfuseReceiver() as receiver:
        answers = []
        for secret in (receiver.secret_key, "sk-lf-wrong"):
            env = {k: v for k, v in os.environ.items() if not k.startswith(("LANGFUSE_", "CODEX_LANGFUSE_"))}
            env.update(XDG_STATE_HOME=str(tmp_path / "state"), PYTHONPATH=PYTHONPATH, LANGFUSE_BASE_URL=receiver.base_url,
                       LANGFUSE_PUBLIC_KEY=receiver.public_key, LANGFUSE_SECRET_KEY=secret)
            answers.append(subprocess.run([sys.executable, "-m", "codex_langfuse.producer.cli", "demo"], env=env, cwd=REPO,
                                          capture_output=True, text=True, timeout=120))
        sent, refused = answers
        assert sent.returncode == 0, sent.stderr
        assert "sent to Langfuse" in sent.stdout
        assert len(receiver.spans()) == 10 and len(receiver.scores()) == 4 and receiver.duplicates() == {}
        # wrong keys stop the worker at its start, with Langfuse's own message
        assert refused.returncode == 1
        assert "codex-langfuse worker: Langfuse at " in refused.stderr and "HTTP 401: Invalid credentials" in refused.stderr
        assert "the worker stopped (exit code 2" in refused.stderr
        assert not (tmp_path / "state" / "codex-langfuse" / "sink").exists()  # keys set: no sink


@every_profile
def test_score_attaches_to_a_finished_run_once_per_value_and_overwrites_on_change(stack):
    stack.env["CODEX_LANGFUSE_ENVIRONMENT"] = "worker-env"  # the worker's, and the `score` command's
    stack.start("dispatch")
    stack.start("worker")
    path = CODEX_FIXTURES / "real_run_0.169.0_full.jsonl"
    stack.feed("scored", fixture_lines(path), meta=meta_for(path) | {"environment": "Nightly"}, ts0=TS0)
    stack.wait(lambda: stack.settled(["scored"]), what="the run")
    trace = trace_id("scored")

    def writes(name: str) -> list:
        return [s for s in stack.receiver.score_writes() if s.trace_id == trace and s.name == name]

    answer = stack.cli("score", "scored", "ci_passed", "true", "--comment", "CI green")
    assert answer.returncode == 0, answer.stderr.decode()
    stack.wait(lambda: len(writes("ci_passed")) == 1 and stack.settled(["scored"]), what="the score")
    [written] = writes("ci_passed")
    assert (written.id, written.value, written.data_type, written.comment) == \
           (score_id(trace, "ci_passed"), 1.0, "BOOLEAN", "CI green")
    assert written.environment == "nightly"  # the run's environment, as the producer sent it, normalised
    # sent with the run's start as its timestamp: newer servers keep it (an overwrite on another day
    # lands on the same row); up to v4.16 the server keeps the time it received the score instead
    assert written.body["timestamp"].startswith("2026-09-21")
    kept = stack.receiver.profile.score_timestamp_kept
    assert written.timestamp.startswith("2026-09-21") == kept

    assert stack.cli("score", "scored", "ci_passed", "true", "--comment", "CI green").returncode == 0
    assert stack.cli("score", "scored", "review", "needs-work").returncode == 0
    stack.wait(lambda: len(writes("review")) == 1 and stack.settled(["scored"]), what="the second score")
    assert len(writes("ci_passed")) == 1  # the same value again: already accepted, not re-sent

    assert stack.cli("score", "scored", "ci_passed", "0").returncode == 0
    stack.wait(lambda: len(writes("ci_passed")) == 2 and stack.settled(["scored"]), what="the changed score")
    current = [s for s in stack.receiver.scores() if s.trace_id == trace and s.name == "ci_passed"]
    assert [s.value for s in current] == [0.0]  # overwritten, not duplicated
    assert next(s for s in stack.receiver.scores() if s.name == "review").data_type == "CATEGORICAL"


def test_score_rejects_a_value_that_does_not_fit_its_type(stack):
    answer = stack.cli("score", "some-run", "passed", "maybe", "--data-type", "BOOLEAN")
    assert answer.returncode == 2
    assert b"not a boolean" in answer.stderr


def test_status_and_replay_speak_plain_text_to_people(stack):
    status = stack.cli("status")
    assert status.returncode == 0
    text = status.stdout.decode()
    for label in ("stream", "queue", "runs", "workers", "dead letters   none"):
        assert label in text
    replay = stack.cli("replay", "--dry-run")
    assert replay.returncode == 0 and b"0 dead letters: would replay 0" in replay.stdout


def test_show_reports_a_run_it_does_not_know(tmp_path):
    env = {**os.environ, "CODEX_LANGFUSE_SINK_DIR": str(tmp_path), "PYTHONPATH": PYTHONPATH}
    answer = subprocess.run([sys.executable, "-m", "codex_langfuse.producer.cli", "show", "no-such-run"], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert answer.returncode == 1 and "no trace for no-such-run" in answer.stderr


def test_help_lists_every_command():
    answer = subprocess.run([sys.executable, "-m", "codex_langfuse.producer.cli", "--help"], capture_output=True, text=True,
                            cwd=REPO, timeout=60)
    assert answer.returncode == 0
    for command in ("run", "tee", "dispatch", "worker", "replay", "status", "score", "show", "demo"):
        assert command in answer.stdout
