"""The mapping Codex events -> Langfuse observations (ingest/fold.py and the two format modules).

Every expectation is written from the fixture's own lines (tests/fixtures/codex/) and from the
published rates in ingest/prices.json. Entries come from `tests.support.runs`: fixture line `i`
(0-based) is entry seq `i + 1` at `ts_of(i + 1)`; the `start` entry is seq 0, `end` is last.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from langfuse import Langfuse

from codex_langfuse.ingest.entries import Entry
from codex_langfuse.ingest.events import Usage, parse_line
from codex_langfuse.ingest.fold import FoldContext, FoldResult, RunState, close, fold, new_state, skip_gap
from codex_langfuse.ingest.observations import Observation
from codex_langfuse.ingest.pricing import PriceTable
from tests.support.runs import (
    DEFAULT_RUN_ID,
    fixture_entries,
    fixture_lines,
    json_entry,
    line_entry,
    run_entries,
    ts_of,
)

RUN = DEFAULT_RUN_ID
TRACE = Langfuse.create_trace_id(seed=RUN)
PROMPT = "Run a command and create hello.txt"
PRICES = PriceTable.load()
CTX = FoldContext(prices=PRICES)
PRICE_TABLE_VERSION = json.loads((Path(__file__).parent.parent / "ingest" / "prices.json").read_text())["table_version"]
M = 1_000_000  # prices.json gives USD per 1M tokens
MICRO = 1e-9  # USD: costs must be right to the micro-dollar; this is a thousand times finer

# USD per 1M tokens, copied from ingest/prices.json (standard tier). OpenAI bills reasoning as output,
# so output_reasoning_tokens has the output rate where the table names none.
GPT_5_CODEX = {"input": 1.25, "input_cached_tokens": 0.125, "output": 10.00, "output_reasoning_tokens": 10.00}
GPT_5_1_CODEX_MINI = {"input": 0.25, "input_cached_tokens": 0.025, "output": 2.00, "output_reasoning_tokens": 2.00}
GPT_5_6_TERRA = {"input": 2, "input_cached_tokens": 0.2, "input_cache_creation": 2.5, "output": 12,
                 "output_reasoning_tokens": 12}
GPT_5_CODEX_PRIORITY = {"input": 2.50, "input_cached_tokens": 0.25, "output": 20.00, "output_reasoning_tokens": 20.00}

F_FULL = "real_run_0.169.0_full.jsonl"
F_FAILED_CMD = "real_run_0.169.0_command_failed.jsonl"
F_MCP = "real_run_0.169.0_mcp_tool_call.jsonl"
F_RESUME = "real_run_0.169.0_resume_thread_cumulative_usage.jsonl"
F_TURN_FAILED = "real_run_0.169.0_turn_failed.jsonl"
F_098 = "real_run_v0.98.0_json.jsonl"
F_044 = "real_run_v0.44.0_json.jsonl"
F_DOCS = "repo_docs_exec_md_sample.jsonl"
F_042 = "real_run_v0.42.0_json.jsonl"
F_020 = "real_run_v0.20.0_json.jsonl"
CURRENT = [F_FULL, F_FAILED_CMD, F_MCP, F_RESUME, F_TURN_FAILED, F_098, F_044, F_DOCS]
LEGACY = [F_042, F_020]
ALL = CURRENT + LEGACY


def test_the_suite_covers_every_exec_stream_fixture():
    on_disk = {p.name for p in (Path(__file__).parent / "fixtures" / "codex").glob("*.jsonl")
               if not p.name.startswith("rollout_")}
    assert on_disk == set(ALL)


# ---- helpers ------------------------------------------------------------------------------------


def line_ts(index: int) -> int:
    """When fixture line `index` (0-based) was read."""
    return ts_of(index + 1)


def end_ts(name: str) -> int:
    return ts_of(len(fixture_lines(name)) + 1)


def obj(name: str, index: int) -> dict:
    return parse_line(fixture_lines(name)[index]).obj


def item(name: str, index: int) -> dict:
    return obj(name, index)["item"]


def steps(name: str, index: int) -> list[dict]:
    return [{"text": s["text"], "completed": s["completed"]} for s in item(name, index)["items"]]


def fold_fixture(name: str, model: str | None = None, ctx: FoldContext = CTX, meta: dict | None = None,
                 **options: Any) -> FoldResult:
    start = {"prompt": PROMPT} | ({"model": model} if model else {}) | (meta or {})
    return fold(new_state(RUN), fixture_entries(name, meta=start, **options), ctx)


def root_of(result: FoldResult) -> Observation:
    roots = [o for o in result.observations if o.type == "agent"]
    assert len(roots) == 1
    return roots[0]


def only(result: FoldResult, type_: str, name: str | None = None) -> Observation:
    found = [o for o in result.observations if o.type == type_ and (name is None or o.name == name)]
    assert len(found) == 1, [(o.type, o.name) for o in result.observations]
    return found[0]


def scores_of(result: FoldResult) -> dict[str, Any]:
    return {s.name: s.value for s in result.scores}


def cost(buckets: dict[str, int], rates: dict[str, float]) -> dict[str, float]:
    """USD per bucket with tokens: tokens * (USD per 1M) / 1M."""
    return {bucket: tokens * rates[bucket] / M for bucket, tokens in buckets.items() if bucket != "total" and tokens}


def assert_cost(actual: dict[str, float] | None, expected: dict[str, float], total: float) -> None:
    assert actual is not None
    assert set(actual) == set(expected) | {"total"}
    for bucket, usd in expected.items():
        assert actual[bucket] == pytest.approx(usd, abs=MICRO), bucket
    assert sum(expected.values()) == pytest.approx(total, abs=MICRO)  # the hand-written total agrees
    assert actual["total"] == pytest.approx(total, abs=MICRO)


class Containing(str):
    """Equal to any string that contains it (for inputs whose exact form is tested elsewhere)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and str(self) in other

    __hash__ = str.__hash__


@dataclass(frozen=True)
class Expect:
    """One observation under the root, written from the fixture: start/end are fixture line indexes."""

    type: str
    name: str
    start: int
    end: int
    input: Any = None
    output: Any = None
    level: str = "DEFAULT"
    status: str | None = None

    def row(self) -> tuple:
        return (line_ts(self.start), line_ts(self.end), self.type, self.name, self.level, self.status,
                self.input, self.output)


def row(o: Observation) -> tuple:
    return (o.start_us, o.end_us, o.type, o.name, o.level, o.status_message, o.input, o.output)


def _sorted(rows: list[tuple]) -> list[tuple]:
    return sorted(rows, key=lambda r: (r[0], r[1], r[2], r[3]))


# ---- every fixture, observation by observation --------------------------------------------------

FAILURE_JSON = obj(F_TURN_FAILED, 3)["error"]["message"]  # Codex passes the provider's JSON through
FAILURE = json.loads(FAILURE_JSON)["error"]["message"]  # status messages show the provider's message

EXPECTED: dict[str, list[Expect]] = {
    F_FULL: [
        Expect("event", "reasoning", 2, 2, output=item(F_FULL, 2)["text"]),
        Expect("event", "plan", 3, 3, output=steps(F_FULL, 3)),  # started: 1 of 3 done
        Expect("tool", "command", 4, 5, input="/bin/bash -lc 'echo hello-from-mock && ls'",
               output="hello-from-mock\n"),
        Expect("event", "reasoning", 6, 6, output=item(F_FULL, 6)["text"]),
        Expect("tool", "file_change", 7, 8, input={"changes": [{"path": "/home/dev/project/hello.txt", "kind": "add"}]},
               output={"status": "completed"}),
        Expect("event", "plan", 9, 9, output=steps(F_FULL, 9)),  # updated: 3 of 3; line 13 repeats it
        Expect("tool", "web_search", 10, 11,
               input={"query": "langfuse codex integration",
                      "action": {"type": "search", "query": "langfuse codex integration"}}),
        Expect("event", "agent_message", 12, 12, output="All done: ran a command and created hello.txt."),
        Expect("generation", "turn 1", 1, 14, input=PROMPT, output="All done: ran a command and created hello.txt."),
    ],
    F_FAILED_CMD: [
        Expect("event", "reasoning", 2, 2, output=item(F_FAILED_CMD, 2)["text"]),
        Expect("tool", "command", 3, 4, input="/bin/bash -lc 'ls /nonexistent-dir'",
               output="ls: cannot access '/nonexistent-dir': No such file or directory\n",
               level="ERROR", status="exit code 2"),
        Expect("event", "agent_message", 5, 5, output="Ran the command; output was hello-from-mock."),
        Expect("generation", "turn 1", 1, 6, input=PROMPT, output="Ran the command; output was hello-from-mock."),
    ],
    F_MCP: [
        Expect("tool", "echo.say", 2, 3, input={"text": "hi from mock"},
               output={"content": [{"type": "text", "text": "echo: hi from mock"}],
                       "structured_content": {"echoed": "hi from mock"}}),
        Expect("event", "agent_message", 4, 4, output="The MCP tool answered."),
        Expect("generation", "turn 1", 1, 5, input=PROMPT, output="The MCP tool answered."),
    ],
    F_RESUME: [
        Expect("tool", "web_search", 2, 3,
               input={"query": "langfuse codex integration",
                      "action": {"type": "search", "query": "langfuse codex integration"}}),
        Expect("event", "agent_message", 4, 4, output="All done: ran a command and created hello.txt."),
        Expect("generation", "turn 1", 1, 5, input=PROMPT, output="All done: ran a command and created hello.txt."),
    ],
    F_TURN_FAILED: [
        # the `error` line right before turn.failed is the failure itself: ERROR, not WARNING
        Expect("event", "error", 2, 2, output=FAILURE_JSON, level="ERROR", status=FAILURE),
        Expect("generation", "turn 1", 1, 3, input=PROMPT, output=None, level="ERROR", status=FAILURE),
    ],
    F_098: [
        Expect("event", "reasoning", 2, 2, output=item(F_098, 2)["text"]),
        Expect("event", "plan", 3, 3, output=steps(F_098, 3)),
        Expect("tool", "command", 4, 5, input="/bin/bash -lc 'echo hello-from-mock && ls'", output="hello-from-mock\n"),
        Expect("event", "reasoning", 6, 6, output=item(F_098, 6)["text"]),
        # no item.started for file_change before 0.120: start == end
        Expect("tool", "file_change", 7, 7, input={"changes": [{"path": "/home/dev/project/hello.txt", "kind": "add"}]},
               output={"status": "completed"}),
        Expect("event", "plan", 8, 8, output=steps(F_098, 8)),
        # started says {"query": "", "action": {"type": "other"}}; the completed item has the search
        Expect("tool", "web_search", 9, 10,
               input={"query": "langfuse codex integration",
                      "action": {"type": "search", "query": "langfuse codex integration"}}),
        Expect("event", "agent_message", 11, 11, output="All done: ran a command and created hello.txt."),
        Expect("generation", "turn 1", 1, 13, input=PROMPT, output="All done: ran a command and created hello.txt."),
    ],
    F_044: [
        Expect("event", "reasoning", 2, 2, output=item(F_044, 2)["text"]),
        Expect("event", "plan", 3, 3, output=steps(F_044, 3)),
        Expect("tool", "command", 4, 5, input="bash -lc 'echo hello-from-mock && ls'", output="hello-from-mock\n"),
        Expect("event", "reasoning", 6, 6, output=item(F_044, 6)["text"]),
        Expect("tool", "file_change", 7, 7, input={"changes": [{"path": "/home/dev/project/hello.txt", "kind": "add"}]},
               output={"status": "completed"}),
        Expect("event", "plan", 8, 8, output=steps(F_044, 8)),
        Expect("tool", "web_search", 9, 9, input={"query": "langfuse codex integration"}),  # completed only
        Expect("event", "agent_message", 10, 10, output="All done: ran a command and created hello.txt."),
        Expect("generation", "turn 1", 1, 12, input=PROMPT, output="All done: ran a command and created hello.txt."),
    ],
    F_DOCS: [
        Expect("event", "reasoning", 2, 2, output="**Searching for README files**"),
        Expect("tool", "command", 3, 4, input="bash -lc ls", output=item(F_DOCS, 4)["aggregated_output"]),
        Expect("event", "reasoning", 5, 5, output="**Checking repository root for README**"),
        Expect("event", "agent_message", 6, 6, output=item(F_DOCS, 6)["text"]),
        Expect("generation", "turn 1", 1, 7, input=PROMPT, output=item(F_DOCS, 6)["text"]),
    ],
    # Legacy: one generation per model request, from the previous request's token_count (or
    # task_started) to its own; the duplicated token_count lines of 0.42 add nothing.
    F_042: [
        Expect("event", "reasoning", 4, 4, output="**Planning the task**\n\nI will make a plan first."),
        Expect("event", "plan", 5, 5, output=[
            {"text": "Inspect the workspace", "completed": True, "status": "completed"},
            {"text": "Run a shell command", "completed": False, "status": "in_progress"},
            {"text": "Write hello.txt", "completed": False, "status": "pending"}]),
        Expect("generation", "model request 1", 2, 6, input=PROMPT),
        Expect("tool", "command", 8, 10, input=Containing("echo hello-from-mock && ls"), output="hello-from-mock\n"),
        Expect("generation", "model request 2", 6, 11),
        Expect("event", "reasoning", 13, 13, output="**Writing the file**\n\nApplying a patch."),
        Expect("tool", "file_change", 14, 15, input={"changes": [{"path": "/home/dev/project/hello.txt", "kind": "add"}]},
               output={"success": True, "stdout": "Success. Updated the following files:\nA hello.txt\n", "stderr": ""}),
        Expect("generation", "model request 3", 11, 17),
        Expect("event", "plan", 20, 20, output=[
            {"text": "Inspect the workspace", "completed": True, "status": "completed"},
            {"text": "Run a shell command", "completed": True, "status": "completed"},
            {"text": "Write hello.txt", "completed": True, "status": "completed"}]),
        Expect("generation", "model request 4", 17, 21),
        Expect("tool", "web_search", 24, 25, input={"query": "langfuse codex integration"}),
        Expect("event", "agent_message", 26, 26, output="All done: ran a command and created hello.txt."),
        Expect("generation", "model request 5", 21, 27),
    ],
    F_020: [
        Expect("event", "reasoning", 3, 3, output="**Planning the task**\n\nI will make a plan first."),
        Expect("event", "plan", 4, 4, output=[
            {"text": "Inspect the workspace", "completed": True, "status": "completed"},
            {"text": "Run a shell command", "completed": False, "status": "in_progress"},
            {"text": "Write hello.txt", "completed": False, "status": "pending"}]),
        Expect("generation", "model request 1", 2, 5, input=PROMPT),
        Expect("tool", "command", 6, 8, input=Containing("echo hello-from-mock && ls"), output="hello-from-mock\n"),
        Expect("generation", "model request 2", 5, 9),
        Expect("event", "reasoning", 10, 10, output="**Writing the file**\n\nApplying a patch."),
        Expect("tool", "file_change", 11, 14, input={"changes": [{"path": "/home/dev/project/hello.txt", "kind": "add"}]},
               output={"success": True, "stdout": "Success. Updated the following files:\nA hello.txt\n", "stderr": ""}),
        Expect("generation", "model request 3", 9, 16),
        Expect("event", "plan", 18, 18, output=[
            {"text": "Inspect the workspace", "completed": True, "status": "completed"},
            {"text": "Run a shell command", "completed": True, "status": "completed"},
            {"text": "Write hello.txt", "completed": True, "status": "completed"}]),
        Expect("generation", "model request 4", 16, 19),
        Expect("event", "agent_message", 21, 21, output="All done: ran a command and created hello.txt."),
        Expect("generation", "model request 5", 19, 22),
    ],
}

# type -> count, written from the table above so a mistake in either shows
EXPECTED_COUNTS = {
    F_FULL: {"agent": 1, "generation": 1, "tool": 3, "event": 5},
    F_FAILED_CMD: {"agent": 1, "generation": 1, "tool": 1, "event": 2},
    F_MCP: {"agent": 1, "generation": 1, "tool": 1, "event": 1},
    F_RESUME: {"agent": 1, "generation": 1, "tool": 1, "event": 1},
    F_TURN_FAILED: {"agent": 1, "generation": 1, "event": 1},
    F_098: {"agent": 1, "generation": 1, "tool": 3, "event": 5},
    F_044: {"agent": 1, "generation": 1, "tool": 3, "event": 5},
    F_DOCS: {"agent": 1, "generation": 1, "tool": 1, "event": 3},
    F_042: {"agent": 1, "generation": 5, "tool": 3, "event": 5},
    F_020: {"agent": 1, "generation": 5, "tool": 2, "event": 5},
}

# exit code of the real run, root level and status, final agent message
ROOTS: dict[str, tuple[int, str, str | None, str | None]] = {
    F_FULL: (0, "DEFAULT", None, "All done: ran a command and created hello.txt."),
    F_FAILED_CMD: (0, "DEFAULT", None, "Ran the command; output was hello-from-mock."),  # a failed command is not a failed run
    F_MCP: (0, "DEFAULT", None, "The MCP tool answered."),
    F_RESUME: (0, "DEFAULT", None, "All done: ran a command and created hello.txt."),
    F_TURN_FAILED: (1, "ERROR", FAILURE, None),
    F_098: (0, "DEFAULT", None, "All done: ran a command and created hello.txt."),
    F_044: (0, "DEFAULT", None, "All done: ran a command and created hello.txt."),
    F_DOCS: (0, "DEFAULT", None, item(F_DOCS, 6)["text"]),
    F_042: (0, "DEFAULT", None, "All done: ran a command and created hello.txt."),  # no terminal event: normal
    F_020: (0, "DEFAULT", None, "All done: ran a command and created hello.txt."),
}

# success, failed_commands, files_changed, errors
SCORES = {
    F_FULL: (1, 0, 1, 0),
    F_FAILED_CMD: (1, 1, 0, 0),
    F_MCP: (1, 0, 0, 0),
    F_RESUME: (1, 0, 0, 0),
    F_TURN_FAILED: (0, 0, 0, 1),
    F_098: (1, 0, 1, 0),
    F_044: (1, 0, 1, 0),
    F_DOCS: (1, 0, 0, 0),
    F_042: (1, 0, 1, 0),
    F_020: (1, 0, 1, 0),
}


def fold_real(name: str, **kwargs: Any) -> FoldResult:
    return fold_fixture(name, exit_code=ROOTS[name][0], **kwargs)


@pytest.mark.parametrize("name", ALL)
def test_observations_of_every_fixture(name):
    result = fold_real(name)
    root = root_of(result)
    children = [o for o in result.observations if o is not root]
    assert _sorted([row(o) for o in children]) == _sorted([e.row() for e in EXPECTED[name]])
    assert Counter(o.type for o in result.observations) == EXPECTED_COUNTS[name]
    assert Counter(e.type for e in EXPECTED[name]) + Counter(agent=1) == EXPECTED_COUNTS[name]
    # one trace; the root has no parent and everything else hangs under it
    assert {o.trace_id for o in result.observations} == {TRACE}
    assert root.parent_id is None
    assert {o.parent_id for o in children} == {root.id}
    assert len({o.id for o in result.observations}) == len(result.observations)


@pytest.mark.parametrize("name", ALL)
def test_root_of_every_fixture(name):
    exit_code, level, status, final = ROOTS[name]
    root = root_of(fold_real(name))
    assert (root.name, root.type) == ("codex exec", "agent")
    assert (root.start_us, root.end_us) == (ts_of(0), end_ts(name))  # start entry .. end entry
    assert root.input == PROMPT
    assert root.output == final
    assert (root.level, root.status_message) == (level, status)
    assert root.metadata["exit_code"] == exit_code
    assert root.metadata["end_reason"] == "exited"
    assert root.metadata["format"] == ("legacy" if name in LEGACY else "current")
    assert root.trace.metadata["exit_code"] == exit_code


@pytest.mark.parametrize("name", ALL)
def test_derived_scores_of_every_fixture(name):
    result = fold_real(name)
    success, failed_commands, files_changed, errors = SCORES[name]
    assert scores_of(result) == {"success": success, "failed_commands": failed_commands,
                                 "files_changed": files_changed, "errors": errors}
    for score in result.scores:
        assert score.id == f"{TRACE}-{score.name}"  # stable: re-sending overwrites
        assert score.trace_id == TRACE
        assert score.timestamp_us == ts_of(0)  # fixed, the run's start, so the date never changes
        assert score.data_type == ("BOOLEAN" if score.name == "success" else "NUMERIC")


@pytest.mark.parametrize("name", ALL)
def test_root_counters_of_every_fixture(name):
    expected_tools = Counter(e.name for e in EXPECTED[name] if e.type == "tool")
    counters = root_of(fold_real(name)).metadata["counters"]
    assert counters["commands"] == expected_tools["command"]
    assert counters["file_changes"] == expected_tools["file_change"]
    assert counters["web_searches"] == expected_tools["web_search"]
    assert counters["mcp_calls"] == expected_tools["echo.say"]
    assert counters["agent_messages"] == Counter(e.name for e in EXPECTED[name])["agent_message"]
    assert counters["failed_commands"] == SCORES[name][1]
    assert counters["errors"] == SCORES[name][3]
    for clean in ("warnings", "invalid_lines", "unknown_events", "truncated_lines", "late_entries", "lost_entries"):
        assert counters[clean] == 0, clean


# ---- tools: metadata ----------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "item_id", "exit_code", "status"), [
    (F_FULL, "item_2", 0, "completed"),
    (F_FAILED_CMD, "item_1", 2, "failed"),
    (F_098, "item_2", 0, "completed"),
    (F_044, "item_2", 0, "completed"),
    (F_DOCS, "item_1", 0, "completed"),
])
def test_command_metadata(name, item_id, exit_code, status):
    command = only(fold_real(name), "tool", "command")
    assert command.metadata["item_id"] == item_id
    assert command.metadata["exit_code"] == exit_code
    assert command.metadata["status"] == status


@pytest.mark.parametrize("name", LEGACY)
def test_legacy_command_metadata(name):
    command = only(fold_real(name), "tool", "command")
    assert command.metadata == {"call_id": "call_mock_1", "exit_code": 0, "cwd": "/home/dev/project"}


@pytest.mark.parametrize("name", LEGACY)
def test_legacy_command_input_is_the_command_that_ran(name):
    assert only(fold_real(name), "tool", "command").input == "bash -lc 'echo hello-from-mock && ls'"


def test_mcp_metadata():
    tool = only(fold_real(F_MCP), "tool")
    assert tool.metadata == {"item_id": "item_0", "status": "completed", "server": "echo", "tool": "say"}


@pytest.mark.parametrize(("name", "item_id"), [(F_FULL, "item_5"), (F_098, "item_5"), (F_RESUME, "item_0")])
def test_web_search_started_and_completed_pair_with_the_duplicate_id(name, item_id):
    result = fold_real(name)
    search = only(result, "tool", "web_search")
    lines = fixture_lines(name)
    started = next(i for i, t in enumerate(lines) if "item.started" in t and "web_search" in t)
    assert search.start_us == line_ts(started) < search.end_us == line_ts(started + 1)
    assert search.metadata["item_id"] == item_id  # the first "id" pairs started with completed
    assert search.metadata["call_id"] == "ws_mock_4"  # the second is kept
    assert "_duplicate_keys" not in json.dumps(search.model_dump())
    assert root_of(result).metadata["counters"]["warnings"] == 0  # nothing left open, nothing unknown


def test_web_search_of_044_has_no_call_id():
    assert "call_id" not in only(fold_real(F_044), "tool", "web_search").metadata


# ---- todo_list: one plan event per distinct plan state ------------------------------------------


@pytest.mark.parametrize("name", [F_FULL, F_098, F_044])
def test_plan_events_per_distinct_state(name):
    lines = fixture_lines(name)
    todo_lines = [i for i, t in enumerate(lines) if '"todo_list"' in t]
    assert [obj(name, i)["type"] for i in todo_lines] == ["item.started", "item.updated", "item.completed"]
    assert steps(name, todo_lines[2]) == steps(name, todo_lines[1])  # Codex repeats the last state
    plans = [o for o in fold_real(name).observations if o.name == "plan"]
    assert [p.start_us for p in plans] == [line_ts(todo_lines[0]), line_ts(todo_lines[1])]
    assert [p.output for p in plans] == [steps(name, todo_lines[0]), steps(name, todo_lines[1])]
    assert [p.metadata for p in plans] == [{"completed": 1, "total": 3}, {"completed": 3, "total": 3}]
    assert len({p.id for p in plans}) == 2


def test_completed_plan_that_differs_from_the_last_update_is_a_new_event():
    lines = fixture_lines(F_FULL)
    changed = item(F_FULL, 13) | {"items": [{"text": "Inspect the workspace", "completed": True},
                                             {"text": "Run a shell command", "completed": True},
                                             {"text": "Write hello.txt", "completed": False}]}
    lines[13] = json.dumps({"type": "item.completed", "item": changed})
    plans = [o for o in fold(new_state(RUN), run_entries(lines), CTX).observations if o.name == "plan"]
    assert [p.start_us for p in plans] == [line_ts(3), line_ts(9), line_ts(13)]
    assert plans[2].metadata == {"completed": 2, "total": 3}


# ---- usage and cost -----------------------------------------------------------------------------

# Exclusive buckets from each fixture's turn.completed usage:
#   input = input_tokens - cached_input_tokens - cache_write_input_tokens
#   output = output_tokens - reasoning_output_tokens, total = input_tokens + output_tokens
USAGE = {
    F_FULL: {"input": 6000 - 3200 - 0, "input_cached_tokens": 3200, "output": 260 - 100,
             "output_reasoning_tokens": 100, "total": 6000 + 260},
    F_FAILED_CMD: {"input": 2100 - 800 - 0, "input_cached_tokens": 800, "output": 101 - 40,
                   "output_reasoning_tokens": 40, "total": 2100 + 101},
    F_MCP: {"input": 2100 - 800 - 0, "input_cached_tokens": 800, "output": 101 - 40,
            "output_reasoning_tokens": 40, "total": 2100 + 101},
    # without a thread baseline, the thread-cumulative usage as Codex reports it
    F_RESUME: {"input": 7400 - 4000 - 0, "input_cached_tokens": 4000, "output": 314 - 120,
               "output_reasoning_tokens": 120, "total": 7400 + 314},
    F_098: {"input": 6000 - 3200, "input_cached_tokens": 3200, "output": 260 - 0,
            "output_reasoning_tokens": 0, "total": 6000 + 260},
    F_044: {"input": 6000 - 3200, "input_cached_tokens": 3200, "output": 260 - 0,
            "output_reasoning_tokens": 0, "total": 6000 + 260},
    F_DOCS: {"input": 24763 - 24448, "input_cached_tokens": 24448, "output": 122 - 0,
             "output_reasoning_tokens": 0, "total": 24763 + 122},
}
# the same on gpt-5-codex: (input * 1.25 + cached * 0.125 + (output + reasoning) * 10.00) / 1M
GPT_5_CODEX_TOTALS = {
    F_FULL: ((6000 - 3200) * 1.25 + 3200 * 0.125 + (160 + 100) * 10.00) / M,
    F_FAILED_CMD: ((2100 - 800) * 1.25 + 800 * 0.125 + (61 + 40) * 10.00) / M,
    F_MCP: ((2100 - 800) * 1.25 + 800 * 0.125 + (61 + 40) * 10.00) / M,
    F_RESUME: ((7400 - 4000) * 1.25 + 4000 * 0.125 + (194 + 120) * 10.00) / M,
    F_098: ((6000 - 3200) * 1.25 + 3200 * 0.125 + 260 * 10.00) / M,
    F_044: ((6000 - 3200) * 1.25 + 3200 * 0.125 + 260 * 10.00) / M,
    F_DOCS: ((24763 - 24448) * 1.25 + 24448 * 0.125 + 122 * 10.00) / M,
}


def test_hand_written_usage_matches_the_fixture_lines():
    for name, buckets in USAGE.items():
        usage = obj(name, -1)["usage"]
        assert buckets["total"] == usage["input_tokens"] + usage["output_tokens"], name
        assert buckets["input_cached_tokens"] == usage["cached_input_tokens"], name


@pytest.mark.parametrize("name", sorted(USAGE))
def test_turn_usage_and_cost_on_a_priced_model(name):
    generation = only(fold_real(name, model="gpt-5-codex"), "generation")
    assert generation.model == "gpt-5-codex"
    assert generation.usage_details == USAGE[name]
    assert_cost(generation.cost_details, cost(USAGE[name], GPT_5_CODEX), GPT_5_CODEX_TOTALS[name])
    assert generation.metadata["pricing_model"] == "gpt-5-codex"
    assert generation.metadata["pricing_tier"] == "standard"
    assert generation.metadata["pricing_version"] == PRICE_TABLE_VERSION
    assert generation.metadata["pricing_source"].startswith("https://developers.openai.com/api/docs/models/gpt-5-codex")


def test_full_run_cost_by_hand():
    generation = only(fold_real(F_FULL, model="gpt-5-codex"), "generation")
    assert generation.cost_details == pytest.approx({
        "input": 2800 * 1.25 / M,  # $0.0035
        "input_cached_tokens": 3200 * 0.125 / M,  # $0.0004
        "output": 160 * 10.00 / M,  # $0.0016
        "output_reasoning_tokens": 100 * 10.00 / M,  # $0.0010
        "total": (3500 + 400 + 1600 + 1000) / M,  # $0.0065
    }, abs=MICRO)


def test_another_priced_model_and_a_provider_prefix():
    for model in ("gpt-5.1-codex-mini", "openai/gpt-5.1-codex-mini", "GPT-5.1-Codex-Mini"):
        generation = only(fold_real(F_FAILED_CMD, model=model), "generation")
        assert generation.model == model  # the name as given; the table match is in metadata
        assert generation.metadata["pricing_model"] == "gpt-5.1-codex-mini"
        assert_cost(generation.cost_details, cost(USAGE[F_FAILED_CMD], GPT_5_1_CODEX_MINI),
                    (1300 * 0.25 + 800 * 0.025 + (61 + 40) * 2.00) / M)


def test_priority_service_tier_from_meta():
    generation = only(fold_real(F_FULL, model="gpt-5-codex", meta={"service_tier": "priority"}), "generation")
    assert generation.metadata["pricing_tier"] == "priority"
    assert_cost(generation.cost_details, cost(USAGE[F_FULL], GPT_5_CODEX_PRIORITY),
                (2800 * 2.50 + 3200 * 0.25 + (160 + 100) * 20.00) / M)


def test_cache_writes_are_their_own_bucket():
    lines = fixture_lines(F_FULL)
    lines[14] = json.dumps({"type": "turn.completed", "usage": {
        "input_tokens": 10000, "cached_input_tokens": 4000, "cache_write_input_tokens": 1000,
        "output_tokens": 500, "reasoning_output_tokens": 200}})
    result = fold(new_state(RUN), run_entries(lines, meta={"model": "gpt-5.6-terra"}), CTX)
    generation = only(result, "generation")
    expected = {"input": 10000 - 4000 - 1000, "input_cached_tokens": 4000, "input_cache_creation": 1000,
                "output": 500 - 200, "output_reasoning_tokens": 200, "total": 10000 + 500}
    assert generation.usage_details == expected
    assert_cost(generation.cost_details, cost(expected, GPT_5_6_TERRA),
                (5000 * 2 + 4000 * 0.2 + 1000 * 2.5 + 300 * 12 + 200 * 12) / M)


@pytest.mark.parametrize("name", sorted(USAGE))
def test_unpriced_model_keeps_usage_without_cost(name):
    # the 0.169 runs really used `mock-model`, which no price table knows
    generation = only(fold_real(name, model="mock-model"), "generation")
    assert generation.model == "mock-model"
    assert generation.usage_details == USAGE[name]
    assert generation.cost_details is None
    assert generation.metadata["pricing_source"].startswith("none")
    assert "pricing_model" not in generation.metadata


@pytest.mark.parametrize("name", sorted(USAGE))
def test_no_model_at_all_keeps_usage_and_says_why(name):
    generation = only(fold_real(name), "generation")
    assert generation.model is None
    assert generation.usage_details == USAGE[name]
    assert generation.cost_details is None
    assert "--model" in generation.metadata["model_note"]


@pytest.mark.parametrize("name", CURRENT)
def test_root_usage_is_the_runs_usage(name):
    usage = obj(name, -1).get("usage")
    root = root_of(fold_real(name))
    if usage is None:  # turn.failed carries none
        assert root.metadata["usage"] == Usage().model_dump()
    else:
        assert root.metadata["usage"] == Usage.model_validate(usage).model_dump()


# legacy: (input_tokens, cached_input_tokens, output_tokens, reasoning_output_tokens) per model request,
# from `last_token_usage` (0.42) or the flat token_count (0.20)
LEGACY_REQUESTS = [(1000, 0, 50, 20), (1100, 800, 51, 20), (1200, 800, 52, 20), (1300, 800, 53, 20),
                   (1400, 800, 54, 20)]


@pytest.mark.parametrize("name", LEGACY)
def test_legacy_usage_per_request_deduplicated_and_priced_from_the_header_model(name):
    result = fold_real(name)  # no model in meta: the header line names gpt-5-codex
    generations = sorted((o for o in result.observations if o.type == "generation"), key=lambda o: o.start_us)
    assert [g.name for g in generations] == [f"model request {k}" for k in range(1, 6)]
    for generation, (inp, cached, out, reasoning) in zip(generations, LEGACY_REQUESTS):
        expected = {"input": inp - cached, "input_cached_tokens": cached, "output": out - reasoning,
                    "output_reasoning_tokens": reasoning, "total": inp + out}
        assert generation.model == "gpt-5-codex"
        assert generation.usage_details == expected
        assert_cost(generation.cost_details, cost(expected, GPT_5_CODEX),
                    ((inp - cached) * 1.25 + cached * 0.125 + out * 10.00) / M)
        assert generation.metadata["pricing_model"] == "gpt-5-codex"
    # the run's usage is the sum of the requests, which is what 0.42's last total_token_usage says
    root = root_of(result)
    assert root.metadata["usage"] == {"input_tokens": 6000, "cached_input_tokens": 3200, "output_tokens": 260,
                                      "reasoning_output_tokens": 100, "cache_write_input_tokens": 0}
    assert sum(r[0] for r in LEGACY_REQUESTS) == 6000
    assert root.trace.metadata["model"] == "gpt-5-codex"
    assert root.trace.metadata["cwd"] == "/home/dev/project"  # from the header's workdir


def test_042_prints_every_token_count_twice():
    lines = fixture_lines(F_042)
    token_counts = [obj(F_042, i)["msg"] for i, t in enumerate(lines) if '"token_count"' in t]
    with_info = [m for m in token_counts if m.get("info")]
    assert len(with_info) == 9  # 4 pairs and the last one single: 5 requests
    assert len({json.dumps(m["info"]["total_token_usage"]) for m in with_info}) == 5


def test_legacy_model_in_meta_wins_over_the_header():
    result = fold_real(F_042, model="gpt-5.1-codex-mini")
    assert {o.model for o in result.observations if o.type == "generation"} == {"gpt-5.1-codex-mini"}


def test_legacy_prompt_comes_from_the_header_when_meta_has_none():
    result = fold(new_state(RUN), fixture_entries(F_020), CTX)
    assert root_of(result).input == "Run a command and create hello.txt"
    result = fold(new_state(RUN), fixture_entries(F_020, meta={"prompt": "from the runner"}), CTX)
    assert root_of(result).input == "from the runner"


@pytest.mark.parametrize("name", LEGACY)
def test_legacy_non_zero_exit_is_an_error(name):
    root = root_of(fold_fixture(name, exit_code=1))
    assert (root.level, root.status_message) == ("ERROR", "codex exited with code 1")


def test_legacy_turn_aborted_makes_the_root_an_error():
    lines = fixture_lines(F_042)[:12] + ['{"id":"0","msg":{"type":"turn_aborted","reason":"interrupted"}}']
    result = fold(new_state(RUN), run_entries(lines, exit_code=0), CTX)
    root = root_of(result)
    assert root.level == "ERROR"
    assert "interrupted" in root.status_message
    assert scores_of(result)["success"] == 0


# ---- resumed thread: only this run's tokens ------------------------------------------------------

THREAD = obj(F_RESUME, 0)["thread_id"]
# the first run of the thread (rollout_0.169.0_resumed_two_turns.jsonl, last token_count of its first
# turn; the same numbers as real_run_0.169.0_full.jsonl's turn.completed)
FIRST_RUN = Usage(input_tokens=6000, cached_input_tokens=3200, output_tokens=260, reasoning_output_tokens=100)
RESUMED_CUMULATIVE = Usage(input_tokens=7400, cached_input_tokens=4000, output_tokens=314,
                           reasoning_output_tokens=120)


def test_the_first_runs_numbers_are_in_the_rollout():
    rollout = [json.loads(t) for t in fixture_lines("rollout_0.169.0_resumed_two_turns.jsonl")]
    totals = [r["payload"]["info"]["total_token_usage"] for r in rollout
              if r["type"] == "event_msg" and r["payload"].get("type") == "token_count" and r["payload"].get("info")]
    counts = ("input_tokens", "cached_input_tokens", "output_tokens", "reasoning_output_tokens",
              "cache_write_input_tokens")
    assert {k: totals[-2][k] for k in counts} == FIRST_RUN.model_dump()  # end of the first run
    assert {k: totals[-1][k] for k in counts} == RESUMED_CUMULATIVE.model_dump()  # end of the resumed one
    assert rollout[0]["payload"]["id"] == THREAD
    assert THREAD.startswith("01a21390-35f9-")


def test_resumed_thread_reports_only_the_new_tokens():
    asked: list[str] = []

    def baseline(thread: str) -> Usage | None:
        asked.append(thread)
        return FIRST_RUN if thread == THREAD else None

    result = fold_real(F_RESUME, model="gpt-5-codex", ctx=FoldContext(prices=PRICES, thread_baseline=baseline))
    generation = only(result, "generation")
    new = {"input": (7400 - 6000) - (4000 - 3200), "input_cached_tokens": 4000 - 3200,
           "output": (314 - 260) - (120 - 100), "output_reasoning_tokens": 120 - 100, "total": 1400 + 54}
    assert generation.usage_details == new
    assert_cost(generation.cost_details, cost(new, GPT_5_CODEX), (600 * 1.25 + 800 * 0.125 + 54 * 10.00) / M)
    assert generation.metadata["usage_reported_by_codex"] == RESUMED_CUMULATIVE.model_dump()
    assert asked == [THREAD]
    assert result.thread_totals == {THREAD: RESUMED_CUMULATIVE}  # remembered for the next resume
    assert root_of(result).metadata["usage"] == RESUMED_CUMULATIVE.minus(FIRST_RUN).model_dump()


def test_resumed_thread_without_a_baseline_reports_usage_as_is():
    result = fold_real(F_RESUME)
    generation = only(result, "generation")
    assert generation.usage_details == USAGE[F_RESUME]
    assert "usage_reported_by_codex" not in generation.metadata
    assert result.thread_totals == {THREAD: RESUMED_CUMULATIVE}


def test_baseline_that_does_not_fit_is_ignored():
    larger = Usage(input_tokens=9000, cached_input_tokens=100, output_tokens=10)  # counters would go down
    ctx = FoldContext(prices=PRICES, thread_baseline=lambda thread: larger)
    assert only(fold_real(F_RESUME, ctx=ctx), "generation").usage_details == USAGE[F_RESUME]


def test_first_run_of_a_thread_records_its_total():
    result = fold_real(F_FULL)
    assert result.thread_totals == {obj(F_FULL, 0)["thread_id"]: FIRST_RUN}


def test_before_098_usage_is_per_run_and_no_baseline_is_used():
    ctx = FoldContext(prices=PRICES, thread_baseline=lambda thread: Usage(input_tokens=1, output_tokens=1))
    result = fold_real(F_044, ctx=ctx, meta={"codex_version": "0.44.0"})
    assert only(result, "generation").usage_details == USAGE[F_044]
    assert result.thread_totals == {}


def test_thread_total_is_returned_once_in_chunked_folds():
    entries = fixture_entries(F_RESUME, meta={"prompt": PROMPT})
    ctx = FoldContext(prices=PRICES, thread_baseline=lambda thread: FIRST_RUN)
    first = fold(new_state(RUN), entries[:4], ctx)
    second = fold(first.state, entries[4:], ctx)
    assert first.thread_totals == {}
    assert second.thread_totals == {THREAD: RESUMED_CUMULATIVE}


# ---- errors, warnings and failures ---------------------------------------------------------------


def synthetic(lines: list[str], **options: Any) -> FoldResult:
    return fold(new_state(RUN), run_entries(lines, **options), CTX)


def test_error_lines_are_warnings_except_the_one_before_turn_failed():
    result = synthetic([
        '{"type":"thread.started","thread_id":"t-1"}',
        '{"type":"turn.started"}',
        '{"type":"error","message":"Reconnecting... 1/2 (stream disconnected)"}',
        '{"type":"error","message":"Reconnecting... 2/2 (stream disconnected)"}',
        '{"type":"error","message":"stream disconnected before completion\\nretry later"}',
        '{"type":"turn.failed","error":{"message":"stream disconnected before completion"}}',
    ], exit_code=1)
    errors = sorted((o for o in result.observations if o.name == "error"), key=lambda o: o.start_us)
    assert [(e.start_us, e.level) for e in errors] == [(line_ts(2), "WARNING"), (line_ts(3), "WARNING"),
                                                      (line_ts(4), "ERROR")]
    assert errors[0].status_message == "Reconnecting... 1/2 (stream disconnected)"
    assert errors[2].status_message == "stream disconnected before completion"  # first line only
    assert errors[2].output == "stream disconnected before completion\nretry later"
    counters = root_of(result).metadata["counters"]
    assert (counters["warnings"], counters["errors"]) == (2, 1)
    assert scores_of(result)["errors"] == 1  # the error line and turn.failed are one failure


def test_error_lines_of_a_completed_turn_are_all_warnings():
    lines = fixture_lines(F_FULL)
    lines.insert(2, '{"type":"error","message":"Reconnecting... 1/2"}')
    lines.insert(14, '{"type":"error","message":"model rerouted"}')  # right before turn.completed
    result = synthetic(lines)
    errors = [o for o in result.observations if o.name == "error"]
    assert [e.level for e in errors] == ["WARNING", "WARNING"]
    assert root_of(result).level == "DEFAULT"
    assert scores_of(result)["errors"] == 0


def test_turn_failed_without_an_error_line():
    result = synthetic(['{"type":"thread.started","thread_id":"t-1"}', '{"type":"turn.started"}',
                        '{"type":"turn.failed","error":{"message":"quota exceeded"}}'], exit_code=1)
    assert only(result, "generation").level == "ERROR"
    assert root_of(result).status_message == "quota exceeded"
    assert scores_of(result)["errors"] == 1
    assert not [o for o in result.observations if o.type == "event"]


def test_item_error_is_a_warning_event():
    lines = fixture_lines(F_FULL)
    lines.insert(2, '{"type":"item.completed","item":{"id":"item_99","type":"error","message":"model rerouted: a -> b"}}')
    warning = only(synthetic(lines), "event", "warning")
    assert (warning.level, warning.status_message, warning.start_us) == ("WARNING", "model rerouted: a -> b",
                                                                         line_ts(2))


@pytest.mark.parametrize(("item_json", "name", "level", "status", "output"), [
    ('{"id":"item_7","type":"mcp_tool_call","server":"gh","tool":"search","arguments":{"q":"x"},"result":null,'
     '"error":{"message":"tool exploded"},"status":"failed"}', "gh.search", "ERROR", "tool exploded",
     {"error": "tool exploded"}),
    ('{"id":"item_7","type":"command_execution","command":"rm -rf /","aggregated_output":"","exit_code":null,'
     '"status":"declined"}', "command", "ERROR", "declined", ""),
    ('{"id":"item_7","type":"file_change","changes":[{"path":"/x","kind":"update"}],"status":"failed"}',
     "file_change", "ERROR", "patch failed", {"status": "failed"}),
    ('{"id":"item_7","type":"collab_tool_call","tool":"spawn_agent","sender_thread_id":"a","receiver_thread_ids":["b"],'
     '"prompt":"go","agents_states":{"b":"running"},"status":"completed"}', "subagent.spawn_agent", "DEFAULT", None,
     {"b": "running"}),
])
def test_other_tool_outcomes(item_json, name, level, status, output):
    lines = fixture_lines(F_MCP)
    lines.insert(4, '{"type":"item.completed","item":%s}' % item_json)
    tool = only(synthetic(lines), "tool", name)
    assert (tool.level, tool.status_message, tool.output) == (level, status, output)
    assert tool.start_us == tool.end_us == line_ts(4)


def test_declined_command_counts_as_failed():
    lines = fixture_lines(F_MCP)
    lines.insert(4, '{"type":"item.completed","item":{"id":"item_7","type":"command_execution","command":"rm -rf /",'
                    '"aggregated_output":"","exit_code":null,"status":"declined"}}')
    assert scores_of(synthetic(lines))["failed_commands"] == 1


def test_long_command_output_keeps_head_and_tail():
    output = "".join(f"line {n:04d}\n" for n in range(100))  # 1,000 characters
    lines = fixture_lines(F_FULL)
    lines[5] = json.dumps({"type": "item.completed", "item": item(F_FULL, 5) | {"aggregated_output": output}})
    result = fold(new_state(RUN), run_entries(lines), FoldContext(prices=PRICES, max_output_chars=100))
    shown = only(result, "tool", "command").output
    head, tail = 100 * 2 // 3, 100 - 100 * 2 // 3  # two thirds of the limit from the start, the rest from the end
    assert shown.startswith(output[:head]) and shown.endswith(output[-tail:])
    assert f"{len(output) - 100} characters cut" in shown
    assert output[head:-tail] not in shown


# ---- runs that end without a terminal event ------------------------------------------------------


def test_stream_ending_without_terminal_event_is_aborted():
    lines = fixture_lines(F_FULL)[:5]  # up to item.started of the command
    result = synthetic(lines, exit_code=0)
    root = root_of(result)
    assert root.level == "ERROR"
    assert root.status_message.startswith("aborted")
    assert "turn.completed" in root.status_message
    assert root.metadata["outcome"] == "aborted"
    assert root.end_us == ts_of(len(lines) + 1)
    command = only(result, "tool", "command")  # the open item is closed, marked incomplete
    assert (command.start_us, command.end_us) == (line_ts(4), ts_of(len(lines) + 1))
    assert command.level == "WARNING"
    assert command.metadata["incomplete"] is True
    assert "not completed" in command.status_message
    generation = only(result, "generation")
    assert (generation.level, generation.start_us, generation.end_us) == ("ERROR", line_ts(1), ts_of(len(lines) + 1))
    assert generation.usage_details is None
    assert scores_of(result)["success"] == 0


def test_idle_close_is_aborted_with_reason_idle():
    lines = fixture_lines(F_FULL)[:5]
    open_run = synthetic(lines, end=False)
    assert not any(o.type == "agent" for o in open_run.observations)
    assert open_run.scores == []
    at = ts_of(100)
    result = close(open_run.state, at, "idle", CTX)
    root = root_of(result)
    assert (root.level, root.end_us) == ("ERROR", at)
    assert root.status_message.startswith("aborted") and "idle" in root.status_message
    assert root.metadata["end_reason"] == "idle"
    assert root.metadata["exit_code"] is None
    command = only(result, "tool", "command")
    assert (command.end_us, command.metadata["incomplete"]) == (at, True)
    assert only(result, "generation").level == "ERROR"
    assert scores_of(result)["success"] == 0
    assert result.state.closed
    again = close(result.state, ts_of(200), "idle", CTX)
    assert (again.observations, again.scores) == ([], [])


def test_idle_close_after_turn_completed_is_not_an_error():
    result = close(synthetic(fixture_lines(F_FULL), end=False).state, ts_of(100), "idle", CTX)
    root = root_of(result)
    assert (root.level, root.metadata["outcome"], root.metadata["end_reason"]) == ("DEFAULT", "completed", "idle")
    assert scores_of(result)["success"] == 1


def test_stream_with_no_output_at_all():
    result = synthetic([], exit_code=0)
    root = root_of(result)
    assert root.level == "ERROR" and "no output" in root.status_message
    assert [o.type for o in result.observations] == ["agent"]


def test_legacy_idle_close_is_aborted():
    open_run = fold(new_state(RUN), fixture_entries(F_042, end=False), CTX)
    root = root_of(close(open_run.state, ts_of(100), "idle", CTX))
    assert root.level == "ERROR"
    assert "idle" in root.status_message


def test_non_zero_exit_and_signal_make_the_root_an_error():
    root = root_of(fold_fixture(F_FULL, exit_code=3))
    assert (root.level, root.status_message) == ("ERROR", "codex exited with code 3")
    result = fold_fixture(F_FULL, exit_code=None, signal=9)
    assert (root_of(result).level, root_of(result).status_message) == ("ERROR", "codex was killed by signal 9")
    assert scores_of(result)["success"] == 0


def test_tee_without_an_exit_code_relies_on_the_terminal_event():
    result = fold_fixture(F_FULL, exit_code=None, reason="eof")
    assert root_of(result).level == "DEFAULT"
    assert scores_of(result)["success"] == 1


# ---- bad input never stops a trace ----------------------------------------------------------------

BAD_LINES: list[tuple[str, str | bytes]] = [
    ("invalid_json", "this is not json {"),
    ("binary", b'{"type":"item.completed","item":{"id":"item_80","type":"agent_message","text":"\xff\xfe"}}'),
    ("truncated", "TRUNCATE"),  # replaced by a cut line below
    ("unknown_top_level", '{"type":"turn.progress","percent":50}'),
    ("unknown_item", '{"type":"item.completed","item":{"id":"item_90","type":"hologram","beam":{"color":"blue"}}}'),
    ("no_format", '{"futuristic":true}'),
]
HUGE_LINE = json.dumps({"type": "item.completed", "item": {"id": "item_70", "type": "reasoning", "text": "x" * 5000}})
CUT_AT = 100


def dirty_entries(name: str) -> tuple[list[Entry], dict[str, int]]:
    """The fixture with every kind of bad line inserted after turn.started; returns entries and bad seqs."""
    lines: list[str | bytes] = list(fixture_lines(name))
    insert_at = next(i for i, t in enumerate(lines) if "turn.started" in t or "task_started" in t) + 1
    for offset, (_, bad) in enumerate(BAD_LINES):
        lines.insert(insert_at + offset, bad)
    entries = run_entries(lines, meta={"prompt": PROMPT, "model": "gpt-5-codex"})
    seqs = {kind: insert_at + offset + 1 for offset, (kind, _) in enumerate(BAD_LINES)}
    cut = seqs["truncated"]
    entries[cut] = line_entry(RUN, cut, HUGE_LINE, ts_of(cut), max_bytes=CUT_AT)
    return entries, seqs


def content(o: Observation) -> str:
    """Everything but ids, times and the root's counters."""
    return json.dumps([o.type, o.name, o.input, o.output, o.level, o.status_message, o.model, o.usage_details,
                       o.cost_details, {k: v for k, v in o.metadata.items() if k != "counters"}], sort_keys=True)


@pytest.mark.parametrize("name", [F_FULL, F_TURN_FAILED, F_042, F_020])
def test_bad_lines_are_kept_and_counted_and_the_rest_is_unaffected(name):
    entries, seqs = dirty_entries(name)
    assert entries[seqs["binary"]].binary
    assert entries[seqs["truncated"]].trunc == len(HUGE_LINE.encode())
    dirty = fold(new_state(RUN), entries, CTX)
    clean = fold(new_state(RUN), fixture_entries(name, meta={"prompt": PROMPT, "model": "gpt-5-codex"}), CTX)
    by_start = {o.start_us: o for o in dirty.observations if o.type == "event"}

    invalid = by_start[ts_of(seqs["invalid_json"])]
    assert (invalid.name, invalid.level, invalid.output) == ("invalid_line", "WARNING", "this is not json {")
    assert invalid.status_message.startswith("not JSON")
    binary = by_start[ts_of(seqs["binary"])]
    assert (binary.name, binary.level, binary.status_message) == ("invalid_line", "WARNING", "not valid UTF-8")
    assert "\ufffd" in binary.output
    truncated = by_start[ts_of(seqs["truncated"])]
    assert (truncated.name, truncated.level) == ("invalid_line", "WARNING")
    assert truncated.status_message == f"line cut by the producer at {CUT_AT} of {len(HUGE_LINE.encode())} bytes"
    assert truncated.metadata["bytes"] == len(HUGE_LINE.encode())
    assert truncated.output == HUGE_LINE[:CUT_AT]
    top = by_start[ts_of(seqs["unknown_top_level"])]
    assert (top.name, top.output) == ("turn.progress", {"type": "turn.progress", "percent": 50})
    unknown_item = by_start[ts_of(seqs["unknown_item"])]
    assert unknown_item.name == "item:hologram"
    assert unknown_item.output["beam"] == {"color": "blue"}
    no_format = by_start[ts_of(seqs["no_format"])]
    assert no_format.output == {"futuristic": True}

    counters = root_of(dirty).metadata["counters"]
    assert counters["invalid_lines"] == 3  # not JSON, not UTF-8, cut
    assert counters["truncated_lines"] == 1
    assert counters["unknown_events"] == 3  # unknown top-level type, unknown item type, no known format
    assert counters["warnings"] == 3

    # everything else is what the clean run gives (ids and times shift with the inserted lines)
    bad_starts = {ts_of(seq) for seq in seqs.values()}
    rest = [o for o in dirty.observations if o.type != "agent" and o.start_us not in bad_starts]
    assert sorted(map(content, rest)) == sorted(content(o) for o in clean.observations if o.type != "agent")
    dirty_root, clean_root = root_of(dirty), root_of(clean)
    assert content(dirty_root) == content(clean_root)
    assert {o.parent_id for o in dirty.observations if o is not dirty_root} == {dirty_root.id}
    assert scores_of(dirty) == scores_of(clean)


def test_cut_completion_line_still_closes_its_item():
    lines = fixture_lines(F_FULL)
    entries = run_entries(lines)
    big = json.dumps({"type": "item.completed", "item": item(F_FULL, 5) | {"aggregated_output": "y" * 5000}},
                     separators=(",", ":"))  # compact, as Codex prints it
    entries[6] = line_entry(RUN, 6, big, ts_of(6), max_bytes=300)  # fixture line 5: the command's completion
    command = only(fold(new_state(RUN), entries, CTX), "tool", "command")
    assert command.end_us == line_ts(5)
    assert "the run ended while it was running" not in (command.status_message or "")


def test_a_line_the_producer_shrank_keeps_its_exit_code():
    """The producer shrinks an oversized JSON line by cutting its strings (trunc = original size):
    it still parses, so the command completes with its real exit code and status."""
    from codex_langfuse.producer.entries import shrink_json_line

    lines = fixture_lines(F_FAILED_CMD)
    done = json.loads(lines[4])
    done["item"]["aggregated_output"] = "z" * 50_000
    original = json.dumps(done, separators=(",", ":")).encode()
    shrunk = shrink_json_line(original, 2_000)
    entries = run_entries(lines)
    entries[5] = Entry(run=RUN, seq=5, ts=ts_of(5), kind="line", data=shrunk.decode(), trunc=len(original))
    result = fold(new_state(RUN), entries, CTX)
    command = only(result, "tool", "command")
    assert (command.level, command.status_message, command.metadata["exit_code"]) == ("ERROR", "exit code 2", 2)
    assert "characters cut by codex-langfuse" in command.output
    counters = root_of(result).metadata["counters"]
    assert (counters["truncated_lines"], counters["invalid_lines"]) == (1, 0)


def test_unknown_fields_on_tools_are_kept():
    lines = fixture_lines(F_FULL)
    lines[5] = json.dumps({"type": "item.completed", "item": item(F_FULL, 5) | {"duration_ms": 12, "sandbox": "x"}})
    command = only(synthetic(lines), "tool", "command")
    assert command.metadata["extra_fields"] == {"duration_ms": 12, "sandbox": "x"}


def test_unknown_fields_on_messages_are_kept():
    lines = fixture_lines(F_FULL)
    lines[2] = json.dumps({"type": "item.completed", "item": item(F_FULL, 2) | {"encrypted_content": "abc"}})
    lines[12] = json.dumps({"type": "item.completed", "item": item(F_FULL, 12) | {"phase": "final_answer"}})
    result = synthetic(lines)
    reasoning = next(o for o in result.observations if o.name == "reasoning" and o.start_us == line_ts(2))
    assert "abc" in json.dumps(reasoning.metadata)
    assert "final_answer" in json.dumps(only(result, "event", "agent_message").metadata)


def test_unknown_fields_on_turn_completed_are_kept():
    lines = fixture_lines(F_FULL)
    done = obj(F_FULL, 14)
    lines[14] = json.dumps(done | {"duration_ms": 4321, "usage": done["usage"] | {"audio_input_tokens": 7}})
    metadata = json.dumps(only(synthetic(lines), "generation").metadata)
    assert "4321" in metadata
    assert "audio_input_tokens" in metadata


def test_unknown_entry_kind_is_a_warning():
    entries = fixture_entries(F_MCP)
    odd = Entry(run=RUN, seq=len(entries) - 1, ts=ts_of(len(entries) - 1), kind="telemetry", data="{}")
    end = entries[-1].model_copy(update={"seq": len(entries), "ts": ts_of(len(entries))})
    result = fold(new_state(RUN), entries[:-1] + [odd, end], CTX)
    warning = only(result, "event", "unknown_entry")
    assert warning.level == "WARNING"
    assert root_of(result).metadata["counters"]["warnings"] == 1


# Every value anywhere in every fixture line replaced, one at a time, by a value of another JSON type.
ODD_VALUES = [None, 5, "x", [], {}]


def _paths(value: Any, prefix: tuple = ()):
    if isinstance(value, dict):
        for key, child in value.items():
            yield prefix + (key,)
            yield from _paths(child, prefix + (key,))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield prefix + (index,)
            yield from _paths(child, prefix + (index,))


def _replaced(line: str, path: tuple, value: Any) -> str:
    document = json.loads(line)
    target = document
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return json.dumps(document)


@pytest.mark.parametrize("name", ALL)
def test_odd_values_anywhere_never_stop_the_trace(name):
    lines = fixture_lines(name)
    tried = 0
    for index, line in enumerate(lines):
        for path in list(_paths(json.loads(line))):
            for value in ODD_VALUES:
                changed = list(lines)
                changed[index] = _replaced(line, path, value)
                result = fold(new_state(RUN), run_entries(changed, meta={"model": "gpt-5-codex"}), CTX)
                root = root_of(result)
                assert {o.parent_id for o in result.observations if o is not root} <= {root.id}, (index, path, value)
                assert len({o.id for o in result.observations}) == len(result.observations), (index, path, value)
                assert {s.name for s in result.scores} == {"success", "failed_commands", "files_changed", "errors"}
                tried += 1
    assert tried >= len(lines) * len(ODD_VALUES)


def test_negative_legacy_token_count_does_not_stop_the_trace():
    lines = fixture_lines(F_020)
    lines[5] = json.dumps({"id": "1", "msg": obj(F_020, 5)["msg"] | {"input_tokens": -1}})
    result = fold(new_state(RUN), run_entries(lines), CTX)
    assert root_of(result).level == "DEFAULT"
    assert len([o for o in result.observations if o.type == "generation"]) == 5


def test_item_with_null_id_does_not_stop_the_trace():
    lines = fixture_lines(F_FULL)
    lines[12] = json.dumps({"type": "item.completed", "item": item(F_FULL, 12) | {"id": None}})
    result = synthetic(lines)
    assert root_of(result).output == item(F_FULL, 12)["text"]


# ---- determinism and idempotence ----------------------------------------------------------------


def fold_in_chunks(entries: list[Entry], cuts: list[int], ctx: FoldContext = CTX) -> FoldResult:
    """Fold `entries` split at `cuts`, the state stored as JSON between steps like a worker does."""
    state = new_state(RUN)
    total = FoldResult(state=state)
    for start, stop in zip([0, *cuts], [*cuts, len(entries)]):
        step = fold(RunState.model_validate_json(state.model_dump_json()), entries[start:stop], ctx)
        state = step.state
        total.observations += step.observations
        total.scores += step.scores
        total.thread_totals.update(step.thread_totals)
    total.state = state
    return total


@pytest.mark.parametrize("name", ALL)
def test_folding_in_chunks_equals_folding_at_once(name):
    ctx = FoldContext(prices=PRICES, thread_baseline=lambda thread: FIRST_RUN if thread == THREAD else None)
    entries = fixture_entries(name, meta={"prompt": PROMPT, "model": "gpt-5-codex"})
    whole = fold(new_state(RUN), entries, ctx)
    for cut in range(1, len(entries)):
        chunked = fold_in_chunks(entries, [cut], ctx)
        assert chunked.observations == whole.observations, cut
        assert chunked.scores == whole.scores, cut
        assert chunked.thread_totals == whole.thread_totals, cut
        assert chunked.state == whole.state, cut
    one_by_one = fold_in_chunks(entries, list(range(1, len(entries))), ctx)
    assert (one_by_one.observations, one_by_one.scores) == (whole.observations, whole.scores)


@pytest.mark.parametrize("name", ALL)
def test_reapplying_folded_entries_changes_nothing(name):
    entries = fixture_entries(name, meta={"prompt": PROMPT})
    whole = fold(new_state(RUN), entries, CTX)
    again = fold(whole.state, entries, CTX)
    assert (again.observations, again.scores, again.thread_totals) == ([], [], {})
    assert again.state == whole.state
    middle = len(entries) // 2
    first = fold(new_state(RUN), entries[:middle], CTX)
    redelivered = fold(first.state, entries[middle - 2:], CTX)  # two entries delivered twice
    assert first.observations + redelivered.observations == whole.observations
    assert redelivered.state == whole.state


def test_fold_does_not_change_the_state_it_is_given():
    state = fold(new_state(RUN), fixture_entries(F_FULL)[:6], CTX).state
    before = state.model_dump_json()
    fold(state, fixture_entries(F_FULL)[6:], CTX)
    close(state, ts_of(99), "idle", CTX)
    assert state.model_dump_json() == before


@pytest.mark.parametrize("name", ALL)
def test_ids(name):
    result = fold_real(name)
    assert TRACE == Langfuse.create_trace_id(seed=RUN)
    assert re.fullmatch(r"[0-9a-f]{32}", TRACE)
    assert result.state.trace_id == TRACE
    for o in result.observations:
        assert re.fullmatch(r"[0-9a-f]{16}", o.id), o.id
        assert o.trace_id == TRACE
    other = fold(new_state("run-test-0002"), fixture_entries(name, run_id="run-test-0002"), CTX)
    assert {o.trace_id for o in other.observations} == {Langfuse.create_trace_id(seed="run-test-0002")}
    assert not {o.id for o in other.observations} & {o.id for o in result.observations}


def test_ids_do_not_depend_on_times_or_meta():
    a = fold(new_state(RUN), fixture_entries(F_FULL), CTX)
    b = fold(new_state(RUN), fixture_entries(F_FULL, t0_us=ts_of(10_000), step_us=7, meta={"model": "gpt-5"}), CTX)
    assert [o.id for o in a.observations] == [o.id for o in b.observations]


# ---- scores from the producer --------------------------------------------------------------------


def with_scores(name: str, payloads: list[dict], after_end: list[dict] = ()) -> tuple[FoldResult, FoldResult]:
    entries = fixture_entries(name)
    end = entries.pop()
    for payload in payloads:
        entries.append(json_entry(RUN, len(entries), "score", payload, ts_of(len(entries))))
    entries.append(end.model_copy(update={"seq": len(entries), "ts": ts_of(len(entries))}))
    result = fold(new_state(RUN), entries, CTX)
    late = [json_entry(RUN, len(entries) + k, "score", p, ts_of(len(entries) + k)) for k, p in enumerate(after_end)]
    return result, fold(result.state, late, CTX)


def test_producer_scores_infer_their_type():
    result, _ = with_scores(F_MCP, [
        {"name": "ci_passed", "value": True},
        {"name": "quality", "value": 0.8, "comment": "looks fine"},
        {"name": "tests", "value": 12},
        {"name": "label", "value": "good"},
        {"name": "review", "value": "needs work", "data_type": "TEXT"},
        {"name": "flag", "value": 0, "data_type": "BOOLEAN"},
    ])
    produced = {s.name: s for s in result.scores if s.metadata.get("source") == "producer"}
    assert {n: (s.value, s.data_type) for n, s in produced.items()} == {
        "ci_passed": (1.0, "BOOLEAN"), "quality": (0.8, "NUMERIC"), "tests": (12.0, "NUMERIC"),
        "label": ("good", "CATEGORICAL"), "review": ("needs work", "TEXT"), "flag": (0.0, "BOOLEAN")}
    assert produced["quality"].comment == "looks fine"
    for score in produced.values():
        assert score.id == f"{TRACE}-{score.name}"
    assert produced["ci_passed"].timestamp_us == ts_of(len(fixture_lines(F_MCP)) + 1)


def test_score_after_the_end_still_becomes_a_score():
    result, late = with_scores(F_MCP, [], after_end=[{"name": "human_review", "value": "approved"}])
    assert [(s.name, s.value, s.data_type) for s in late.scores] == [("human_review", "approved", "CATEGORICAL")]
    assert late.observations == []
    assert late.scores[0].id == f"{TRACE}-human_review"


def test_invalid_scores_are_counted_and_shown_not_sent():
    result, _ = with_scores(F_MCP, [{"value": 1}, {"name": "x"}, {"name": "n", "value": "high", "data_type": "NUMERIC"},
                                    {"name": "big", "value": 10**400}])
    assert {s.name for s in result.scores} == {"success", "failed_commands", "files_changed", "errors"}
    assert root_of(result).metadata["counters"]["invalid_entries"] == 4
    shown = [o for o in result.observations if o.name == "invalid_entry"]
    assert all(o.level == "WARNING" and o.type == "event" for o in shown)
    assert [o.status_message for o in shown] == [
        "score entry: name: Field required",
        "score entry: value: Field required",
        "score entry: value: 'high' is not a number (NUMERIC)",
        "score entry: value: the number '10000000000000000000000… is not finite or beyond ±2^53",
    ]


# ---- trace attributes and meta --------------------------------------------------------------------


def test_trace_attributes_from_start_and_meta_entries():
    entries = fixture_entries(F_FULL, meta={
        "name": "nightly fix", "model": "gpt-5-codex", "user_id": "alice", "tags": ["ci", "nightly"],
        "environment": "staging", "codex_version": "0.169.0", "cwd": "/home/dev/project",
        "metadata": {"ticket": "ABC-1"}})
    end = entries.pop()
    entries.append(json_entry(RUN, len(entries), "meta", {"tags": ["late", "ci"], "metadata": {"pr": 42},
                                                          "prompt": "the prompt, read late"}, ts_of(len(entries))))
    entries.append(end.model_copy(update={"seq": len(entries), "ts": ts_of(len(entries))}))
    result = fold(new_state(RUN), entries, CTX)
    root = root_of(result)
    assert root.input == "the prompt, read late"
    trace = root.trace
    assert (trace.name, trace.user_id, trace.environment, trace.release) == ("nightly fix", "alice", "staging",
                                                                             "0.169.0")
    assert trace.session_id == obj(F_FULL, 0)["thread_id"]  # the Codex thread unless given
    assert trace.tags == ("ci", "nightly", "late")
    assert trace.metadata.items() >= {"ticket": "ABC-1", "pr": 42, "model": "gpt-5-codex", "codex_version": "0.169.0",
                                      "cwd": "/home/dev/project", "run_id": RUN, "exit_code": 0}.items()
    for o in result.observations:
        assert (o.trace.name, o.trace.user_id, o.trace.session_id) == ("nightly fix", "alice", trace.session_id)


def test_session_id_from_meta_and_environment_from_context():
    result = fold(new_state(RUN), fixture_entries(F_MCP, meta={"session_id": "my-session"}),
                  FoldContext(prices=PRICES, environment="production", trace_name="codex nightly"))
    for o in result.observations:
        assert (o.trace.session_id, o.trace.environment, o.trace.name) == ("my-session", "production", "codex nightly")


# ---- lost entries -------------------------------------------------------------------------------


def test_skipped_gap_is_a_warning_and_counted():
    entries = fixture_entries(F_FULL)
    first = fold(new_state(RUN), entries[:6], CTX)
    skipped = skip_gap(first.state, 9, ts_of(9), CTX)  # seqs 6, 7, 8 never arrived
    warning = only(skipped, "event", "lost_entries")
    assert warning.level == "WARNING"
    assert warning.metadata == {"first_seq": 6, "count": 3}
    assert skipped.state.next_seq == 9
    rest = fold(skipped.state, entries[9:], CTX)
    assert root_of(rest).metadata["counters"]["lost_entries"] == 3


# ---- what Langfuse stores: trace metadata, environment, model parameters --------------------------

def test_trace_metadata_is_on_the_root_only_and_trace_fields_on_every_span():
    result = fold_fixture(F_FULL, meta={"metadata": {"status": "ci"}, "tags": ["ci"], "user_id": "alice"})
    for obs in result.observations:
        assert (obs.trace.name, obs.trace.user_id, obs.trace.tags) == ("codex exec", "alice", ("ci",))
        if obs.parent_id is None:
            assert obs.trace.metadata["status"] == "ci" and obs.trace.metadata["run_id"] == RUN
        else:
            assert obs.trace.metadata == {}


@pytest.mark.parametrize("given, worker, stored", [
    ("Staging", None, "staging"), ("langfuse-prod", "ci", "prod"), ("ci.nightly", "fallback", "fallback"),
    (None, "ci", "ci"), (None, None, None),
])
def test_the_environment_is_normalised_or_falls_back_to_the_workers(given, worker, stored):
    meta = {} if given is None else {"environment": given}
    result = fold_fixture(F_FULL, meta=meta, ctx=FoldContext(prices=PRICES, environment=worker))
    assert {obs.trace.environment for obs in result.observations} == {stored}
    assert {score.environment for score in result.scores} == {stored}
    assert result.state.environment == stored


def test_the_run_keeps_the_environment_of_its_first_fold():
    entries = fixture_entries(F_FULL)
    first = fold(new_state(RUN), entries[:3], FoldContext(prices=PRICES, environment="ci"))
    rest = fold(first.state, entries[3:], FoldContext(prices=PRICES, environment="another-worker"))
    assert {score.environment for score in rest.scores} == {"ci"}


def test_model_parameters_from_the_producer_go_on_generations_and_price_the_service_tier():
    parameters = {"reasoning_effort": "high", "service_tier": "priority", "sandbox_mode": "read-only"}
    result = fold_fixture(F_FULL, model="gpt-5-codex", meta={"model_parameters": parameters})
    (generation,) = [o for o in result.observations if o.type == "generation"]
    assert generation.model_parameters == parameters
    assert generation.metadata["pricing_tier"] == "priority"
    assert all(o.model_parameters is None for o in result.observations if o.type != "generation")


def test_the_legacy_header_adds_the_model_parameters_codex_printed():
    result = fold_fixture(F_042, meta={"model_parameters": {"service_tier": "flex", "reasoning_effort": "low"}})
    generations = [o for o in result.observations if o.type == "generation"]
    assert generations
    # the header: {"reasoning summaries":"auto","sandbox":"danger-full-access","approval":"never","reasoning effort":"none"}
    assert {json.dumps(g.model_parameters, sort_keys=True) for g in generations} == {json.dumps({
        "service_tier": "flex", "reasoning_effort": "none", "reasoning_summary": "auto",
        "sandbox_mode": "danger-full-access", "approval_policy": "never"}, sort_keys=True)}


# ---- a run that joins its caller's trace ---------------------------------------------------------

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"


def test_a_run_with_a_parent_lives_in_the_callers_trace_under_the_callers_span():
    alone = fold_fixture(F_FAILED_CMD, meta={"name": "fix", "metadata": {"job": "42"}})
    joined = fold_fixture(F_FAILED_CMD, meta={"name": "fix", "metadata": {"job": "42"}, "parent": TRACEPARENT})
    assert [o.id for o in joined.observations] == [o.id for o in alone.observations]  # ids from the run id
    assert {o.trace_id for o in joined.observations} == {CALLER_TRACE}
    (root,) = [o for o in joined.observations if o.type == "agent"]
    assert root.parent_id == CALLER_SPAN and root.name == "fix"
    assert all(o.parent_id is not None for o in joined.observations)
    # the caller's trace keeps its name and metadata: the run's metadata is its root's own
    assert {o.trace.name for o in joined.observations} == {None}
    assert all(o.trace.metadata == {} and o.trace.input is None for o in joined.observations)
    assert root.metadata["job"] == "42" and root.metadata["run_id"] == RUN and root.metadata["outcome"] == "completed"
    # scores on the run's root, ids that stay apart from other runs' in the same trace
    assert {(s.trace_id, s.observation_id) for s in joined.scores} == {(CALLER_TRACE, root.id)}
    assert {s.id for s in joined.scores} == {f"{CALLER_TRACE}-{root.id}-{s.name}" for s in joined.scores}
    assert {s.id for s in alone.scores} == {f"{TRACE}-{s.name}" for s in alone.scores}
    assert all(s.observation_id is None for s in alone.scores)


def test_a_joined_run_sets_the_trace_attributes_only_when_asked():
    result = fold_fixture(F_FULL, meta={"name": "fix", "prompt": PROMPT, "parent": TRACEPARENT,
                                        "set_trace_attributes": True, "metadata": {"job": "42"}})
    (root,) = [o for o in result.observations if o.type == "agent"]
    assert {o.trace.name for o in result.observations} == {"fix"}
    assert root.trace.metadata["job"] == "42" and root.trace.input == PROMPT and root.trace.output
    assert all(o.trace.metadata == {} for o in result.observations if o is not root)


def test_only_the_start_entry_places_the_run():
    entries = fixture_entries(F_FULL)
    meta = json_entry(RUN, 1, "meta", {"parent": TRACEPARENT}, ts_of(1))
    shifted = [entries[0], meta] + [e.model_copy(update={"seq": e.seq + 1}) for e in entries[1:]]
    result = fold(new_state(RUN), shifted, CTX)
    assert {o.trace_id for o in result.observations} == {TRACE}
    assert fold_fixture(F_FULL, meta={"parent": "garbage"}).state.parent is None
