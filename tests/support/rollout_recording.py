"""Record the rollout files (`$CODEX_HOME/sessions/…/rollout-*.jsonl`) real Codex versions write.

Each scenario plays against a fresh ``CodexSandbox`` (the offline mock model of
``codex_harness``) without ``--ephemeral``, so Codex keeps its session history; the files it wrote
under ``CODEX_HOME`` are then copied to ``tests/fixtures/rollouts/<version>/<scenario>/`` with
the same layout (``sessions/YYYY/MM/DD/…``, ``archived_sessions/…``) and the sandbox's paths
rewritten as the other fixtures are (workspace ``/home/dev/project``, home ``/home/dev``).

``python -m tests.support.rollout_recording [--version V] [SCENARIO …]`` re-records them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tests.support import mock_responses as mock
from tests.support.codex_harness import SCENARIOS, CodexRun, CodexSandbox, model_catalog
from tests.support.codex_install import ensure_codex
from tests.support.mock_responses import ModelTurn, MockResponsesServer, ScriptEntry, Usage, version_tuple

ROLLOUTS_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "rollouts"
RECORDING_ROOT = Path("/tmp/codex-langfuse-rollouts")
SUBAGENT_PROMPT = "Count the files in the workspace and report back."


@dataclass
class Recorded:
    sandbox: CodexSandbox
    runs: list[CodexRun]


def _play(sandbox: CodexSandbox, prompt: str, script: list[ScriptEntry], *extra: str, resume: str | None = None,
          argv: list[str] | None = None, **options: Any) -> CodexRun:
    sandbox.server.enqueue(*script)
    argv = argv or sandbox.argv(prompt, *extra, resume=resume)
    if version_tuple(sandbox.version) < (0, 36):
        argv = [arg for arg in argv if arg != "--include-plan-tool"]  # 0.20 has no such flag
    return sandbox.run(prompt, argv=argv, **options)


def prepare(sandbox: CodexSandbox) -> None:
    """Version quirks of the sandbox: 0.120-0.140 need two more fields in the model catalog."""
    if (0, 120) <= version_tuple(sandbox.version) < (0, 141):
        catalog = model_catalog(sandbox.model)
        catalog["models"][0].update(supports_reasoning_summaries=True, supports_parallel_tool_calls=True)
        sandbox.catalog_path.write_text(json.dumps(catalog, indent=1))


def scenario_from_harness(name: str) -> Callable[[CodexSandbox], list[CodexRun]]:
    """A scenario of ``codex_harness.SCENARIOS`` (resume plays its first run, then ``exec resume``)."""

    def play(sandbox: CodexSandbox) -> list[CodexRun]:
        scenario = SCENARIOS[name]
        runs = []
        thread = None
        if scenario.first_run is not None:
            runs.append(_play(sandbox, scenario.first_prompt, scenario.first_run(sandbox.tools)))
            thread = runs[0].thread_id
        runs.append(_play(sandbox, scenario.prompt, scenario.script(sandbox.tools), resume=thread,
                          interrupt_when=scenario.interrupt_when))
        return runs

    return play


def fork(sandbox: CodexSandbox) -> list[CodexRun]:
    """A session, then `codex exec fork` of it with a new prompt (Codex >= 0.151)."""
    first = _play(sandbox, "Run echo hello-from-mock", SCENARIOS["command_ok"].script(sandbox.tools))
    argv = [str(sandbox.codex), "exec", "--json", "--skip-git-repo-check", "-C", str(sandbox.workspace),
            "fork", str(first.thread_id), "Now say hello in the fork"]
    second = _play(sandbox, "", [ModelTurn([mock.message("Hello from the fork.")], Usage(1400, 54, 800, 20))],
                   argv=argv)
    return [first, second]


def subagent(sandbox: CodexSandbox, fork_context: bool = False) -> list[CodexRun]:
    """The parent spawns a sub-agent (its own thread), waits for it and answers; the child runs a
    command. Requests of both threads arrive side by side, so each is answered by thread id.
    ``fork_context``: the child starts with a copy of the parent's history (a forked session)."""
    parent_thread: list[str] = []
    steps: dict[str, int] = {}

    def thread_of(body: Any) -> str:
        metadata = body.get("client_metadata") or {} if isinstance(body, dict) else {}
        return str(metadata.get("thread_id") or "")

    def spawned_agent_id(body: Any) -> str:
        for item in body.get("input", []):
            if item.get("type") == "function_call_output" and "agent" in str(item.get("output", "")):
                try:
                    output = json.loads(item["output"])
                except ValueError:
                    continue
                if isinstance(output, dict):
                    return str(output.get("agent_id") or output.get("id") or "")
        return ""

    def route(body: Any) -> ScriptEntry | None:
        thread = thread_of(body)
        if not parent_thread:
            parent_thread.append(thread)
        step = steps.get(thread, 0)
        steps[thread] = step + 1
        namespaced = any(tool.get("name") == "multi_agent_v1" for tool in body.get("tools", []))
        spawn = {"namespace": "multi_agent_v1"} if namespaced else {}  # 0.130 offers them flat
        if thread == parent_thread[0]:
            if step == 0:
                arguments: dict[str, Any] = {"message": SUBAGENT_PROMPT}
                if fork_context:
                    arguments["fork_context"] = True
                call = {**mock.function_call("spawn_agent", arguments), **spawn}
                return ModelTurn([mock.reasoning("**Delegating**\n\nA sub-agent counts the files."), call],
                                 Usage(1000, 50, 0, 20))
            if step == 1:
                call = {**mock.function_call("wait_agent", {"targets": [spawned_agent_id(body)],
                                                            "timeout_ms": 60000}), **spawn}
                return ModelTurn([call], Usage(1100, 51, 800, 20))
            return ModelTurn([mock.message("The sub-agent counted the files.")], Usage(1200, 52, 800, 20))
        if step == 0:
            return ModelTurn([sandbox.tools.command("ls | wc -l")], Usage(700, 30, 0, 10))
        return ModelTurn([mock.message("There are 0 files.")], Usage(800, 31, 600, 10))

    sandbox.server.router = route
    try:
        return [sandbox.run("Delegate counting the files to a sub-agent", timeout=180)]
    finally:
        sandbox.server.router = None


def archived(sandbox: CodexSandbox) -> list[CodexRun]:
    """A full session, then `codex archive` of it: Codex moves it to `archived_sessions/`. Its
    copy in the fixtures is compressed (`.jsonl.zst`), as Codex's rollout compression stores old
    sessions; that step is ours (zstd), no released Codex compressed it on request offline."""
    runs = scenario_from_harness("full")(sandbox)
    subprocess.run([str(sandbox.codex), "archive", str(runs[0].thread_id)], env=sandbox.env(), cwd=sandbox.workspace,
                   stdin=subprocess.DEVNULL, capture_output=True, check=True, timeout=60)
    return runs


SCENARIO_PLAYERS: dict[str, Callable[[CodexSandbox], list[CodexRun]]] = {
    "full": scenario_from_harness("full"),
    "resume": scenario_from_harness("resume"),
    "turn_failed": scenario_from_harness("turn_failed"),
    "interrupted": scenario_from_harness("interrupted"),
    "fork": fork,
    "subagent": subagent,
    "archived": archived,
    "subagent_fork": lambda sandbox: subagent(sandbox, fork_context=True),
}
COMPRESSED = {"archived"}  # scenarios whose files are stored compressed

# version -> scenarios recorded for it
RECORDINGS: dict[str, list[str]] = {
    "0.20.0": ["full"],
    "0.42.0": ["full"],
    "0.98.0": ["resume", "turn_failed"],
    "0.130.0": ["full", "resume", "turn_failed", "subagent_fork"],
    "0.151.0": ["resume", "fork"],
    "0.169.0": ["subagent", "fork", "turn_failed", "interrupted", "archived"],
}


def rewrite_paths(text: str, sandbox: CodexSandbox) -> str:
    for real, shown in ((sandbox.workspace, "/home/dev/project"), (sandbox.codex_home, "/home/dev/.codex"),
                        (sandbox.tmpdir, "/home/dev/tmp"), (sandbox.home, "/home/dev"), (sandbox.root, "/home/dev")):
        text = text.replace(str(real), shown)
    return text


def session_files(codex_home: Path) -> list[Path]:
    return sorted(path for folder in ("sessions", "archived_sessions") if (codex_home / folder).is_dir()
                  for path in (codex_home / folder).rglob("rollout-*") if path.is_file())


def record(version: str, name: str, out_dir: Path = ROLLOUTS_DIR) -> list[Path]:
    codex = ensure_codex(version)
    root = RECORDING_ROOT / version / name
    if root.exists():
        shutil.rmtree(root)
    with MockResponsesServer() as server:
        sandbox = CodexSandbox(codex, server, root, git_repo=True)
        prepare(sandbox)
        runs = SCENARIO_PLAYERS[name](sandbox)
    target = out_dir / version / name
    if target.exists():
        shutil.rmtree(target)
    written = []
    for path in session_files(sandbox.codex_home):
        relative = path.relative_to(sandbox.codex_home)
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".zst":
            destination.write_bytes(_compress(_decompress(path), sandbox))
        elif name in COMPRESSED:
            destination = destination.with_name(destination.name + ".zst")
            destination.write_bytes(_compress(path.read_text(), sandbox))
        else:
            destination.write_text(rewrite_paths(path.read_text(), sandbox))
        written.append(destination)
    exits = ", ".join(f"exit {run.exit_code}" for run in runs)
    print(f"{version} {name}: {exits}; " + ", ".join(str(p.relative_to(out_dir)) for p in written))
    return written


def _decompress(path: Path) -> str:
    import zstandard

    with open(path, "rb") as compressed:
        return zstandard.ZstdDecompressor().stream_reader(compressed).read().decode()


def _compress(text: str, sandbox: CodexSandbox) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(level=19).compress(rewrite_paths(text, sandbox).encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.rollout_recording")
    parser.add_argument("--version", action="append", help="only these Codex versions")
    parser.add_argument("scenarios", nargs="*", help="only these scenarios")
    args = parser.parse_args(argv)
    for version, names in RECORDINGS.items():
        if args.version and version not in args.version:
            continue
        for name in names:
            if not args.scenarios or name in args.scenarios:
                record(version, name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
