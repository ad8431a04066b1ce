"""`codex-langfuse import` and `verify` through a whole pipeline: real redis-server, dispatcher and
worker processes, the strict Langfuse receiver (tests/support/stack.py)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from codex_langfuse.ingest.fold import FoldContext
from codex_langfuse.ingest.pricing import PriceTable
from codex_langfuse.ingest.verify import expected_span_ids
from codex_langfuse.producer.rollouts import find_rollouts
from codex_langfuse.producer.rollout_turns import split_file

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).parent / "fixtures"
SETTLE_GUARD = 120  # seconds: a hang guard, never the thing asserted
DAY_AGO = time.time() - 86400


def history(tmp_path: Path) -> Path:
    """Every rollout fixture in one CODEX_HOME-like tree, written a day ago (so every turn is over)."""
    root = tmp_path / "codex-home" / "sessions"
    shutil.copytree(FIXTURES / "rollouts", root)
    for name in ("rollout_0.169.0_full.jsonl", "rollout_0.169.0_resumed_two_turns.jsonl", "rollout_v0.98.0.jsonl"):
        shutil.copy(FIXTURES / "codex" / name, root / name.replace("rollout_", "rollout-"))
    for path in root.rglob("rollout-*"):
        os.utime(path, (DAY_AGO, DAY_AGO))
    return root


def expected(root: Path) -> dict[str, set[str]]:
    """run id -> span ids of its trace, folded here as the worker will."""
    context = FoldContext(prices=PriceTable.load())
    runs = {}
    for path in find_rollouts([root]):
        turns, splitter = split_file(path, int(time.time() * 1e6), 3600 * 10 ** 6, final=True)
        for turn in turns:
            runs[turn.run_id] = set(expected_span_ids(path, turn, splitter.state.header_us, context))
    return runs


def import_json(stack, *args: str) -> dict:
    result = stack.cli("import", *args, "--json", timeout=180)
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout.decode().strip().splitlines()[-1])


def received_ids(stack, runs) -> dict[str, list[str]]:
    from codex_langfuse.producer.entries import trace_id

    return {run: [span.span_id for span in stack.receiver.spans(trace_id(run))] for run in runs}


def test_import_sends_each_turn_once_and_importing_again_sends_nothing(stack, tmp_path):
    root = history(tmp_path)
    runs = expected(root)
    assert len(runs) == 26
    stack.start("dispatch")
    stack.start("worker")
    state = str(tmp_path / "state.sqlite3")

    report = import_json(stack, str(root), "--state", state)
    assert report["sent"] == len(runs) and report["already_sent"] == 0 and report["errors"] == []
    assert report["files"] == 22 and report["in_progress"] == 0
    stack.wait(lambda: stack.settled(runs), SETTLE_GUARD, "every imported turn folded and delivered")
    got = received_ids(stack, runs)
    assert {run: set(ids) for run, ids in got.items()} == runs
    assert all(len(ids) == len(set(ids)) for ids in got.values())
    assert stack.receiver.duplicates() == {}
    # the last id ever added, not the length: the dispatcher's sweep trims acknowledged entries
    last_added = stack.redis.xinfo_stream(stack.settings().stream)["last-generated-id"]

    # again: the machine remembers what it sent, nothing reaches Redis
    again = import_json(stack, str(root), "--state", state)
    assert again["sent"] == 0 and again["turns"] == 0  # checkpoints: every file was read to its end
    assert stack.redis.xinfo_stream(stack.settings().stream)["last-generated-id"] == last_added

    # again from a machine that forgot (another state file): the pipeline sends nothing new
    forgetful = import_json(stack, str(root), "--state", str(tmp_path / "other.sqlite3"))
    assert forgetful["sent"] == len(runs)
    stack.wait(lambda: stack.settled(runs), SETTLE_GUARD, "the re-imported turns folded")
    time.sleep(1.0)  # room for any wrong delivery to show up (not a measurement)
    assert received_ids(stack, runs) == got
    assert stack.receiver.duplicates() == {}


def test_dates_and_dry_run_choose_what_is_sent(stack, tmp_path):
    root = history(tmp_path)
    runs = expected(root)
    state = str(tmp_path / "state.sqlite3")
    # the fixtures were written on 2026-11-25 (three shared ones) and 2026-11-30 (the rest)
    dry = import_json(stack, str(root), "--state", state, "--dry-run", "--until", "2026-11-26")
    assert dry["dry_run"] and dry["sent"] == 4 and dry["outside_dates"] == len(runs) - 4
    assert stack.redis.exists(stack.settings().stream) == 0  # a dry run sends nothing
    stack.start("dispatch")
    stack.start("worker")
    early = import_json(stack, str(root), "--state", state, "--until", "2026-11-26")
    assert early["sent"] == 4
    late = import_json(stack, str(root), "--state", state, "--since", "2026-11-26")
    assert late["sent"] == len(runs) - 4 and late["already_sent"] == 4
    stack.wait(lambda: stack.settled(runs), SETTLE_GUARD, "every turn folded")
    assert all(received_ids(stack, runs).values())


def test_verify_finds_what_langfuse_lost_and_sends_it_again(stack, tmp_path):
    root = history(tmp_path)
    runs = expected(root)
    stack.start("dispatch")
    stack.start("worker")
    import_json(stack, str(root), "--state", str(tmp_path / "state.sqlite3"))
    stack.wait(lambda: stack.settled(runs), SETTLE_GUARD, "every imported turn folded and delivered")

    def verify(*args: str) -> tuple[int, dict]:
        result = stack.cli("verify", str(root), "--json", "--state", str(tmp_path / "state.sqlite3"), *args,
                           timeout=180)
        return result.returncode, json.loads(result.stdout.decode().strip().splitlines()[-1])

    code, report = verify("--dry-run")
    assert code == 0 and report["complete"] == len(runs) and report["healed"] == 0

    stack.receiver.reset()  # Langfuse lost every observation it had accepted
    code, report = verify("--dry-run", "--ledger-only")
    assert code == 0 and report["complete"] == len(runs)  # the ledger alone cannot see that
    code, report = verify("--dry-run")
    assert code == 1 and report["not_sent"] == len(runs) and report["healed"] == 0

    code, report = verify()
    assert report["healed"] == len(runs)
    stack.wait(lambda: stack.settled(runs) and all(
        set(ids) == runs[run] for run, ids in received_ids(stack, runs).items()), SETTLE_GUARD, "the turns re-sent")
    assert stack.receiver.duplicates() == {}
    code, report = verify("--dry-run")
    assert code == 0 and report["complete"] == len(runs)
