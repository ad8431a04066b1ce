"""The offline Codex harness: the mock model, the echo MCP server, and the real Codex binary driven by them.

Tests marked ``codex`` install Codex from npm into the cache (once; ``ensure_codex``) and run it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from tests.support import mock_responses as mock
from tests.support.codex_harness import (
    MCP_ECHO_SCRIPT,
    RECORDED_DIR,
    CodexSandbox,
    parse_events,
    run_scenario,
)
from tests.support.codex_install import CodexInstallError, ensure_codex

CURRENT = "0.169.0"
LEGACY = "0.42.0"


def _codex(version: str):
    try:
        return ensure_codex(version)
    except CodexInstallError as error:
        pytest.fail(f"could not install Codex {version} from npm: {error}")


@pytest.fixture(scope="session")
def codex_current():
    return _codex(CURRENT)


@pytest.fixture(scope="session")
def codex_legacy():
    return _codex(LEGACY)


# ---- the mock model without Codex ------------------------------------------------------------


def _post(url: str, body: dict) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _sse_events(raw: bytes) -> list[dict]:
    return [json.loads(line[len(b"data: ") :]) for line in raw.splitlines() if line.startswith(b"data: ")]


def test_mock_streams_a_turn_and_records_the_request():
    turn = mock.ModelTurn(
        [mock.reasoning("thinking"), mock.exec_command("echo hi"), mock.message("done")],
        mock.Usage(input_tokens=1200, output_tokens=60, cached_input_tokens=400, reasoning_tokens=25, cache_write_tokens=7),
    )
    with mock.MockResponsesServer([turn]) as server:
        status, raw = _post(f"{server.base_url}/responses", {"input": [{"type": "message", "role": "user"}], "tools": []})
        requests = server.response_requests()

    events = _sse_events(raw)
    assert status == 200
    assert [e["type"] for e in events][0] == "response.created"
    assert events[-1]["type"] == "response.completed"
    done_items = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert [item["type"] for item in done_items] == ["reasoning", "function_call", "message"]
    call = done_items[1]
    assert call["name"] == "exec_command" and json.loads(call["arguments"]) == {"cmd": "echo hi"}
    assert call["call_id"] and call["id"]
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == "done"
    assert events[-1]["response"]["usage"] == {
        "input_tokens": 1200,
        "input_tokens_details": {"cached_tokens": 400, "cache_write_tokens": 7},
        "output_tokens": 60,
        "output_tokens_details": {"reasoning_tokens": 25},
        "total_tokens": 1260,
    }
    assert requests == [{"input": [{"type": "message", "role": "user"}], "tools": []}]


def test_mock_answers_faults_in_script_order_then_reports_exhaustion():
    fault = mock.HttpFault(500, mock.error_body("boom", type_="server_error", code=None))
    with mock.MockResponsesServer([fault, mock.ModelTurn([mock.message("ok")])]) as server:
        first = _post(f"{server.base_url}/responses", {})
        second = _post(f"{server.base_url}/responses", {})
        third = _post(f"{server.base_url}/responses", {})
        answered = [request.answered_with for request in server.requests]

    assert first == (500, json.dumps(fault.body).encode())
    assert second[0] == 200 and _sse_events(second[1])[-1]["type"] == "response.completed"
    assert third[0] == 400 and b"script exhausted" in third[1]
    assert answered == ["fault 500", "turn", "exhausted"]


def test_mcp_echo_speaks_json_rpc_over_stdio():
    requests = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "say", "arguments": {"text": "hi"}}},
        {"jsonrpc": "2.0", "id": 4, "method": "no/such/method"},
    ]
    completed = subprocess.run(
        [sys.executable, str(MCP_ECHO_SCRIPT)],
        input="".join(json.dumps(r) + "\n" for r in requests),
        capture_output=True,
        text=True,
        timeout=30,
    )
    replies = {reply["id"]: reply for reply in map(json.loads, completed.stdout.splitlines())}

    assert sorted(replies) == [1, 2, 3, 4]  # the notification got no answer
    assert replies[1]["result"]["protocolVersion"] == "2025-06-18"
    assert [tool["name"] for tool in replies[2]["result"]["tools"]] == ["say"]
    assert replies[3]["result"]["content"] == [{"type": "text", "text": "echo: hi"}]
    assert replies[3]["result"]["structuredContent"] == {"echoed": "hi"}
    assert replies[4]["error"]["code"] == -32601


def test_parse_events_keeps_the_first_of_duplicate_keys():
    line = b'{"type":"item.started","item":{"id":"item_5","type":"web_search","id":"ws_1"}}\nnot json\n'
    assert parse_events(line) == [{"type": "item.started", "item": {"id": "item_5", "type": "web_search"}}]


def test_recordings_agree_with_their_manifest():
    for version in ("0.169.0", "0.42.0"):
        manifest = json.loads((RECORDED_DIR / version / "manifest.json").read_text())
        assert manifest, f"no recordings for {version}"
        for name, entry in manifest.items():
            events = parse_events((RECORDED_DIR / version / name).read_bytes())
            assert events, name
            terminal = [e["type"] for e in events if e.get("type") in ("turn.completed", "turn.failed")]
            if "--experimental-json" in entry["argv"]:
                assert events[0]["type"] == "session.created", name
            elif version == "0.42.0":
                assert "type" not in events[0] and "msg" in events[2], name  # config header, prompt, then {id,msg}
            elif entry["interrupted"]:
                assert terminal == [], name
            else:
                assert terminal == (["turn.completed"] if entry["exit_code"] == 0 else ["turn.failed"]), name


# ---- the real Codex ------------------------------------------------------------------------------


@pytest.mark.codex
def test_command_ok_runs_the_command_and_sends_its_output_back(codex_current, tmp_path):
    sandbox, [run] = run_scenario(codex_current, "command_ok", tmp_path, version=CURRENT)

    assert run.exit_code == 0, run.stderr
    commands = run.items("command_execution")
    assert [(c["exit_code"], c["status"], c["aggregated_output"]) for c in commands] == [(0, "completed", "hello-from-mock\n")]
    assert run.items("error") == []  # the model catalog makes gpt-5-codex known: no metadata warning
    assert run.kinds[-1] == "turn.completed"
    outputs = sandbox.server.tool_outputs()
    assert len(outputs) == 1 and "hello-from-mock" in outputs[0]["output"]


@pytest.mark.codex
def test_codex_offers_the_tools_the_scenarios_call(codex_current, tmp_path):
    with mock.MockResponsesServer([mock.ModelTurn([mock.message("hi")])]) as server:
        sandbox = CodexSandbox(codex_current, server, tmp_path, version=CURRENT)
        run = sandbox.run("hello")
        offered = set(server.tool_names())

    assert run.exit_code == 0, run.stderr
    assert {"exec_command", "apply_patch", "update_plan", "web_search", "mcp__echo.say"} <= offered


@pytest.mark.codex
def test_apply_patch_writes_the_file_and_reports_add_then_update(codex_current, tmp_path):
    sandbox, [run] = run_scenario(codex_current, "apply_patch", tmp_path, version=CURRENT)

    assert run.exit_code == 0, run.stderr
    changes = [item["changes"] for item in run.items("file_change")]
    hello = str(sandbox.workspace / "hello.txt")
    assert changes == [[{"path": hello, "kind": "add"}], [{"path": hello, "kind": "update"}]]
    assert (sandbox.workspace / "hello.txt").read_text() == "hello again from the mock model\n"


@pytest.mark.codex
def test_mcp_call_reaches_the_echo_server(codex_current, tmp_path):
    _, [run] = run_scenario(codex_current, "mcp_call", tmp_path, version=CURRENT)

    assert run.exit_code == 0, run.stderr
    [call] = run.items("mcp_tool_call")
    assert (call["server"], call["tool"], call["status"]) == ("echo", "say", "completed")
    assert call["result"]["structured_content"] == {"echoed": "hi from mock"}
    assert call["result"]["content"] == [{"type": "text", "text": "echo: hi from mock"}]


@pytest.mark.codex
def test_http_400_fails_the_turn(codex_current, tmp_path):
    _, [run] = run_scenario(codex_current, "turn_failed", tmp_path, version=CURRENT)

    assert run.exit_code == 1
    assert run.kinds[-2:] == ["error", "turn.failed"]
    assert "scenario=turn_failed" in run.events[-1]["error"]["message"]


@pytest.mark.codex
def test_http_500_twice_prints_reconnecting_errors_then_completes(codex_current, tmp_path):
    sandbox, [run] = run_scenario(codex_current, "retry_500", tmp_path, version=CURRENT)

    assert run.exit_code == 0, run.stderr
    errors = [e["message"] for e in run.events if e.get("type") == "error"]
    assert [m.split(" (")[0] for m in errors] == ["Reconnecting... 1/2", "Reconnecting... 2/2"]
    assert run.kinds[-1] == "turn.completed"
    assert [r.answered_with for r in sandbox.server.requests] == ["fault 500", "fault 500", "turn"]


@pytest.mark.codex
def test_a_dropped_stream_is_retried_with_a_reconnecting_error(codex_current, tmp_path):
    script = [mock.ModelTurn([mock.message("cut off")], cut_before_completed=True), mock.ModelTurn([mock.message("whole")])]
    with mock.MockResponsesServer(script) as server:
        run = CodexSandbox(codex_current, server, tmp_path, stream_max_retries=1, version=CURRENT).run("hello")

    assert run.exit_code == 0, run.stderr
    [error] = [e["message"] for e in run.events if e.get("type") == "error"]
    assert error.startswith("Reconnecting... 1/1 (stream disconnected before completion")
    # the item streamed before the cut was already reported
    assert [m["text"] for m in run.items("agent_message")] == ["cut off", "whole"]


@pytest.mark.codex
def test_resume_keeps_the_thread_and_reports_cumulative_usage(codex_current, tmp_path):
    _, [first, resumed] = run_scenario(codex_current, "resume", tmp_path, version=CURRENT)

    assert (first.exit_code, resumed.exit_code) == (0, 0), resumed.stderr
    assert resumed.thread_id == first.thread_id is not None
    assert resumed.usage["input_tokens"] > first.usage["input_tokens"]
    # the resumed run's only model call used 1,400 input tokens (scenario script)
    assert resumed.usage["input_tokens"] - first.usage["input_tokens"] == 1400


@pytest.mark.codex
def test_sigint_during_a_command_ends_the_stream_without_terminal_event(codex_current, tmp_path):
    _, [run] = run_scenario(codex_current, "interrupted", tmp_path, version=CURRENT, timeout=60)

    assert run.interrupted and not run.timed_out
    assert run.exit_code != 0
    assert run.kinds[-1] == "item.started:command_execution"
    assert not {"turn.completed", "turn.failed"} & {e.get("type") for e in run.events}


@pytest.mark.codex
def test_legacy_codex_prints_the_id_msg_format(codex_legacy, tmp_path):
    sandbox, [run] = run_scenario(codex_legacy, "command_ok", tmp_path, version=LEGACY)

    assert run.exit_code == 0, run.stderr
    assert run.kinds[:3] == ["header", "prompt", "msg:task_started"]
    ends = [e["msg"] for e in run.events if e.get("msg", {}).get("type") == "exec_command_end"]
    assert [(end["exit_code"], end["stdout"]) for end in ends] == [(0, "hello-from-mock\n")]
    assert sandbox.server.tool_names()[0] == "shell"
