"""A live capture (`codex-langfuse run -- codex exec …`) and an import of the rollout the same real
Codex wrote: each turn is counted once, whichever reaches a worker first (ingest/turn_claims.py)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from codex_langfuse.producer.entries import trace_id
from codex_langfuse.producer.rollouts import find_rollouts
from codex_langfuse.producer.rollout_turns import split_file
from tests.test_codex_e2e import codex_current, play  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.codex, pytest.mark.integration]

GUARD = 120  # seconds: a hang guard, never the thing asserted
HELD = "codex-langfuse:held"


def import_sessions(stack, played, state: Path) -> str:
    sessions = played.sandbox.codex_home / "sessions"
    files = find_rollouts([sessions])
    assert len(files) == 1
    turns, _ = split_file(files[0], int(time.time() * 1e6), 3600 * 10 ** 6, final=True)
    assert [t.status for t in turns] == ["completed"]
    result = stack.cli("import", str(sessions), "--state", str(state), "--json", "--idle-timeout", "1")
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(result.stdout.decode().splitlines()[-1])["sent"] == 1
    assert turns[0].thread_id == played.runs[0].thread_id
    return turns[0].run_id


def generations(stack, run_id: str):
    return [span for span in stack.receiver.spans(trace_id(run_id)) if span.type == "generation"]


def metadata(span, key):
    value = span.metadata.get(key)
    return json.loads(value) if isinstance(value, str) and value.startswith("{") else value


def test_live_then_import_counts_the_turn_once(stack, tmp_path, codex_current):
    stack.start("dispatch")
    stack.start("worker")
    played = play(codex_current, "command_ok", tmp_path / "codex", pipeline=stack)
    [live] = played.run_ids
    stack.wait(lambda: stack.settled([live]), GUARD, "the live run")
    [live_generation] = generations(stack, live)
    assert live_generation.usage_details["total"] > 0

    imported = import_sessions(stack, played, tmp_path / "state.sqlite3")
    stack.wait(lambda: stack.settled([imported]), GUARD, "the import of the same turn")
    assert stack.receiver.spans(trace_id(imported)) == []  # counted live: the import sends nothing
    state = json.loads(stack.redis.get(stack.keys.state(imported)))
    assert state["superseded_by"] == live


def test_import_then_live_counts_the_turn_once(stack, tmp_path, codex_current):
    stack.start("dispatch")
    stack.start("worker")
    # The live capture's entries are held back (as if they sat in a spool) on another stream.
    # (as the back-end user: the runner user may append to the pipeline's stream only)
    held_env = SimpleNamespace(runner_env={**stack.env, "CODEX_LANGFUSE_STREAM": HELD})
    played = play(codex_current, "command_ok", tmp_path / "codex", pipeline=held_env)
    [live] = played.run_ids
    assert stack.redis.xlen(HELD) > 0

    imported = import_sessions(stack, played, tmp_path / "state.sqlite3")
    stack.wait(lambda: stack.settled([imported]), GUARD, "the import")
    imported_generations = generations(stack, imported)
    assert len(imported_generations) == 2  # two model requests, each with its usage
    assert all(g.usage_details["total"] > 0 for g in imported_generations)

    stream = stack.settings().stream
    for _, fields in stack.redis.xrange(HELD):  # the live capture arrives late
        stack.redis.xadd(stream, fields)
    stack.wait(lambda: stack.settled([live]), GUARD, "the late live run")
    [live_generation] = generations(stack, live)
    assert live_generation.usage_details is None and live_generation.cost_details is None
    assert metadata(live_generation, "usage_counted_by")["run_id"] == imported
    counted_live = metadata(live_generation, "usage_not_counted")
    assert counted_live["input_tokens"] == sum(g.usage_details["input"] + g.usage_details["input_cached_tokens"]
                                               for g in imported_generations)
    live_root = [s for s in stack.receiver.spans(trace_id(live)) if s.parent_span_id is None][0]
    assert live_root.trace_id == trace_id(live)  # the promised trace id, still there
    assert os.environ.get("CODEX_LANGFUSE_STREAM") is None
