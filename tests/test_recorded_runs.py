"""Every recording under tests/fixtures/recorded/ through `codex-langfuse tee` into a whole pipeline.

Each `.jsonl` there is the verbatim stdout of a released Codex (see that directory's README). It is
piped through `codex-langfuse tee` (a real process) into a `Stack` (redis-server, dispatcher and
worker processes, the strict Langfuse receiver) and the trace is checked at the receiver.

The expectation is built per file, from the file and its `manifest.json` entry, not written down
per scenario, so a recording of another Codex version dropped into the directory is checked the
same way: `expected_trace` reads the stream as the design describes it (DESIGN.md, "What a user
sees") and says which observations, levels, usage and scores the trace must have. The manifest
says how the recording was made (argv, exit code, interruption, the kinds of events printed,
how the scripted model answered) and is checked against the file.

The last tests feed streams that mix formats, or hold lines of no known format: never fatal.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from codex_langfuse.ingest.observations import trace_id
from tests.support.codex_harness import RECORDED_DIR, event_kind, parse_events
from tests.support.stack import Stack

pytestmark = pytest.mark.integration
# the recordings go to a receiver of the v3 line: one score per request, the v1 listing (tests/conftest.py)
PIPELINE_PROFILE = "v3"

REPO = Path(__file__).resolve().parents[1]
PRICES = json.loads((REPO / "ingest" / "prices.json").read_text())["models"]
RECORDINGS = sorted(RECORDED_DIR.glob("*/*.jsonl"))
SETTLE_GUARD = 90  # seconds: a hang guard, never the thing asserted

# the current format's tool items and how the trace names them
TOOL_ITEMS = ("command_execution", "file_change", "mcp_tool_call", "web_search", "collab_tool_call")
# 0.42 --experimental-json named some item types differently
EXPERIMENTAL_ITEM_TYPES = {"assistant_message": "agent_message"}
# legacy streaming fragments whose content comes again, whole, in a later event
LEGACY_FRAGMENTS = {
    "exec_command_output_delta", "agent_message_delta", "agent_reasoning_delta",
    "agent_reasoning_raw_content_delta", "agent_reasoning_section_break", "turn_diff",
    "session_configured", "background_event",
}
LEGACY_RUN_EVENTS = {"task_started", "task_complete", "turn_aborted"}


# ---- what the trace of a stream must be -----------------------------------------------------------


def usage_buckets(usage: dict[str, Any]) -> dict[str, int]:
    """Langfuse's exclusive buckets from a Codex usage: cached (and cache writes) are part of input,
    reasoning part of output, and `total` is input + output."""
    count = {key: int(usage.get(key) or 0) for key in (
        "input_tokens", "cached_input_tokens", "cache_write_input_tokens", "output_tokens", "reasoning_output_tokens")}
    buckets = {
        "input": count["input_tokens"] - count["cached_input_tokens"] - count["cache_write_input_tokens"],
        "input_cached_tokens": count["cached_input_tokens"],
        "output": count["output_tokens"] - count["reasoning_output_tokens"],
        "output_reasoning_tokens": count["reasoning_output_tokens"],
    }
    if count["cache_write_input_tokens"]:
        buckets["input_cache_creation"] = count["cache_write_input_tokens"]
    buckets["total"] = count["input_tokens"] + count["output_tokens"]
    return buckets


def usage_minus(later: dict[str, Any], earlier: dict[str, Any]) -> dict[str, int]:
    return {key: int(later.get(key) or 0) - int(earlier.get(key) or 0) for key in set(later) | set(earlier)
            if isinstance(later.get(key, 0), int) and isinstance(earlier.get(key, 0), int)}


def expected_cost(model: str, buckets: dict[str, int]) -> dict[str, float] | None:
    """Cost from the rates in ingest/prices.json (USD per 1M tokens, standard tier): cache reads and
    writes without a price of their own cost the input rate, reasoning the output rate."""
    entry = PRICES.get(model.lower())
    if entry is None:
        return None
    rates = entry["prices"]
    rate = {
        "input": rates["input"],
        "input_cached_tokens": rates.get("input_cached_tokens", rates["input"]),
        "input_cache_creation": rates.get("input_cache_creation", rates["input"]),
        "output": rates["output"],
        "output_reasoning_tokens": rates.get("output_reasoning_tokens", rates["output"]),
    }
    costs = {bucket: Decimal(count) * Decimal(rate[bucket]) / Decimal(1_000_000)
             for bucket, count in buckets.items() if bucket != "total" and count}
    result = {bucket: float(cost) for bucket, cost in costs.items()}
    result["total"] = float(sum(costs.values(), Decimal(0)))
    return result


def stream_format(events: list[dict[str, Any]]) -> str:
    if any(isinstance(event.get("msg"), dict) for event in events):
        return "legacy"
    if any(str(event.get("type", "")).startswith("session.") for event in events) or any(
            isinstance(event.get("item"), dict) and "item_type" in event["item"] for event in events):
        return "experimental"
    return "current"


@dataclass
class Expected:
    """What the trace of one stream must hold."""

    format: str
    observations: Counter = field(default_factory=Counter)  # (type, name, level) -> count, root included
    generations: dict[str, dict[str, int] | None] = field(default_factory=dict)  # name -> usage buckets
    model: str | None = None
    root_level: str = "DEFAULT"
    prompt: str | None = None
    final_message: str | None = None
    session_id: str | None = None
    succeeded: bool = True
    failed_commands: int = 0
    files: set[str] = field(default_factory=set)
    errors: int = 0

    @property
    def scores(self) -> dict[str, float]:
        return {"success": 1.0 if self.succeeded else 0.0, "failed_commands": float(self.failed_commands),
                "files_changed": float(len(self.files)), "errors": float(self.errors)}


def _current_tool(item: dict[str, Any], kind: str, completed: bool, expected: Expected) -> tuple[str, str]:
    """(name, level) of the tool observation of a current-format item."""
    status = item.get("status")
    level = "DEFAULT"
    if kind == "command_execution":
        name = "command"
        if status in ("failed", "declined") or item.get("exit_code") not in (None, 0):
            level = "ERROR"
            if completed:
                expected.failed_commands += 1
    elif kind == "file_change":
        name = "file_change"
        if status == "failed":
            level = "ERROR"
        elif completed:
            expected.files.update(change.get("path") for change in item.get("changes") or [] if change.get("path"))
    elif kind == "mcp_tool_call":
        server, tool = item.get("server") or "", item.get("tool") or ""
        name = f"{server}.{tool}" if server else (tool or "mcp_tool_call")
        if item.get("error") is not None or status == "failed":
            level = "ERROR"
    elif kind == "collab_tool_call":
        name = f"subagent.{item['tool']}" if item.get("tool") else "subagent"
        if status == "failed":
            level = "ERROR"
    else:
        name = "web_search"
    if not completed:
        level = "ERROR" if level == "ERROR" else "WARNING"
    return name, level


def _expect_current(events: list[dict[str, Any]], expected: Expected, earlier_usage: dict[str, Any] | None) -> None:
    observations = expected.observations
    turns, turn_open, outcome = 0, False, None
    open_tools: dict[str, tuple[str, dict[str, Any]]] = {}
    plans: dict[str, list] = {}
    for index, event in enumerate(events):
        kind = event.get("type")
        following = events[index + 1].get("type") if index + 1 < len(events) else None
        if kind in ("thread.started", "session.created"):
            expected.session_id = event.get("thread_id") or event.get("session_id")
        elif kind == "turn.started":
            turns, turn_open = turns + 1, True
        elif kind in ("item.started", "item.updated", "item.completed"):
            item = event["item"]
            item_type = item.get("type") or EXPERIMENTAL_ITEM_TYPES.get(item.get("item_type"), item.get("item_type"))
            if item_type == "todo_list":
                steps = [(step.get("text"), bool(step.get("completed"))) for step in item.get("items") or []]
                if plans.get(item["id"]) != steps:  # a repeated plan (item.completed) is no new plan
                    plans[item["id"]] = steps
                    observations["event", "plan", "DEFAULT"] += 1
            elif item_type in TOOL_ITEMS:
                if kind == "item.completed":
                    open_tools.pop(item["id"], None)
                    observations[("tool", *_current_tool(item, item_type, True, expected))] += 1
                else:
                    open_tools[item["id"]] = (item_type, item)
            elif kind == "item.completed":
                if item_type == "agent_message":
                    observations["event", "agent_message", "DEFAULT"] += 1
                    expected.final_message = item.get("text")
                elif item_type == "reasoning":
                    observations["event", "reasoning", "DEFAULT"] += 1
                elif item_type == "error":
                    observations["event", "warning", "WARNING"] += 1
                else:
                    observations["event", f"item:{item_type}", "DEFAULT"] += 1
        elif kind == "error":
            # the error line right before turn.failed is the failure itself
            observations["event", "error", "ERROR" if following == "turn.failed" else "WARNING"] += 1
        elif kind in ("turn.completed", "turn.failed"):
            name = f"turn {max(turns, 1)}"
            if kind == "turn.completed":
                outcome = "completed"
                usage = event.get("usage") or {}
                if earlier_usage is not None:
                    usage = usage_minus(usage, earlier_usage)  # thread-cumulative: this run's share
                expected.generations[name] = usage_buckets(usage)
                observations["generation", name, "DEFAULT"] += 1
            else:
                outcome = "failed"
                expected.errors += 1
                expected.generations[name] = None
                observations["generation", name, "ERROR"] += 1
            turn_open = False
        else:
            observations["event", kind or "unknown", "DEFAULT"] += 1
    for item_type, item in open_tools.values():
        observations[("tool", *_current_tool(item, item_type, False, expected))] += 1
    if turn_open:
        observations["generation", f"turn {turns}", "ERROR"] += 1
        expected.generations[f"turn {turns}"] = None
    if expected.format == "experimental":
        # 0.42 --experimental-json has no turn events at all: like the legacy stream, it just ends
        expected.root_level = "DEFAULT"
        expected.succeeded = True
    else:
        expected.root_level = "DEFAULT" if outcome == "completed" else "ERROR"
        expected.succeeded = outcome == "completed"


def _legacy_tool(begin: dict[str, Any], end: dict[str, Any] | None, expected: Expected) -> tuple[str, str]:
    kind = str(begin.get("type") or (end or {}).get("type"))
    done = end or {}
    level = "DEFAULT"
    if kind.startswith("exec_command"):
        name = "command"
        if end is not None and done.get("exit_code") not in (0, None):
            level = "ERROR"
            expected.failed_commands += 1
    elif kind.startswith("patch_apply"):
        name = "file_change"
        if end is not None and done.get("success") is False:
            level = "ERROR"
        elif end is not None:
            expected.files.update(begin.get("changes") or {})
    elif kind.startswith("mcp_tool_call"):
        invocation = begin.get("invocation") or done.get("invocation") or {}
        server, tool = invocation.get("server", ""), invocation.get("tool", "")
        name = f"{server}.{tool}" if server else (tool or "mcp_tool_call")
        if isinstance(done.get("result"), dict) and "Err" in done["result"]:
            level = "ERROR"
    else:
        name = "web_search"
    return name, ("WARNING" if end is None else level)


def _expect_legacy(events: list[dict[str, Any]], expected: Expected) -> None:
    observations = expected.observations
    open_calls: dict[str, dict[str, Any]] = {}
    last_total = None
    for event in events:
        msg = event.get("msg")
        if not isinstance(msg, dict):
            if "model" in event and "workdir" in event:
                expected.model = event["model"]
            elif set(event) == {"prompt"}:
                expected.prompt = event["prompt"]
            else:
                observations["event", str(event.get("type") or "unknown"), "DEFAULT"] += 1
            continue
        kind = str(msg.get("type", ""))
        if kind in LEGACY_FRAGMENTS:
            continue
        if kind == "token_count":
            info = msg.get("info")
            if isinstance(info, dict):
                if not isinstance(info.get("last_token_usage"), dict):
                    continue
                total = info.get("total_token_usage")
                if isinstance(total, dict):
                    if total == last_total:
                        continue  # 0.36-0.42 print each request's token_count twice
                    last_total = total
                usage = info["last_token_usage"]
            elif "input_tokens" in msg:  # 0.20: one flat usage per request
                usage = msg
            else:
                continue  # info: null, before the first request
            name = f"model request {len(expected.generations) + 1}"
            expected.generations[name] = usage_buckets(usage)
            observations["generation", name, "DEFAULT"] += 1
        elif kind == "agent_reasoning":
            observations["event", "reasoning", "DEFAULT"] += 1
        elif kind == "agent_message":
            observations["event", "agent_message", "DEFAULT"] += 1
            expected.final_message = msg.get("message")
        elif kind == "plan_update":
            observations["event", "plan", "DEFAULT"] += 1
        elif kind == "error":
            observations["event", "error", "WARNING"] += 1  # the legacy stream has no turn.failed
        elif kind.endswith("_begin") and kind.rsplit("_", 1)[0] in ("exec_command", "patch_apply", "mcp_tool_call", "web_search"):
            open_calls[str(msg.get("call_id"))] = msg
        elif kind.endswith("_end") and kind.rsplit("_", 1)[0] in ("exec_command", "patch_apply", "mcp_tool_call", "web_search"):
            begin = open_calls.pop(str(msg.get("call_id")), {})
            observations[("tool", *_legacy_tool(begin, msg, expected))] += 1
        elif kind == "turn_aborted":
            expected.root_level, expected.succeeded = "ERROR", False
        elif kind in LEGACY_RUN_EVENTS:
            if kind == "task_complete" and msg.get("last_agent_message"):
                expected.final_message = msg["last_agent_message"]
        else:
            observations["event", kind or "unknown", "DEFAULT"] += 1
    for begin in open_calls.values():
        observations[("tool", *_legacy_tool(begin, None, expected))] += 1


def expected_trace(events: list[dict[str, Any]], earlier_usage: dict[str, Any] | None = None) -> Expected:
    """The trace a stream must become when piped through `tee` (no model, exit code or Codex version
    known besides what the stream itself says). `earlier_usage`: the thread's cumulative usage before
    this run (a resumed thread, Codex >= 0.98)."""
    expected = Expected(format=stream_format(events))
    if expected.format == "legacy":
        _expect_legacy(events, expected)
    else:
        _expect_current(events, expected, earlier_usage)
    expected.observations["agent", "codex exec", expected.root_level] += 1
    return expected


# ---- the pipeline ---------------------------------------------------------------------------------


def new_run_id(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._:-]", "-", f"{label}-{uuid.uuid4().hex[:8]}")


def tee(pipeline: Stack, run_id: str, data: bytes, *options: str) -> None:
    """`codex-langfuse tee` as a process: stdout must be stdin, byte for byte, and the exit code 0."""
    completed = subprocess.run([sys.executable, "-m", "codex_langfuse.producer.cli", "tee", "--run-id", run_id, *options],
                               input=data, env=pipeline.runner_env, cwd=REPO, capture_output=True, timeout=SETTLE_GUARD)
    assert completed.returncode == 0, completed.stderr.decode(errors="replace")
    assert completed.stdout == data


def settled_trace(pipeline: Stack, run_id: str) -> tuple[list, dict[str, Any]]:
    """The spans and current scores (by name) of a run's trace once the pipeline has delivered it."""
    pipeline.wait(lambda: pipeline.settled([run_id]), timeout=SETTLE_GUARD, what=f"run {run_id} to settle")
    trace = trace_id(run_id)
    scores = {score.name: score for score in pipeline.receiver.scores() if score.trace_id == trace}
    return pipeline.receiver.spans(trace), scores


def assert_trace_shape(spans: list, expected: Expected, *, check_root_level: bool = True) -> Any:
    """Counts by (type, name, level), one copy per span, parent links, times inside the root, usage
    buckets exclusive with their total. Returns the root span."""
    span_ids = [span.span_id for span in spans]
    assert len(span_ids) == len(set(span_ids)), f"duplicate spans: {Counter(span_ids).most_common(3)}"
    got = Counter((span.type, span.name, span.level) for span in spans)
    want = Counter(expected.observations)
    if not check_root_level:
        got = Counter({(t, n, ("*" if t == "agent" else lvl)): c for (t, n, lvl), c in got.items()})
        want = Counter({(t, n, ("*" if t == "agent" else lvl)): c for (t, n, lvl), c in want.items()})
    assert got == want
    [root] = [span for span in spans if span.parent_span_id is None]
    assert (root.type, root.name) == ("agent", "codex exec")
    for span in spans:
        if span is not root:
            assert span.parent_span_id == root.span_id, span.name
            assert root.start_time_unix_nano <= span.start_time_unix_nano <= span.end_time_unix_nano <= root.end_time_unix_nano
    for span in spans:
        if span.type != "generation":
            assert span.usage_details is None and span.cost_details is None, span.name
            continue
        want_usage = expected.generations[span.name]
        assert span.usage_details == want_usage, span.name
        if want_usage is not None:
            assert all(count >= 0 for count in want_usage.values())
            assert want_usage["total"] == sum(count for bucket, count in want_usage.items() if bucket != "total")
        assert span.model == expected.model, span.name
        want_cost = expected_cost(expected.model, want_usage) if expected.model and want_usage else None
        if want_cost is None:
            assert span.cost_details is None, span.name
        else:
            assert span.cost_details == pytest.approx(want_cost, rel=1e-9), span.name
    assert root.attributes.get("session.id") == expected.session_id
    for span in spans:  # every span carries the trace attributes, so any of them can create the trace
        assert span.attributes.get("session.id") == expected.session_id
        assert span.attributes.get("langfuse.trace.name") == "codex exec"
    return root


# ---- recordings -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recording:
    path: Path

    @property
    def version(self) -> str:
        return self.path.parent.name

    @property
    def manifest(self) -> dict[str, Any] | None:
        manifest_path = self.path.parent / "manifest.json"
        if not manifest_path.exists():
            return None
        return json.loads(manifest_path.read_text()).get(self.path.name)

    @property
    def events(self) -> list[dict[str, Any]]:
        return parse_events(self.path.read_bytes())

    @property
    def thread_id(self) -> str | None:
        for event in self.events:
            if event.get("type") in ("thread.started", "session.created"):
                return event.get("thread_id") or event.get("session_id")
        return None

    @property
    def is_resume(self) -> bool:
        manifest = self.manifest
        if manifest is not None:
            return "resume" in manifest.get("argv", [])
        return any(other.path.stem == f"{self.path.stem}_first_run" for other in self.siblings)

    @property
    def siblings(self) -> list["Recording"]:
        return [Recording(path) for path in sorted(self.path.parent.glob("*.jsonl")) if path != self.path]

    def earlier_runs(self) -> list["Recording"]:
        """The recordings of the same thread made before this one (for `codex exec resume`)."""
        if not self.is_resume or self.thread_id is None:
            return []
        return [other for other in self.siblings if other.thread_id == self.thread_id and not other.is_resume]


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def expected_for(recording: Recording) -> Expected:
    earlier_usage = None
    earlier = recording.earlier_runs()
    if earlier and _version(recording.version) >= (0, 98):  # usage is thread-cumulative since 0.98
        completed = [e for e in earlier[-1].events if e.get("type") == "turn.completed"]
        earlier_usage = completed[-1].get("usage") if completed else None
    return expected_trace(recording.events, earlier_usage)


def feed(pipeline: Stack, recording: Recording) -> str:
    """Pipe a recording (after the earlier runs of its thread) through tee; the run id of the recording."""
    for earlier in recording.earlier_runs():
        earlier_id = new_run_id(f"rec-{recording.version}-{earlier.path.stem}")
        tee(pipeline, earlier_id, earlier.path.read_bytes())
        pipeline.wait(lambda: pipeline.settled([earlier_id]), timeout=SETTLE_GUARD, what="the earlier run of the thread")
    run_id = new_run_id(f"rec-{recording.version}-{recording.path.stem}")
    tee(pipeline, run_id, recording.path.read_bytes())
    return run_id


RECORDING_IDS = [f"{path.parent.name}/{path.name}" for path in RECORDINGS]


def test_there_are_recordings_of_every_format():
    formats = {stream_format(Recording(path).events) for path in RECORDINGS}
    assert formats == {"current", "legacy", "experimental"}


MANIFESTED = [path for path in RECORDINGS if Recording(path).manifest is not None]


def test_the_harness_recordings_have_a_manifest():
    assert {path.parent.name for path in MANIFESTED} >= {"0.169.0", "0.42.0"}
    assert [path for path in RECORDINGS if path.parent.name in ("0.169.0", "0.42.0") and path not in MANIFESTED] == []


@pytest.mark.parametrize("path", MANIFESTED, ids=[f"{path.parent.name}/{path.name}" for path in MANIFESTED])
def test_the_manifest_describes_the_recording(path):
    """The manifest was written by the harness when it recorded the file: the same events, and an
    exit code and interruption that agree with how the stream ends. (A recording without a manifest
    entry is still fed through the pipeline below; its expectation comes from the stream alone.)"""
    recording = Recording(path)
    manifest = recording.manifest
    assert Counter(event_kind(event) for event in recording.events) == Counter(manifest["event_kinds"])
    expected = expected_for(recording)
    if expected.format == "current":
        ended = [e["type"] for e in recording.events if e.get("type") in ("turn.completed", "turn.failed")]
        if manifest["interrupted"]:
            assert ended == [] and manifest["exit_code"] != 0
        else:
            assert manifest["exit_code"] == (0 if ended[-1] == "turn.completed" else 1)
    elif expected.format == "legacy" and not recording.is_resume and not manifest["interrupted"]:
        # one generation per model request the scripted model answered with usage
        assert len(expected.generations) == manifest["scenario_model_requests"].count("turn")


@pytest.mark.parametrize("path", RECORDINGS, ids=RECORDING_IDS)
def test_a_recorded_run_becomes_its_trace(pipeline, path):
    recording = Recording(path)
    expected = expected_for(recording)
    run_id = feed(pipeline, recording)
    spans, scores = settled_trace(pipeline, run_id)
    # the outcome of 0.42 --experimental-json runs is checked in the test below
    root = assert_trace_shape(spans, expected, check_root_level=expected.format != "experimental")
    if expected.prompt is not None:
        assert root.input == expected.prompt
    if expected.final_message is not None:
        assert root.output == expected.final_message
    assert set(scores) == {"success", "failed_commands", "files_changed", "errors"}
    want = expected.scores
    if expected.format == "experimental":
        del want["success"]
    assert {name: score.value for name, score in scores.items() if name in want} == want


EXPERIMENTAL_RECORDINGS = [path for path in RECORDINGS if stream_format(Recording(path).events) == "experimental"]


@pytest.mark.parametrize("path", EXPERIMENTAL_RECORDINGS, ids=[f"{p.parent.name}/{p.name}" for p in EXPERIMENTAL_RECORDINGS])
def test_a_recorded_experimental_json_run_that_ended_normally_is_not_aborted(pipeline, path):
    recording = Recording(path)
    assert (recording.manifest or {}).get("exit_code", 0) == 0  # Codex exited 0 (when the manifest says)
    run_id = feed(pipeline, recording)
    spans, scores = settled_trace(pipeline, run_id)
    [root] = [span for span in spans if span.parent_span_id is None]
    assert (root.level, root.status_message) == ("DEFAULT", None)
    assert scores["success"].value == 1.0


# ---- mixed and unknown formats ----------------------------------------------------------------------

MIXED_STREAM = [
    b'{"sandbox":"danger-full-access","workdir":"/w","model":"gpt-5-codex","provider":"mock"}',
    b'{"prompt":"one stream, every format"}',
    b'{"id":"0","msg":{"type":"task_started","model_context_window":272000}}',
    b'{"type":"thread.started","thread_id":"thread-mixed"}',
    b'{"type":"turn.started"}',
    b'{"id":"0","msg":{"type":"agent_reasoning","text":"legacy reasoning"}}',
    b'{"type":"item.completed","item":{"id":"item_0","type":"reasoning","text":"current reasoning"}}',
    b'{"type":"item.started","item":{"id":"item_1","type":"command_execution","command":"echo a","aggregated_output":"","exit_code":null,"status":"in_progress"}}',
    b'{"type":"item.completed","item":{"id":"item_1","type":"command_execution","command":"echo a","aggregated_output":"a\\n","exit_code":0,"status":"completed"}}',
    b'{"id":"0","msg":{"type":"exec_command_begin","call_id":"call_1","command":["bash","-lc","false"],"cwd":"/w"}}',
    b'{"id":"0","msg":{"type":"exec_command_end","call_id":"call_1","stdout":"","stderr":"","exit_code":1,"duration":{"secs":0,"nanos":1000}}}',
    b'{"type":"item.completed","item":{"id":"item_2","item_type":"assistant_message","text":"an experimental item"}}',
    b'{"type":"future.event","detail":{"x":1}}',
    b'{"type":"item.completed","item":{"id":"item_3","type":"future_item","payload":1}}',
    b'{"id":"0","msg":{"type":"future_msg","x":1}}',
    b'{"neither":"type nor msg"}',
    b'[1, 2, 3]',
    b'this is not JSON at all',
    b'\xff\xfe binary \x00 bytes',
    b'',
    b'{"id":"0","msg":{"type":"token_count","info":{"total_token_usage":{"input_tokens":100,"cached_input_tokens":0,"output_tokens":10,"reasoning_output_tokens":0,"total_tokens":110},"last_token_usage":{"input_tokens":100,"cached_input_tokens":0,"output_tokens":10,"reasoning_output_tokens":0,"total_tokens":110}}}}',
    b'{"id":"0","msg":{"type":"agent_message","message":"legacy says done"}}',
    b'{"type":"item.completed","item":{"id":"item_4","type":"agent_message","text":"current says done"}}',
    b'{"type":"turn.completed","usage":{"input_tokens":200,"cached_input_tokens":50,"output_tokens":20}}',
]


def test_a_stream_mixing_formats_and_unknown_lines_is_read_line_by_line(pipeline):
    """Format detection is per line: each line is read in its own format; lines of no known format
    become events or WARNING events; nothing stops the trace."""
    run_id = new_run_id("mixed")
    tee(pipeline, run_id, b"\n".join(MIXED_STREAM) + b"\n")
    spans, scores = settled_trace(pipeline, run_id)
    # generations: one per legacy model request and one per current turn (numbered in the order seen)
    got = Counter((span.type, "turn" if span.name.startswith("turn ") else span.name, span.level) for span in spans)
    assert got == Counter({
        ("agent", "codex exec", "DEFAULT"): 1,
        ("event", "reasoning", "DEFAULT"): 2,                  # legacy agent_reasoning, current reasoning item
        ("tool", "command", "DEFAULT"): 1,                     # current command_execution
        ("tool", "command", "ERROR"): 1,                       # legacy exec_command_begin/end, exit code 1
        ("event", "agent_message", "DEFAULT"): 3,              # experimental, legacy and current messages
        ("event", "future.event", "DEFAULT"): 1,               # unknown top-level type, kept
        ("event", "item:future_item", "DEFAULT"): 1,           # unknown item type, kept
        ("event", "future_msg", "DEFAULT"): 1,                 # unknown legacy msg type, kept
        ("event", "unknown", "DEFAULT"): 1,                    # JSON object of no known shape
        ("event", "invalid_line", "WARNING"): 4,               # JSON array, not JSON, not UTF-8, empty line
        ("generation", "model request 1", "DEFAULT"): 1,       # legacy token_count
        ("generation", "turn", "DEFAULT"): 1,                  # current turn.completed
    })
    [root] = [span for span in spans if span.parent_span_id is None]
    assert root.input == "one stream, every format"
    assert root.output == "current says done"
    assert root.attributes["session.id"] == "thread-mixed"
    assert all(span.parent_span_id == root.span_id for span in spans if span is not root)
    generations = {"turn" if span.name.startswith("turn ") else span.name: span for span in spans if span.type == "generation"}
    assert generations["model request 1"].usage_details == usage_buckets({"input_tokens": 100, "output_tokens": 10})
    assert all(span.model == "gpt-5-codex" for span in generations.values())  # named by the legacy header
    assert generations["turn"].usage_details == usage_buckets({"input_tokens": 200, "cached_input_tokens": 50, "output_tokens": 20})
    assert {name: score.value for name, score in scores.items()} == {
        "success": 1.0, "failed_commands": 1.0, "files_changed": 0.0, "errors": 0.0}
    metadata = json.loads(root.metadata["counters"])
    assert (metadata["invalid_lines"], metadata["unknown_events"]) == (4, 4)


UNFINISHED_CURRENT_COMMAND = b'{"type":"item.started","item":{"id":"item_0","type":"command_execution","command":"sleep 60","aggregated_output":"","exit_code":null,"status":"in_progress"}}'
UNFINISHED_LEGACY_COMMAND = b'{"id":"0","msg":{"type":"exec_command_begin","call_id":"call_9","command":["sleep","60"],"cwd":"/w"}}'


@pytest.mark.parametrize("first", ["legacy", "current"])
def test_an_unfinished_tool_call_is_kept_whichever_format_the_stream_began_with(pipeline, first):
    opening = {
        "legacy": [b'{"workdir":"/w","model":"gpt-5-codex"}', b'{"prompt":"p"}', b'{"id":"0","msg":{"type":"task_started"}}'],
        "current": [b'{"type":"thread.started","thread_id":"thread-unfinished"}', b'{"type":"turn.started"}'],
    }[first]
    run_id = new_run_id(f"unfinished-{first}")
    tee(pipeline, run_id, b"\n".join([*opening, UNFINISHED_CURRENT_COMMAND, UNFINISHED_LEGACY_COMMAND]) + b"\n")
    spans, _ = settled_trace(pipeline, run_id)
    tools = sorted((span.name, span.level, span.input) for span in spans if span.type == "tool")
    assert tools == [("command", "WARNING", "sleep 60"), ("command", "WARNING", "sleep 60")]
