"""The real Codex, end to end: `codex-langfuse run -- codex exec --json …` into a whole pipeline.

Codex 0.169.0 and 0.42.0 (npm, cached outside the repository by `ensure_codex`) run offline against
the scripted Responses API of `tests/support/mock_responses.py` (scenarios of
`tests/support/codex_harness.py`), wrapped in the bridge, which ships every line to a `Stack`:
a real redis-server, dispatcher and worker processes, and the strict Langfuse receiver. Each test
checks the trace at the receiver against what the scenario made Codex do.

Every scenario is also played once without the bridge, in the same sandbox paths with the same
script: Codex's stdout must be the same bytes and its exit code the same. Two Codex runs differ in
one thing only, the thread id Codex generates (a UUIDv7), which is masked before comparing; 0.42's
legacy stream also prints its config header as a hash map (key order varies from run to run), each
command's measured duration, and a command's output in chunks cut where reads happened to end, so
there lines are compared as parsed JSON, durations masked, output chunks joined.

Expected usage comes from the script (the token counts the mock model reported for each request
of the run), expected cost from the rates in ingest/prices.json: neither is read back from the
mapping. The model is never passed with --model except in one test; elsewhere the bridge must read
it from Codex's arguments (-m, -c model=…) or from the sandbox's config.toml.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import termios
import threading
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from codex_langfuse.ingest.observations import trace_id
from tests.support.codex_harness import SCENARIOS, CodexRun, CodexSandbox
from tests.support.codex_install import CodexInstallError, ensure_codex
from tests.support.mock_responses import ModelTurn, MockResponsesServer
from tests.support.stack import Stack
from tests.test_recorded_runs import assert_trace_shape, expected_cost, expected_trace, usage_buckets

pytestmark = [pytest.mark.codex, pytest.mark.integration]
# the real Codex's runs go to a receiver of the newest server generation (tests/conftest.py)
PIPELINE_PROFILE = "latest"

CURRENT = "0.169.0"
LEGACY = "0.42.0"
MODEL = "gpt-5-codex"
BRIDGE = [sys.executable, "-m", "codex_langfuse.producer.cli", "run"]
HANG_GUARD = 120  # seconds; only against a hang, never asserted
SI_USER, SI_KERNEL = 0, 0x80  # siginfo si_code: sent by kill(), sent by the kernel (a terminal's ^C)


def _codex(version: str) -> Path:
    try:
        return ensure_codex(version)
    except CodexInstallError as error:
        pytest.fail(f"could not install Codex {version} from npm: {error}")


@pytest.fixture(scope="module")
def codex_current() -> Path:
    return _codex(CURRENT)


@pytest.fixture(scope="module")
def codex_legacy() -> Path:
    return _codex(LEGACY)


# ---- playing a scenario, with and without the bridge ------------------------------------------------


def new_run_id(label: str) -> str:
    return f"e2e-{label}-{uuid.uuid4().hex[:8]}"


def bridge_env(pipeline: Stack) -> dict[str, str]:
    """What `codex-langfuse run` needs besides the sandbox's environment: where Redis is (as the
    runner user), and this checkout on PYTHONPATH (the bridge runs the code under test)."""
    return {key: value for key, value in pipeline.runner_env.items()
            if key in ("REDIS_URL", "PYTHONPATH") or key.startswith("CODEX_LANGFUSE_")}


def without_config_model(sandbox: CodexSandbox) -> None:
    """Drop `model = …` from config.toml: the model then only comes from Codex's arguments (or, for
    0.42, from Codex's own default, which its legacy header names)."""
    text = sandbox.config_path.read_text()
    sandbox.config_path.write_text(re.sub(r"^model = .*\n", "", text, count=1, flags=re.M))


@dataclass
class Played:
    sandbox: CodexSandbox
    runs: list[CodexRun]
    turns: list[list[ModelTurn]]  # per run, the scripted model turns it consumed (they carry the usage)
    answers: list[list[str]]  # per run, how the mock answered each model request ("turn", "fault 500")
    prompts: list[str]
    run_ids: list[str]
    requests: list[list[dict]]  # per run, the bodies of its model requests

    def prompt_codex_sent(self, index: int) -> str:
        """The text of the user message that opened run `index`'s conversation with the model: what
        Codex took as its prompt, whatever way it got it."""
        [message, *_] = [item for item in reversed(self.requests[index][0]["input"]) if item.get("role") == "user"]
        return "".join(part.get("text", "") for part in message["content"])


def play(codex: Path, name: str, root: Path, *, version: str = CURRENT, pipeline: Stack | None = None,
         bridge_options: tuple[str, ...] = (), codex_options: tuple[str, ...] = (),
         config_model: bool = True, sandbox_model: str = MODEL, json_flag: str = "--json",
         wrapper: tuple[str, ...] = (), prompt_argument: str | None = None, stdin_data: bytes | None = None) -> Played:
    """Play a scenario (both runs of `resume`) in a fresh sandbox at `root`; through the bridge, with
    its own run id per run, when `pipeline` is given. The same `root` gives the same paths in the output.

    `wrapper`: argv put in front of everything (e.g. a shell that closes stdin). `prompt_argument`
    replaces Codex's PROMPT argument ("-", or "" for none). `stdin_data` is written to a pipe on
    Codex's (or the bridge's) stdin instead of /dev/null."""
    scenario = SCENARIOS[name]
    if root.exists():
        shutil.rmtree(root)
    played = Played(sandbox=None, runs=[], turns=[], answers=[], prompts=[], run_ids=[], requests=[])  # type: ignore[arg-type]
    with MockResponsesServer() as server:
        sandbox = CodexSandbox(codex, server, root, version=version, model=sandbox_model,
                               request_max_retries=scenario.request_max_retries,
                               stream_max_retries=scenario.stream_max_retries)
        if not config_model:
            without_config_model(sandbox)
        played.sandbox = sandbox
        plays = [(scenario.first_run, scenario.first_prompt)] if scenario.first_run else []
        plays.append((scenario.script, scenario.prompt))
        thread = None
        for index, (script_of, prompt) in enumerate(plays):
            script = script_of(sandbox.tools)
            server.enqueue(*script)
            before, bodies_before = len(server.requests), len(server.response_requests())
            argv = sandbox.argv(prompt, *codex_options, resume=thread if index else None, json_flag=json_flag)
            if prompt_argument is not None:
                argv = argv[:-1] + ([prompt_argument] if prompt_argument else [])
            stdin: Any = subprocess.DEVNULL
            if stdin_data is not None:
                stdin, writer = os.pipe()
                os.write(writer, stdin_data)  # small: fits the pipe's buffer
                os.close(writer)
            extra_env = None
            if pipeline is not None:
                run_id = new_run_id(f"{name}-{index}")
                played.run_ids.append(run_id)
                argv = [*BRIDGE, "--run-id", run_id, *bridge_options, "--", *argv]
                extra_env = bridge_env(pipeline)
            try:
                run = sandbox.run(prompt, argv=[*wrapper, *argv], extra_env=extra_env, stdin=stdin, timeout=HANG_GUARD)
            finally:
                if isinstance(stdin, int) and stdin >= 0:
                    os.close(stdin)
            assert not run.timed_out, run.stderr
            answers = [r.answered_with for r in server.requests[before:] if r.path.rstrip("/").endswith("/responses")]
            played.runs.append(run)
            played.prompts.append(prompt)
            played.answers.append(answers)
            played.requests.append(server.response_requests()[bodies_before:])
            played.turns.append([entry for entry in script[:len(answers)] if isinstance(entry, ModelTurn)])
            thread = run.thread_id
        assert server.remaining == 0, f"the script was not played to its end: {[(r.exit_code, r.stderr[-2000:]) for r in played.runs]}"
    return played


THREAD_ID = re.compile(rb'"(thread_id|session_id)":"[^"]*"')
LEGACY_DURATION = re.compile(r'"duration":\{"secs":\d+,"nanos":\d+\}')


def comparable(stdout: bytes, version: str) -> Any:
    """stdout with what differs between two Codex runs of one script masked: the thread id. For the
    legacy stream also the header's key order, measured durations, and how a command's output was
    cut into `exec_command_output_delta` chunks (compared joined, per call and stream)."""
    masked = THREAD_ID.sub(rb'"\1":"<thread>"', stdout)
    if version != LEGACY:
        return masked
    lines, output = [], {}
    for line in masked.decode().splitlines():
        event = json.loads(LEGACY_DURATION.sub('"duration":"<measured>"', line))
        msg = event.get("msg") or {}
        if msg.get("type") == "exec_command_output_delta":
            key = (msg["call_id"], msg["stream"])
            output[key] = output.get(key, b"") + base64.b64decode(msg["chunk"])
        else:
            lines.append(event)
    return lines, output


def assert_same_behaviour(direct: Played, bridged: Played, version: str = CURRENT) -> None:
    assert len(direct.runs) == len(bridged.runs)
    for alone, wrapped in zip(direct.runs, bridged.runs):
        assert wrapped.exit_code == alone.exit_code, wrapped.stderr
        assert comparable(wrapped.stdout, version) == comparable(alone.stdout, version)
        assert wrapped.stdout, "Codex printed nothing"
    assert direct.answers == bridged.answers


def both_ways(codex: Path, name: str, tmp_path: Path, pipeline: Stack, **options: Any) -> Played:
    """The scenario without the bridge, then with it in the same paths; they must behave the same."""
    bridge_options = options.pop("bridge_options", ())
    version = options.get("version", CURRENT)
    direct = play(codex, name, tmp_path / "codex", **options)
    bridged = play(codex, name, tmp_path / "codex", pipeline=pipeline, bridge_options=bridge_options, **options)
    assert_same_behaviour(direct, bridged, version)
    return bridged


# ---- the trace at the receiver ---------------------------------------------------------------------


def shown(value: Any) -> Any:
    """A metadata value as Langfuse shows it: stored raw, decoded when it is JSON (strings are sent
    as themselves, other values as JSON)."""
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


@dataclass
class Trace:
    spans: list
    scores: dict[str, float]
    stored: Any = None  # the trace as a user sees it (receiver.trace)

    @property
    def root(self):
        [root] = [span for span in self.spans if span.parent_span_id is None]
        return root

    def named(self, name: str) -> list:
        return [span for span in self.spans if span.name == name]

    @property
    def observations(self) -> Counter:
        return Counter((span.type, span.name, span.level) for span in self.spans)

    def trace_metadata(self, key: str) -> Any:
        return shown(self.stored.metadata.get(key))


def settled_trace(pipeline: Stack, run_id: str) -> Trace:
    pipeline.wait(lambda: pipeline.settled([run_id]), timeout=HANG_GUARD, what=f"run {run_id} to settle")
    trace = trace_id(run_id)
    scores = {score.name: score.value for score in pipeline.receiver.scores() if score.trace_id == trace}
    return Trace(pipeline.receiver.spans(trace), scores, pipeline.receiver.trace(trace))


def scripted_usage(turns: list[ModelTurn], cache_writes: bool = True) -> dict[str, int]:
    """The usage Codex must report for these model calls, in the exec stream's terms. Codex before
    0.145 (`cache_writes=False`) does not report cache writes: they stay in the input count."""
    return {
        "input_tokens": sum(turn.usage.input_tokens for turn in turns),
        "cached_input_tokens": sum(turn.usage.cached_input_tokens for turn in turns),
        "cache_write_input_tokens": sum(turn.usage.cache_write_tokens for turn in turns) if cache_writes else 0,
        "output_tokens": sum(turn.usage.output_tokens for turn in turns),
        "reasoning_output_tokens": sum(turn.usage.reasoning_tokens for turn in turns),
    }


def check_trace(pipeline: Stack, played: Played, index: int, observations: dict, scores: dict[str, float], *,
                model: str = MODEL, tags: tuple[str, ...] = (), earlier_usage: dict | None = None) -> Trace:
    """The trace of run `index` of a bridged scenario: exactly `observations` ((type, name, level) ->
    count, the root included), parent links, times, one copy each, the trace attributes, the
    generation's usage (from the script) and cost (from prices.json), and the derived scores."""
    run = played.runs[index]
    trace = settled_trace(pipeline, played.run_ids[index])
    assert trace.observations == Counter(observations)
    # the generic reading of the stream (also used for every recording) agrees, span by span
    expected = expected_trace(run.events, earlier_usage)
    expected.model = model
    root = assert_trace_shape(trace.spans, expected)
    assert root.attributes.get("session.id") == run.thread_id
    assert root.input == played.prompts[index] == played.prompt_codex_sent(index)
    assert sorted(root.attributes.get("langfuse.trace.tags") or []) == sorted(tags)
    assert trace.trace_metadata("codex_version") == played.sandbox.version
    assert trace.trace_metadata("model") == model
    assert trace.trace_metadata("exit_code") == run.exit_code
    assert root.attributes.get("langfuse.release") == played.sandbox.version
    assert trace.stored.metadata["run_id"] == played.run_ids[index]  # a string, stored as itself
    for span in trace.spans:  # every span repeats the trace attributes; they must agree
        assert span.attributes.get("session.id") == run.thread_id
        # trace metadata only on the root: Langfuse merges it into each span's own
        assert span.parent_span_id is None or not any(k.startswith("langfuse.trace.metadata.") for k in span.attributes)
    messages = run.items("agent_message")
    assert root.output == (messages[-1]["text"] if messages else None)
    ends = [event["type"] for event in run.events if event.get("type") in ("turn.completed", "turn.failed")]
    outcome = {"turn.completed": "completed", "turn.failed": "failed"}[ends[-1]] if ends else "aborted"
    assert root.metadata["outcome"] == outcome
    generations = [span for span in trace.spans if span.type == "generation"]
    if run.usage is not None:
        [generation] = generations
        want = usage_buckets(scripted_usage(played.turns[index]))
        assert generation.usage_details == want
        assert generation.model == model
        assert generation.cost_details == pytest.approx(expected_cost(model, want), rel=1e-9)
    for generation in generations:  # the sandbox's config.toml, as the bridge read it
        parameters = pipeline.receiver.stored(generation.span_id).model_parameters
        assert (parameters["sandbox_mode"], parameters["approval_policy"]) == ("danger-full-access", "never")
    assert trace.scores == scores
    return trace


def of_kind(trace: Trace, kind: str) -> list:
    """Spans of one type in the order Codex produced them."""
    return sorted((span for span in trace.spans if span.type == kind), key=lambda span: span.start_time_unix_nano)


def root_and(*others: tuple[tuple[str, str, str], int], root_level: str = "DEFAULT") -> dict:
    return {("agent", "codex exec", root_level): 1, **dict(others)}


SUCCESS = {"success": 1.0, "failed_commands": 0.0, "files_changed": 0.0, "errors": 0.0}
COMPLETED_TURN = (("generation", "turn 1", "DEFAULT"), 1)
ONE_MESSAGE = (("event", "agent_message", "DEFAULT"), 1)


# ---- one test per scenario (Codex 0.169.0) -----------------------------------------------------------


def test_command_ok(codex_current, pipeline, tmp_path):
    played = both_ways(codex_current, "command_ok", tmp_path, pipeline,
                       bridge_options=("--tag", "e2e", "--tag", "command_ok", "--metadata", "ci_job=e2e-42"))
    run = played.runs[0]
    assert run.usage == scripted_usage(played.turns[0])  # Codex reports what the script said: the oracle holds
    trace = check_trace(pipeline, played, 0, root_and(COMPLETED_TURN, ONE_MESSAGE, (("tool", "command", "DEFAULT"), 1)),
                        SUCCESS, tags=("e2e", "command_ok"))
    assert trace.trace_metadata("ci_job") == "e2e-42"
    [command] = trace.named("command")
    [item] = run.items("command_execution")
    assert (command.input, command.output) == (item["command"], "hello-from-mock\n")
    assert json.loads(command.metadata["exit_code"]) == 0


def test_the_model_given_to_the_bridge_wins_over_codex_config(codex_current, pipeline, tmp_path):
    """The one test that passes --model; Codex's own config names another model."""
    played = both_ways(codex_current, "command_ok", tmp_path, pipeline, sandbox_model="mock-model",
                       bridge_options=("--model", MODEL))
    check_trace(pipeline, played, 0, root_and(COMPLETED_TURN, ONE_MESSAGE, (("tool", "command", "DEFAULT"), 1)), SUCCESS)


def test_command_failed_with_the_model_from_dash_m(codex_current, pipeline, tmp_path):
    played = both_ways(codex_current, "command_failed", tmp_path, pipeline, config_model=False, codex_options=("-m", MODEL))
    trace = check_trace(pipeline, played, 0, root_and(COMPLETED_TURN, ONE_MESSAGE, (("tool", "command", "ERROR"), 1)),
                        {**SUCCESS, "failed_commands": 1.0})
    [command] = trace.named("command")
    assert command.status_message == "exit code 2"
    assert "No such file or directory" in command.output
    assert json.loads(command.metadata["exit_code"]) == 2


def test_apply_patch_writes_the_file_with_the_model_from_dash_c(codex_current, pipeline, tmp_path):
    played = both_ways(codex_current, "apply_patch", tmp_path, pipeline, config_model=False,
                       codex_options=("-c", f'model="{MODEL}"'))
    assert (played.sandbox.workspace / "hello.txt").read_text() == "hello again from the mock model\n"
    trace = check_trace(pipeline, played, 0, root_and(COMPLETED_TURN, ONE_MESSAGE, (("tool", "file_change", "DEFAULT"), 2)),
                        {**SUCCESS, "files_changed": 1.0})
    hello = str(played.sandbox.workspace / "hello.txt")
    assert [json.loads(span.input) for span in of_kind(trace, "tool")] == [
        {"changes": [{"path": hello, "kind": "add"}]}, {"changes": [{"path": hello, "kind": "update"}]}]
    assert json.loads(trace.root.metadata["files_changed"]) == [hello]


def test_mcp_tool_call(codex_current, pipeline, tmp_path):
    played = both_ways(codex_current, "mcp_call", tmp_path, pipeline)
    trace = check_trace(pipeline, played, 0, root_and(COMPLETED_TURN, ONE_MESSAGE, (("tool", "echo.say", "DEFAULT"), 1)), SUCCESS)
    [call] = trace.named("echo.say")
    assert json.loads(call.input) == {"text": "hi from mock"}
    assert json.loads(call.output)["structured_content"] == {"echoed": "hi from mock"}
    assert (call.metadata["server"], call.metadata["tool"]) == ("echo", "say")


def test_web_search(codex_current, pipeline, tmp_path):
    played = both_ways(codex_current, "web_search", tmp_path, pipeline)
    trace = check_trace(pipeline, played, 0, root_and(COMPLETED_TURN, ONE_MESSAGE, (("tool", "web_search", "DEFAULT"), 1)), SUCCESS)
    [search] = trace.named("web_search")
    assert json.loads(search.input)["query"] == "langfuse codex integration"
    assert search.metadata["item_id"] == "item_0"  # the first of the two "id" keys Codex prints


def test_plan_updates(codex_current, pipeline, tmp_path):
    played = both_ways(codex_current, "plan", tmp_path, pipeline)
    trace = check_trace(pipeline, played, 0, root_and(COMPLETED_TURN, ONE_MESSAGE, (("tool", "command", "DEFAULT"), 1),
                                                   (("event", "plan", "DEFAULT"), 3)), SUCCESS)
    plans = [[step["completed"] for step in json.loads(span.output)] for span in of_kind(trace, "event") if span.name == "plan"]
    assert plans == [[False, False, False], [True, False, False], [True, True, True]]


def test_reasoning_summaries_and_several_agent_messages(codex_current, pipeline, tmp_path):
    played = both_ways(codex_current, "reasoning", tmp_path, pipeline)
    trace = check_trace(pipeline, played, 0, root_and(COMPLETED_TURN, (("tool", "command", "DEFAULT"), 1),
                                                   (("event", "reasoning", "DEFAULT"), 2),
                                                   (("event", "agent_message", "DEFAULT"), 3)), SUCCESS)
    # two messages come in one model response, maybe in one read: compared as a set, the last is the answer
    assert Counter(span.output for span in trace.named("agent_message")) == Counter([
        "Let me look at the workspace first.", "The workspace has no files yet.", "Final answer: nothing to list."])
    assert trace.root.output == "Final answer: nothing to list."
    reasonings = [span.output for span in of_kind(trace, "event") if span.name == "reasoning"]
    assert "**Reading the request**" in reasonings[0] and "**Choosing a command**" in reasonings[0]  # one item, two parts
    assert "**Summarising**" in reasonings[1]
    [generation] = trace.named("turn 1")
    assert generation.usage_details["output_reasoning_tokens"] == 110


def test_turn_failed_on_http_400(codex_current, pipeline, tmp_path):
    played = both_ways(codex_current, "turn_failed", tmp_path, pipeline)
    assert played.runs[0].exit_code == 1  # the bridge exits with Codex's code
    trace = check_trace(pipeline, played, 0, root_and((("generation", "turn 1", "ERROR"), 1), (("event", "error", "ERROR"), 1),
                                                   root_level="ERROR"),
                        {**SUCCESS, "success": 0.0, "errors": 1.0})
    message = "mock: invalid request (scenario=turn_failed)"
    assert trace.named("turn 1")[0].status_message == message
    # `run` passed the end of Codex's stderr on with the failed run: its last line follows on the root
    stderr_lines = [line.strip() for line in played.runs[0].stderr.splitlines() if line.strip()]
    assert trace.root.status_message == f"{message}; codex stderr: {stderr_lines[-1]}"
    assert trace.named("turn 1")[0].usage_details is None
    assert trace.trace_metadata("exit_code") == 1


def test_retries_on_http_500_are_warnings_and_the_trace_completes(codex_current, pipeline, tmp_path):
    played = both_ways(codex_current, "retry_500", tmp_path, pipeline)
    assert played.answers[0] == ["fault 500", "fault 500", "turn"]
    trace = check_trace(pipeline, played, 0, root_and(COMPLETED_TURN, ONE_MESSAGE, (("event", "error", "WARNING"), 2)), SUCCESS)
    assert [span.status_message.split(" (")[0] for span in of_kind(trace, "event") if span.name == "error"] == [
        "Reconnecting... 1/2", "Reconnecting... 2/2"]


def test_resume_reports_only_the_new_tokens_in_the_same_session(codex_current, pipeline, tmp_path):
    played = both_ways(codex_current, "resume", tmp_path, pipeline)
    first, resumed = played.runs
    assert resumed.thread_id == first.thread_id is not None
    assert resumed.usage == scripted_usage(played.turns[0] + played.turns[1])  # Codex: thread-cumulative
    check_trace(pipeline, played, 0, root_and(COMPLETED_TURN, ONE_MESSAGE, (("tool", "command", "DEFAULT"), 1)), SUCCESS)
    # check_trace holds the resumed run's generation to its own scripted turns: cumulative - first run
    second = check_trace(pipeline, played, 1, root_and(COMPLETED_TURN, ONE_MESSAGE), SUCCESS, earlier_usage=first.usage)
    assert second.root.attributes["session.id"] == first.thread_id
    assert json.loads(second.named("turn 1")[0].metadata["usage_reported_by_codex"])["input_tokens"] == resumed.usage["input_tokens"]


# ---- Codex's own behaviour through the bridge --------------------------------------------------------

SIGNAL_RECORDER = '''
"""Stands between the bridge and Codex's launcher and records each SIGINT it receives (si_code,
si_pid); like the npm launcher, it passes on a SIGINT sent to it alone (kill), not one the terminal
sent to the whole foreground group, which reached Codex already."""
import json, os, signal, subprocess, sys

log_path, command = sys.argv[1], sys.argv[2:]
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
child = subprocess.Popen(command, preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}))
received = []
while child.poll() is None:
    info = signal.sigtimedwait({signal.SIGINT}, 0.05)
    if info is not None:
        received.append({"si_code": info.si_code, "si_pid": info.si_pid})
        if info.si_code == 0:  # SI_USER
            child.send_signal(signal.SIGINT)
with open(log_path, "w") as log:
    json.dump(received, log)
sys.exit(child.returncode if child.returncode >= 0 else 128 - child.returncode)
'''


def _command_started(line: bytes) -> bool:
    return b'"item.started"' in line and b'"command_execution"' in line


def interrupted_directly(codex: Path, root: Path) -> CodexRun:
    """The `interrupted` scenario without the bridge: one SIGINT to Codex once its command runs."""
    scenario = SCENARIOS["interrupted"]
    if root.exists():
        shutil.rmtree(root)
    with MockResponsesServer() as server:
        sandbox = CodexSandbox(codex, server, root, version=CURRENT)
        server.enqueue(*scenario.script(sandbox.tools))
        run = sandbox.run(scenario.prompt, timeout=HANG_GUARD, interrupt_when=scenario.interrupt_when)
    assert run.interrupted and not run.timed_out
    return run


def interrupted_through_the_bridge(codex: Path, root: Path, pipeline: Stack, how: str) -> tuple[Played, list[dict], int]:
    """The `interrupted` scenario through the bridge with the signal recorder in front of Codex.
    how="terminal": the bridge runs on a pseudo-terminal (its controlling terminal, its process group
    in the foreground) and ^C is typed on it. how="kill": SIGINT to the bridge's pid alone."""
    if root.exists():
        shutil.rmtree(root)
    run_id = new_run_id(f"interrupt-{how}")
    recorder = root.parent / f"record_sigint_{how}.py"
    recorder.write_text(SIGNAL_RECORDER)
    log = root.parent / f"sigint_{how}.json"
    with MockResponsesServer() as server:
        sandbox = CodexSandbox(codex, server, root, version=CURRENT)
        server.enqueue(*SCENARIOS["interrupted"].script(sandbox.tools))
        prompt = SCENARIOS["interrupted"].prompt
        argv = [*BRIDGE, "--run-id", run_id, "--", sys.executable, str(recorder), str(log), *sandbox.argv(prompt)]
        controller = terminal = None
        if how == "terminal":
            controller, terminal = os.openpty()
            bridge = subprocess.Popen(argv, cwd=sandbox.workspace, env={**sandbox.env(), **bridge_env(pipeline)},
                                      stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      start_new_session=True, preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        else:
            bridge = sandbox.start(argv, extra_env=bridge_env(pipeline))
        stdout, stderr_chunks = b"", []
        stderr_reader = threading.Thread(target=lambda: stderr_chunks.append(bridge.stderr.read()), daemon=True)
        stderr_reader.start()
        watchdog = threading.Timer(HANG_GUARD, lambda: os.killpg(bridge.pid, signal.SIGKILL))
        watchdog.start()
        try:
            for line in bridge.stdout:
                stdout += line
                if _command_started(line):
                    if how == "terminal":
                        os.write(controller, b"\x03")  # the terminal signals its foreground group
                    else:
                        bridge.send_signal(signal.SIGINT)
            exit_code = bridge.wait()
        finally:
            watchdog.cancel()
            try:
                os.killpg(bridge.pid, signal.SIGKILL)  # whatever Codex left behind in the group
            except ProcessLookupError:
                pass
            bridge.wait()
            stderr_reader.join(timeout=10)
            bridge.stdout.close()
            bridge.stderr.close()
            for fd in (controller, terminal):
                if fd is not None:
                    os.close(fd)
    assert exit_code != -signal.SIGKILL, "the hang guard killed the run"
    stderr = b"".join(stderr_chunks).decode(errors="replace")
    run = CodexRun(argv=argv, stdout=stdout, stderr=stderr, exit_code=exit_code, interrupted=True)
    played = Played(sandbox=sandbox, runs=[run], turns=[[]], answers=[[]], prompts=[prompt], run_ids=[run_id],
                    requests=[server.response_requests()])
    return played, json.loads(log.read_text()), bridge.pid


ABORTED = root_and((("generation", "turn 1", "ERROR"), 1), (("tool", "command", "WARNING"), 1), root_level="ERROR")


@pytest.mark.parametrize("how", ["terminal", "kill"])
def test_ctrl_c_reaches_codex_exactly_once_and_the_run_is_an_aborted_trace(codex_current, pipeline, tmp_path, how):
    direct = interrupted_directly(codex_current, tmp_path / "codex")
    played, received, bridge_pid = interrupted_through_the_bridge(codex_current, tmp_path / "codex", pipeline, how)
    if how == "terminal":
        assert received == [{"si_code": SI_KERNEL, "si_pid": 0}]  # from the terminal; the bridge added none
    else:
        assert received == [{"si_code": SI_USER, "si_pid": bridge_pid}]  # forwarded by the bridge, once
    run = played.runs[0]
    assert run.exit_code == direct.exit_code == 1, run.stderr
    assert comparable(run.stdout, CURRENT) == comparable(direct.stdout, CURRENT)
    trace = check_trace(pipeline, played, 0, ABORTED, {**SUCCESS, "success": 0.0})
    aborted = "aborted: the stream ended without turn.completed or turn.failed (exit code 1)"
    stderr_lines = [line.strip() for line in run.stderr.splitlines() if line.strip()]  # Codex's, passed on by `run`
    assert trace.root.status_message == (f"{aborted}; codex stderr: {stderr_lines[-1]}" if stderr_lines else aborted)
    [command] = trace.named("command")
    assert command.input == "/bin/bash -lc 'sleep 30'"


CLOSE_STDIN = ("sh", "-c", 'exec "$@" <&-', "sh")


@pytest.mark.parametrize("stdin", ["closed", "dev-null"])
def test_a_closed_or_empty_stdin_works(codex_current, pipeline, tmp_path, stdin):
    played = both_ways(codex_current, "command_ok", tmp_path, pipeline, wrapper=CLOSE_STDIN if stdin == "closed" else ())
    check_trace(pipeline, played, 0, root_and(COMPLETED_TURN, ONE_MESSAGE, (("tool", "command", "DEFAULT"), 1)), SUCCESS)


@pytest.mark.parametrize("prompt_argument", ["-", ""], ids=["dash", "no-prompt-argument"])
def test_a_prompt_on_stdin_is_the_root_input(codex_current, pipeline, tmp_path, prompt_argument):
    prompt = SCENARIOS["command_ok"].prompt
    played = both_ways(codex_current, "command_ok", tmp_path, pipeline, prompt_argument=prompt_argument,
                       stdin_data=prompt.encode())
    assert played.prompt_codex_sent(0) == prompt
    check_trace(pipeline, played, 0, root_and(COMPLETED_TURN, ONE_MESSAGE, (("tool", "command", "DEFAULT"), 1)), SUCCESS)


def test_a_prompt_argument_with_more_input_on_stdin_is_the_root_input(codex_current, pipeline, tmp_path):
    """Codex 0.169 reads a piped stdin after a prompt argument too, and sends both; the trace's input
    shows both, as they were given (Codex's way of joining them is its own and changes)."""
    played = both_ways(codex_current, "command_ok", tmp_path, pipeline, stdin_data=b"Extra context piped on stdin.")
    sent = played.prompt_codex_sent(0)
    assert SCENARIOS["command_ok"].prompt in sent and "Extra context piped on stdin." in sent
    trace = settled_trace(pipeline, played.run_ids[0])
    assert json.loads(trace.root.input) == {"prompt": SCENARIOS["command_ok"].prompt,
                                            "stdin": "Extra context piped on stdin."}


# ---- Codex 0.42.0: the legacy stream, live ---------------------------------------------------------------

LEGACY_OBSERVATIONS = {
    "command_ok": {("tool", "command", "DEFAULT"): 1, ("event", "agent_message", "DEFAULT"): 1},
    "apply_patch": {("tool", "file_change", "DEFAULT"): 2, ("event", "agent_message", "DEFAULT"): 1},
    "plan": {("event", "plan", "DEFAULT"): 3, ("tool", "command", "DEFAULT"): 1, ("event", "agent_message", "DEFAULT"): 1},
    "full": {("event", "reasoning", "DEFAULT"): 2, ("event", "plan", "DEFAULT"): 2, ("tool", "command", "DEFAULT"): 1,
             ("tool", "command", "ERROR"): 1, ("tool", "file_change", "DEFAULT"): 1, ("tool", "echo.say", "DEFAULT"): 1,
             ("tool", "web_search", "DEFAULT"): 1, ("event", "agent_message", "DEFAULT"): 1},
}


@pytest.mark.parametrize("name", list(LEGACY_OBSERVATIONS))
def test_legacy_codex_one_generation_per_model_request(codex_legacy, pipeline, tmp_path, name):
    """0.42.0 --json ({"id","msg"} lines, no terminal event) through the bridge. config.toml names no
    model, so the bridge knows none: the model is the one Codex's legacy header names."""
    played = both_ways(codex_legacy, name, tmp_path, pipeline, version=LEGACY, config_model=False)
    run = played.runs[0]
    header = run.events[0]
    assert set(header) >= {"workdir", "model"} and header["model"] == MODEL
    trace = settled_trace(pipeline, played.run_ids[0])
    requests = played.answers[0].count("turn")
    assert requests == len(played.turns[0]) > 1
    generations = {("generation", f"model request {n}", "DEFAULT"): 1 for n in range(1, requests + 1)}
    assert trace.observations == Counter(root_and(*LEGACY_OBSERVATIONS[name].items(), *generations.items()))
    expected = expected_trace(run.events)
    assert expected.model == MODEL
    root = assert_trace_shape(trace.spans, expected)
    for number, turn in enumerate(played.turns[0], start=1):  # each request's own usage, from the script
        [generation] = trace.named(f"model request {number}")
        want = usage_buckets(scripted_usage([turn], cache_writes=False))
        assert generation.usage_details == want
        assert generation.model == MODEL
        assert generation.cost_details == pytest.approx(expected_cost(MODEL, want), rel=1e-9)
    assert root.input == played.prompts[0] == played.prompt_codex_sent(0)
    assert root.output == [e["msg"]["message"] for e in run.events if e.get("msg", {}).get("type") == "agent_message"][-1]
    assert (trace.trace_metadata("model"), trace.trace_metadata("codex_version")) == (MODEL, LEGACY)
    assert trace.scores == expected.scores
    if name == "apply_patch":
        assert (played.sandbox.workspace / "hello.txt").read_text() == "hello again from the mock model\n"
        assert trace.scores["files_changed"] == 1.0


def test_legacy_codex_experimental_json_maps_without_usage(codex_legacy, pipeline, tmp_path):
    """0.42.0 --experimental-json: session.created gives the session id, items carry item_type, and
    there is no usage (so no generation). The outcome of such a run is checked in
    test_recorded_runs (a reported bug)."""
    played = both_ways(codex_legacy, "full", tmp_path, pipeline, version=LEGACY, json_flag="--experimental-json")
    run = played.runs[0]
    assert run.events[0]["type"] == "session.created"
    trace = settled_trace(pipeline, played.run_ids[0])
    expected = expected_trace(run.events)
    expected.model = MODEL  # from the sandbox's config.toml (unused: this format reports no usage)
    root = assert_trace_shape(trace.spans, expected, check_root_level=False)
    assert root.attributes["session.id"] == run.thread_id
    assert Counter((s.type, s.name, s.level) for s in trace.spans if s.type != "agent") == Counter({
        ("event", "reasoning", "DEFAULT"): 2, ("event", "plan", "DEFAULT"): 2, ("tool", "command", "DEFAULT"): 1,
        ("tool", "command", "ERROR"): 1, ("tool", "file_change", "DEFAULT"): 1, ("event", "agent_message", "DEFAULT"): 1})
    assert not [span for span in trace.spans if span.type == "generation"]
    assert root.input == played.prompts[0]
    assert trace.trace_metadata("model") == MODEL  # from the sandbox's config.toml
    assert {name: value for name, value in trace.scores.items() if name != "success"} == {
        "failed_commands": 1.0, "files_changed": 1.0, "errors": 0.0}
