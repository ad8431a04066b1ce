"""Reading Codex's stdout lines: format detection, tolerant parsing, the duplicate "id" key.

Every line of every recorded fixture is classified; the expected format of each is written from
reference/codex-events.md ("Telling them apart per line").
"""

from __future__ import annotations

import json

import pytest

from codex_langfuse.ingest.events import (
    DUPLICATE_KEYS,
    AgentMessage,
    CollabToolCall,
    CommandExecution,
    ErrorItem,
    FileChange,
    Format,
    Item,
    LegacyTokenUsage,
    McpToolCall,
    Reasoning,
    TodoList,
    Usage,
    WebSearch,
    detect_format,
    parse_item,
    parse_line,
)
from tests.support.runs import fixture_lines

CURRENT_FIXTURES = [
    "real_run_0.169.0_full.jsonl",
    "real_run_0.169.0_command_failed.jsonl",
    "real_run_0.169.0_mcp_tool_call.jsonl",
    "real_run_0.169.0_resume_thread_cumulative_usage.jsonl",
    "real_run_0.169.0_turn_failed.jsonl",
    "real_run_v0.98.0_json.jsonl",
    "real_run_v0.44.0_json.jsonl",
    "repo_docs_exec_md_sample.jsonl",
]
LEGACY_FIXTURES = ["real_run_v0.42.0_json.jsonl", "real_run_v0.20.0_json.jsonl"]


# ---- format detection on real output ------------------------------------------------------------


@pytest.mark.parametrize("name", CURRENT_FIXTURES)
def test_every_line_of_a_current_format_fixture_is_current(name):
    lines = [parse_line(text) for text in fixture_lines(name)]
    assert lines, name
    assert [line.format for line in lines] == [Format.CURRENT] * len(lines)
    assert all(line.problem is None for line in lines)
    assert lines[0].type == "thread.started"
    assert lines[1].type == "turn.started"
    assert lines[-1].type in ("turn.completed", "turn.failed")


@pytest.mark.parametrize("name", LEGACY_FIXTURES)
def test_legacy_fixture_is_two_header_lines_then_id_msg_lines(name):
    lines = [parse_line(text) for text in fixture_lines(name)]
    # line 1: config summary (workdir, model, ...), line 2: {"prompt": ...}; then {"id", "msg"}
    assert [line.format for line in lines[:2]] == [Format.LEGACY_HEADER, Format.LEGACY_HEADER]
    assert lines[0].obj["model"] == "gpt-5-codex"
    assert lines[1].obj == {"prompt": "Run a command and create hello.txt"}
    assert [line.format for line in lines[2:]] == [Format.LEGACY] * (len(lines) - 2)
    # the type of a legacy line is its msg.type
    assert lines[2].type == "task_started"
    assert {line.type for line in lines[2:]} >= {"token_count", "exec_command_begin", "exec_command_end",
                                                 "patch_apply_begin", "patch_apply_end", "agent_message"}


def test_header_line_types_are_empty():
    header = parse_line(fixture_lines("real_run_v0.42.0_json.jsonl")[0])
    assert header.format is Format.LEGACY_HEADER
    assert header.type == ""


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"type": "thread.started", "thread_id": "t"}, Format.CURRENT),
        ({"type": "turn.started"}, Format.CURRENT),
        ({"type": "turn.completed", "usage": {}}, Format.CURRENT),
        ({"type": "turn.failed", "error": {"message": "x"}}, Format.CURRENT),
        ({"type": "item.updated", "item": {}}, Format.CURRENT),
        ({"type": "error", "message": "Reconnecting... 1/2"}, Format.CURRENT),
        ({"type": "turn.something_new"}, Format.CURRENT),  # a future turn.* event still belongs to the stream
        ({"type": "session.created", "session_id": "s"}, Format.EXPERIMENTAL),
        ({"type": "agent.thinking", "item": {"item_type": "assistant_message"}}, Format.EXPERIMENTAL),
        ({"id": "0", "msg": {"type": "task_started"}}, Format.LEGACY),
        ({"workdir": "/w", "model": "gpt-5-codex", "provider": "openai"}, Format.LEGACY_HEADER),
        ({"prompt": "hi"}, Format.LEGACY_HEADER),
        ({"prompt": "hi", "other": 1}, Format.UNKNOWN),
        ({"type": "telemetry"}, Format.UNKNOWN),
        ({"type": 5}, Format.UNKNOWN),
        ({"msg": {"type": "x"}}, Format.UNKNOWN),  # msg without id: not the legacy shape
        ({}, Format.UNKNOWN),
    ],
)
def test_detect_format(obj, expected):
    assert detect_format(obj) is expected


@pytest.mark.parametrize("item", [5, True, 1.5, "no item_type here"])
def test_unknown_type_with_a_non_object_item_is_unknown_not_a_crash(item):
    line = parse_line(json.dumps({"type": "telemetry", "item": item}))
    assert line.format is Format.UNKNOWN
    assert line.obj == {"type": "telemetry", "item": item}


# ---- lines that are not JSON objects --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "problem_starts"),
    [
        ("", "empty line"),
        ("   \t ", "empty line"),
        ("not json {", "not JSON"),
        ('{"type":"turn.started"', "not JSON"),  # cut line
        ("[1, 2]", "JSON list, not an object"),
        ("42", "JSON int, not an object"),
        ('"text"', "JSON str, not an object"),
        ("null", "JSON NoneType, not an object"),
        ("[" * 100_000, "not JSON"),  # deep nesting: RecursionError is caught too
    ],
)
def test_invalid_lines_say_why(text, problem_starts):
    line = parse_line(text)
    assert line.format is Format.INVALID
    assert line.obj is None
    assert line.type == ""
    assert line.problem.startswith(problem_starts)


def test_surrounding_whitespace_and_crlf_are_tolerated():
    line = parse_line('  {"type":"turn.started"}\r')
    assert line.format is Format.CURRENT
    assert line.type == "turn.started"


def test_unknown_fields_are_kept_in_the_object():
    line = parse_line('{"type":"turn.completed","usage":{"input_tokens":1},"duration_ms":12,"new":{"a":[1]}}')
    assert line.obj["duration_ms"] == 12
    assert line.obj["new"] == {"a": [1]}


# ---- the duplicate "id" key of web_search (Codex >= 0.98) -----------------------------------------


@pytest.mark.parametrize(("name", "index"), [
    ("real_run_0.169.0_full.jsonl", 10),
    ("real_run_0.169.0_full.jsonl", 11),
    ("real_run_v0.98.0_json.jsonl", 9),
    ("real_run_v0.98.0_json.jsonl", 10),
    ("real_run_0.169.0_resume_thread_cumulative_usage.jsonl", 2),
    ("real_run_0.169.0_resume_thread_cumulative_usage.jsonl", 3),
])
def test_web_search_keeps_the_first_id_and_the_second_aside(name, index):
    text = fixture_lines(name)[index]
    assert text.count('"id":') == 2  # the line really has the key twice
    assert json.loads(text)["item"]["id"] == "ws_mock_4"  # what plain json.loads would give
    item = parse_line(text).obj["item"]
    assert item["id"] != "ws_mock_4" and item["id"].startswith("item_")
    assert item[DUPLICATE_KEYS] == {"id": "ws_mock_4"}
    parsed = parse_item(item)
    assert isinstance(parsed, WebSearch)
    assert parsed.id == item["id"]
    assert parsed.model_extra[DUPLICATE_KEYS] == {"id": "ws_mock_4"}


def test_web_search_started_and_completed_share_the_item_id():
    lines = fixture_lines("real_run_0.169.0_full.jsonl")
    started, completed = parse_line(lines[10]), parse_line(lines[11])
    assert (started.type, completed.type) == ("item.started", "item.completed")
    assert started.obj["item"]["id"] == completed.obj["item"]["id"] == "item_5"


def test_objects_without_duplicates_carry_no_duplicate_marker():
    for name in CURRENT_FIXTURES + LEGACY_FIXTURES:
        for text in fixture_lines(name):
            if text.count('"id":') < 2:
                assert DUPLICATE_KEYS not in json.dumps(parse_line(text).obj), (name, text)


def test_duplicates_in_nested_objects_keep_the_first_too():
    line = parse_line('{"type":"x","a":{"k":1,"k":2},"type":"y"}')
    assert line.obj["type"] == "x"
    assert line.obj["a"] == {"k": 1, DUPLICATE_KEYS: {"k": 2}}
    assert line.obj[DUPLICATE_KEYS] == {"type": "y"}


# ---- items --------------------------------------------------------------------------------------


def _items(name: str) -> list[dict]:
    return [parse_line(text).obj["item"] for text in fixture_lines(name) if '"item"' in text]


def test_every_item_of_the_fixtures_parses_to_its_model():
    models = {"agent_message": AgentMessage, "reasoning": Reasoning, "command_execution": CommandExecution,
              "file_change": FileChange, "mcp_tool_call": McpToolCall, "web_search": WebSearch, "todo_list": TodoList}
    seen = set()
    for name in CURRENT_FIXTURES:
        for raw in _items(name):
            parsed = parse_item(raw)
            assert type(parsed) is models[raw["type"]], (name, raw)
            assert parsed.id == raw["id"]
            seen.add(raw["type"])
    assert seen == set(models)


def test_command_item_fields():
    raw = _items("real_run_0.169.0_command_failed.jsonl")[2]
    item = parse_item(raw)
    assert isinstance(item, CommandExecution)
    assert item.command == "/bin/bash -lc 'ls /nonexistent-dir'"
    assert item.aggregated_output == "ls: cannot access '/nonexistent-dir': No such file or directory\n"
    assert item.exit_code == 2
    assert item.status == "failed"
    running = parse_item(_items("real_run_0.169.0_command_failed.jsonl")[1])
    assert running.exit_code is None and running.status == "in_progress"


def test_mcp_item_fields():
    item = parse_item(_items("real_run_0.169.0_mcp_tool_call.jsonl")[1])
    assert isinstance(item, McpToolCall)
    assert (item.server, item.tool, item.arguments) == ("echo", "say", {"text": "hi from mock"})
    assert item.result == {"content": [{"type": "text", "text": "echo: hi from mock"}],
                           "structured_content": {"echoed": "hi from mock"}}
    assert item.error is None


def test_todo_and_file_change_fields():
    items = _items("real_run_0.169.0_full.jsonl")
    todo = parse_item(items[1])
    assert isinstance(todo, TodoList)
    assert [(step.text, step.completed) for step in todo.items] == [
        ("Inspect the workspace", True), ("Run a shell command", False), ("Write hello.txt", False)]
    change = parse_item(items[6])
    assert isinstance(change, FileChange)
    assert [(c.path, c.kind) for c in change.changes] == [("/home/dev/project/hello.txt", "add")]


def test_synthetic_items_of_the_other_types():
    collab = parse_item({"id": "item_1", "type": "collab_tool_call", "tool": "spawn_agent", "sender_thread_id": "a",
                         "receiver_thread_ids": ["b"], "prompt": "go", "agents_states": {"b": "running"}})
    assert isinstance(collab, CollabToolCall)
    assert collab.receiver_thread_ids == ["b"]
    error = parse_item({"id": "item_2", "type": "error", "message": "model rerouted: a -> b"})
    assert isinstance(error, ErrorItem) and error.message == "model rerouted: a -> b"
    argv = parse_item({"id": "item_3", "type": "command_execution", "command": ["ls", "-la"]})
    assert isinstance(argv, CommandExecution) and argv.command == ["ls", "-la"]


def test_unknown_item_type_keeps_every_field():
    item = parse_item({"id": "item_9", "type": "hologram", "beam": {"color": "blue"}})
    assert type(item) is Item
    assert (item.id, item.type) == ("item_9", "hologram")
    assert item.model_extra == {"beam": {"color": "blue"}}


def test_unknown_fields_of_a_known_item_are_kept():
    item = parse_item({"id": "item_1", "type": "agent_message", "text": "hi", "phase": "final"})
    assert isinstance(item, AgentMessage)
    assert item.model_extra == {"phase": "final"}


def test_item_whose_fields_do_not_fit_falls_back_to_the_raw_object():
    raw = {"id": "item_1", "type": "command_execution", "command": "ls", "exit_code": "not a number"}
    item = parse_item(raw)
    assert type(item) is Item
    assert (item.id, item.type) == ("item_1", "command_execution")
    assert item.model_extra["raw"] == raw


@pytest.mark.parametrize("raw", [None, 5, "text", [1, 2]])
def test_item_that_is_not_an_object(raw):
    item = parse_item(raw)
    assert item.type == "invalid"
    assert item.model_extra["raw"] == raw


@pytest.mark.parametrize("bad", [None, 5, [], {}])
@pytest.mark.parametrize("key", ["id", "type"])
def test_item_with_a_non_string_id_or_type_does_not_raise(key, bad):
    raw = {"id": "item_1", "type": "agent_message", "text": "hi"} | {key: bad}
    item = parse_item(raw)
    assert isinstance(item, Item)
    if key == "id":
        assert item.type == "agent_message"
    else:
        assert item.id == "item_1"


# ---- usage --------------------------------------------------------------------------------------


def test_usage_of_every_turn_completed():
    expected = {
        "real_run_0.169.0_full.jsonl": (6000, 3200, 260, 100, 0),
        "real_run_0.169.0_command_failed.jsonl": (2100, 800, 101, 40, 0),
        "real_run_0.169.0_mcp_tool_call.jsonl": (2100, 800, 101, 40, 0),
        "real_run_0.169.0_resume_thread_cumulative_usage.jsonl": (7400, 4000, 314, 120, 0),
        "real_run_v0.98.0_json.jsonl": (6000, 3200, 260, 0, 0),  # no reasoning_output_tokens before 0.125
        "real_run_v0.44.0_json.jsonl": (6000, 3200, 260, 0, 0),
        "repo_docs_exec_md_sample.jsonl": (24763, 24448, 122, 0, 0),
    }
    for name, numbers in expected.items():
        usage = Usage.model_validate(parse_line(fixture_lines(name)[-1]).obj["usage"])
        assert (usage.input_tokens, usage.cached_input_tokens, usage.output_tokens,
                usage.reasoning_output_tokens, usage.cache_write_input_tokens) == numbers, name


def test_usage_nulls_are_zero_and_unknown_counters_kept():
    usage = Usage.model_validate({"input_tokens": 10, "cached_input_tokens": None, "output_tokens": 3,
                                  "audio_tokens": 7})
    assert usage.cached_input_tokens == 0
    assert usage.model_extra == {"audio_tokens": 7}


def test_usage_arithmetic_for_resumed_threads():
    first = Usage(input_tokens=6000, cached_input_tokens=3200, output_tokens=260, reasoning_output_tokens=100)
    resumed = Usage(input_tokens=7400, cached_input_tokens=4000, output_tokens=314, reasoning_output_tokens=120)
    assert resumed.covers(first) and not first.covers(resumed)
    assert resumed.minus(first) == Usage(input_tokens=7400 - 6000, cached_input_tokens=4000 - 3200,
                                         output_tokens=314 - 260, reasoning_output_tokens=120 - 100)
    assert first.plus(resumed.minus(first)) == resumed
    assert Usage().is_zero() and not first.is_zero()


def test_legacy_token_usage_drops_total_tokens():
    msg = parse_line(fixture_lines("real_run_v0.42.0_json.jsonl")[11]).obj["msg"]
    last = LegacyTokenUsage.model_validate(msg["info"]["last_token_usage"])
    assert last.total_tokens == 1151
    assert last.as_usage() == Usage(input_tokens=1100, cached_input_tokens=800, output_tokens=51,
                                    reasoning_output_tokens=20)
