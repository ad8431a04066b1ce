"""The TypeScript example (examples/typescript), run by node against the whole pipeline: a runner
that traces its own workflow with OpenTelemetry and spawns `codex-langfuse run -- codex exec …`
with the active span as TRACEPARENT. The Codex run must land in the runner's trace, its root a
child of the runner's span, its scores on that root; the runner's trace keeps its own name,
input and metadata.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from codex_langfuse.ingest.observations import root_id, trace_id
from tests.conftest import CODEX_FIXTURES
from tests.support.node_example import ExampleBuildError, built_example

pytestmark = pytest.mark.integration

FIXTURE = CODEX_FIXTURES / "real_run_0.169.0_command_failed.jsonl"
BRIDGE = Path(sys.executable).parent / "codex-langfuse"
FAKE_CODEX = """#!{python}
import sys
sys.stdout.buffer.write(open({fixture!r}, "rb").read())
sys.exit(0)
"""


@pytest.fixture(scope="module")
def example() -> Path:
    try:
        return built_example()
    except ExampleBuildError as error:
        pytest.fail(str(error))


def test_the_typescript_runner_puts_the_codex_run_inside_its_own_trace(stack, example, tmp_path):
    codex = tmp_path / "bin" / "codex"  # prints a recorded Codex run
    codex.parent.mkdir()
    codex.write_text(FAKE_CODEX.format(python=sys.executable, fixture=str(FIXTURE)))
    codex.chmod(0o755)
    stack.start("dispatch")
    stack.start("worker")
    env = {**stack.env, "CODEX_LANGFUSE_BRIDGE": str(BRIDGE), "PATH": os.environ["PATH"]}
    done = subprocess.run(["node", "dist/main.js", "--run-id", "ts-runner-1", "--", str(codex), "exec", "--json",
                           "fix the failing test"], cwd=example, env=env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    summary = json.loads(done.stdout.decode().splitlines()[-1])
    assert summary["events"] == len(FIXTURE.read_bytes().splitlines())  # Codex's stdout came through
    caller_trace, caller_span = summary["traceId"], summary["spanId"]
    stack.wait(lambda: stack.settled(["ts-runner-1"]), what="the Codex run")
    stack.receiver.wait_until(lambda r: any(s.span_id == caller_span for s in r.spans()), timeout=60)

    assert stack.receiver.spans(trace_id("ts-runner-1")) == []  # no trace of its own
    trace = stack.receiver.trace(caller_trace)
    assert (trace.name, trace.input, trace.metadata["workflow"]) == ("nightly workflow", "fix the failing test",
                                                                      "nightly")
    workflow = trace.observation(caller_span)
    assert workflow.parent_id is None and workflow.name == "workflow"
    root = trace.observation(root_id("ts-runner-1"))
    assert (root.type, root.parent_id, root.input) == ("agent", caller_span, "fix the failing test")
    run_rows = [row for row in trace.observations if row.id not in (caller_span, root.id)]
    assert run_rows and all(row.parent_id == root.id for row in run_rows)
    scores = [s for s in stack.receiver.scores() if s.trace_id == caller_trace]
    assert {s.name for s in scores} == {"success", "failed_commands", "files_changed", "errors"}
    assert {s.observation_id for s in scores} == {root.id}
    assert stack.receiver.duplicates() == {}
