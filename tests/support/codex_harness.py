"""Run the real Codex CLI offline: a throwaway HOME/CODEX_HOME and workspace, wired to the mock model.

``CodexSandbox`` writes a ``config.toml`` that points Codex at a ``MockResponsesServer`` on
127.0.0.1 (custom provider ``mock``, Responses API, no retries unless asked, no approvals, no
sandbox, analytics off, plan tool on, the ``echo`` MCP server) plus a model catalog that makes
``gpt-5-codex`` a known model (without it 0.169.0 prints a non-fatal ``error`` item about missing
model metadata and offers neither ``apply_patch`` nor ``update_plan``). ``argv()``/``env()`` give
what to spawn, so a test can wrap the same command in ``codex-langfuse run -- …``; ``run()``
spawns it with stdin on /dev/null and returns stdout bytes, stderr and the exit code.

``SCENARIOS`` are scripts for the mock model, each a function of the Codex version's
``ToolDialect``; ``run_scenario`` plays one (including the resume and interrupt ones), and
``python -m tests.support.codex_harness record`` re-records ``tests/fixtures/recorded/``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tests.support import mock_responses as mock
from tests.support.codex_install import ensure_codex, installed_version
from tests.support.mock_responses import (
    HttpFault,
    MockResponsesServer,
    ModelTurn,
    ScriptEntry,
    ToolDialect,
    Usage,
    tools_for_version,
    version_tuple,
)

DEFAULT_MODEL = "gpt-5-codex"
API_KEY_ENV = "CODEX_LANGFUSE_MOCK_API_KEY"
MCP_ECHO_SCRIPT = Path(__file__).with_name("mcp_echo.py")
RECORDED_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "recorded"
# Environment passed through to Codex besides what the sandbox sets; proxies are deliberately not.
_PASSED_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")


def parse_events(stdout: bytes) -> list[dict[str, Any]]:
    """The JSON objects of a ``--json`` stream, one per line; non-JSON lines are skipped.

    Codex >= 0.98 writes ``web_search`` items with the key ``id`` twice; the first one (the
    ``item_<n>`` id that pairs started/completed) is kept, unlike ``json.loads``'s default.
    """

    def keep_first(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            result.setdefault(key, value)
        return result

    events = []
    for line in stdout.splitlines():
        try:
            event = json.loads(line, object_pairs_hook=keep_first)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def event_kind(event: dict[str, Any]) -> str:
    """A short name for an event, for asserting on sequences and for summaries.

    Current format: ``type``, or ``<type>:<item type>`` for item events (``item.completed:reasoning``).
    Legacy 0.42 ``--json``: ``msg:<type>``, and ``header``/``prompt`` for its two first lines.
    0.42 ``--experimental-json`` items carry ``item_type`` instead of ``type``; it is used the same way.
    """
    if isinstance(event.get("msg"), dict):
        return f"msg:{event['msg'].get('type')}"
    if "type" not in event:
        return "prompt" if set(event) == {"prompt"} else "header"
    kind = str(event["type"])
    item = event.get("item")
    if isinstance(item, dict):
        kind += f":{item.get('type') or item.get('item_type')}"
    return kind


@dataclass
class CodexRun:
    """What one Codex process did: its exact stdout bytes, stderr text and exit code."""

    argv: list[str]
    stdout: bytes
    stderr: str
    exit_code: int  # negative: killed by that signal (subprocess convention)
    timed_out: bool = False
    interrupted: bool = False

    @property
    def events(self) -> list[dict[str, Any]]:
        return parse_events(self.stdout)

    @property
    def kinds(self) -> list[str]:
        return [event_kind(event) for event in self.events]

    @property
    def thread_id(self) -> str | None:
        for event in self.events:
            if event.get("type") == "thread.started":
                return event.get("thread_id")
            if event.get("type") == "session.created":  # 0.42 --experimental-json
                return event.get("session_id")
        return None

    def items(self, item_type: str, phase: str = "item.completed") -> list[dict[str, Any]]:
        """Items of one type from ``item.started``/``item.updated``/``item.completed`` events."""
        return [
            event["item"]
            for event in self.events
            if event.get("type") == phase
            and isinstance(event.get("item"), dict)
            and item_type in (event["item"].get("type"), event["item"].get("item_type"))
        ]

    @property
    def usage(self) -> dict[str, Any] | None:
        """``usage`` of the ``turn.completed`` event, if the run completed."""
        for event in reversed(self.events):
            if event.get("type") == "turn.completed":
                return event.get("usage")
        return None


def model_catalog(model: str = DEFAULT_MODEL) -> dict[str, Any]:
    """A one-model catalog (``model_catalog_json``) in 0.169.0's format, so ``model`` is known."""
    return {
        "models": [
            {
                "slug": model,
                "display_name": model,
                "description": "Offline test model served by tests/support/mock_responses.py.",
                "default_reasoning_level": "medium",
                "supported_reasoning_levels": [
                    {"effort": "low", "description": "low"},
                    {"effort": "medium", "description": "medium"},
                    {"effort": "high", "description": "high"},
                ],
                "shell_type": "unified_exec",
                "visibility": "list",
                "supported_in_api": True,
                "priority": 1,
                "base_instructions": "You are Codex, a coding agent (offline test instructions).",
                "apply_patch_tool_type": "freeform",
                "web_search_tool_type": "text",
                "truncation_policy": {"mode": "tokens", "limit": 10000},
                "context_window": 200000,
                "max_context_window": 200000,
                "effective_context_window_percent": 95,
                "experimental_supported_tools": [],
                "input_modalities": ["text"],
                "default_reasoning_summary": "auto",
                "support_verbosity": False,
            }
        ]
    }


def _toml_string(value: str | Path) -> str:
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


class CodexSandbox:
    """HOME (with CODEX_HOME = HOME/.codex), TMPDIR and a workspace under ``root``, configured for the mock model.

    ``request_max_retries``/``stream_max_retries`` are Codex's provider retry settings (0: the
    first HTTP error or broken stream fails the turn; request retries are silent, stream retries
    print ``error`` "Reconnecting... n/m" lines). ``git_repo`` makes the workspace a git repository
    with one commit. ``extra_config`` is TOML appended to config.toml. ``version`` (default: asked
    from the binary) picks the tool dialect and, for 0.42, adds ``--include-plan-tool``.
    """

    def __init__(
        self,
        codex: str | Path,
        server: MockResponsesServer,
        root: str | Path,
        *,
        model: str = DEFAULT_MODEL,
        request_max_retries: int = 0,
        stream_max_retries: int = 0,
        git_repo: bool = False,
        mcp_echo: bool = True,
        extra_config: str = "",
        version: str | None = None,
    ) -> None:
        self.codex = Path(codex)
        self.server = server
        self.root = Path(root)
        self.model = model
        self.version = version or installed_version(self.codex) or "0.0.0"
        self.tools: ToolDialect = tools_for_version(self.version)
        self.home = self.root / "home"
        self.codex_home = self.home / ".codex"
        # Codex 0.169 refuses to set up its PATH helpers under the system temp dir and says so
        # on stderr; a TMPDIR of our own keeps CODEX_HOME outside it even when root is in /tmp.
        self.tmpdir = self.root / "tmp"
        self.workspace = self.root / "workspace"
        for directory in (self.home, self.codex_home, self.tmpdir, self.workspace):
            directory.mkdir(parents=True, exist_ok=True)
        self.catalog_path = self.codex_home / "model_catalog.json"
        self.catalog_path.write_text(json.dumps(model_catalog(model), indent=1))
        self.config_path = self.codex_home / "config.toml"
        self.config_path.write_text(
            self.config_toml(
                request_max_retries=request_max_retries,
                stream_max_retries=stream_max_retries,
                mcp_echo=mcp_echo,
                extra_config=extra_config,
            )
        )
        if git_repo:
            self._init_git_repo()

    @property
    def legacy(self) -> bool:
        """True for the legacy-stream releases (< 0.44, e.g. 0.42.0)."""
        return version_tuple(self.version) < (0, 44)

    def config_toml(self, *, request_max_retries: int, stream_max_retries: int, mcp_echo: bool, extra_config: str) -> str:
        lines = [
            f"model = {_toml_string(self.model)}",
            'model_provider = "mock"',
            f"model_catalog_json = {_toml_string(self.catalog_path)}",
            'approval_policy = "never"',
            'sandbox_mode = "danger-full-access"',
            "",
            "[model_providers.mock]",
            'name = "mock"',
            f"base_url = {_toml_string(self.server.base_url)}",
            'wire_api = "responses"',
            f"env_key = {_toml_string(API_KEY_ENV)}",
            f"request_max_retries = {request_max_retries}",
            f"stream_max_retries = {stream_max_retries}",
            "",
            "[analytics]",
            "enabled = false",
            "",
            "[tools.update_plan]",
            "enabled = true",
            "",
        ]
        if mcp_echo:
            lines += [
                "[mcp_servers.echo]",
                f"command = {_toml_string(sys.executable)}",
                f"args = [{_toml_string(MCP_ECHO_SCRIPT)}]",
                "",
            ]
        return "\n".join(lines) + extra_config

    def _init_git_repo(self) -> None:
        git = ["git", "-c", "user.name=codex-langfuse tests", "-c", "user.email=tests@example.invalid"]
        (self.workspace / "README.md").write_text("offline Codex test workspace\n")
        for args in (["init", "-q", "-b", "main"], ["add", "README.md"], ["commit", "-q", "-m", "initial"]):
            subprocess.run([*git, *args], cwd=self.workspace, env=self.env(), check=True, capture_output=True)

    def argv(self, prompt: str, *extra: str, resume: str | None = None, json_flag: str = "--json") -> list[str]:
        """``codex exec --json --skip-git-repo-check -C <workspace> [extra…] [resume <thread id>] <prompt>``.

        ``json_flag="--experimental-json"`` for 0.42's other stream format.
        """
        argv = [str(self.codex), "exec", json_flag, "--skip-git-repo-check", "-C", str(self.workspace)]
        if self.legacy:
            argv.append("--include-plan-tool")
        argv += extra
        if resume is not None:
            argv += ["resume", resume]
        return [*argv, prompt]

    def env(self) -> dict[str, str]:
        """A clean environment: the sandbox's HOME, CODEX_HOME and TMPDIR, the mock API key, PATH
        and locale; nothing else is inherited (no proxy variables, no RUST_LOG)."""
        env = {name: os.environ[name] for name in _PASSED_ENV if name in os.environ}
        env.update(
            {
                "HOME": str(self.home),
                "CODEX_HOME": str(self.codex_home),
                "TMPDIR": str(self.tmpdir),
                API_KEY_ENV: "sk-offline-mock",
            }
        )
        return env

    def start(self, argv: list[str], *, extra_env: dict[str, str] | None = None, stdin: Any = subprocess.DEVNULL) -> subprocess.Popen:
        """Spawn ``argv`` (``self.argv(...)``, or a wrapper around it) in the workspace with this
        environment (plus ``extra_env``, e.g. what ``codex-langfuse run`` needs to reach Redis),
        stdin on /dev/null unless ``stdin`` says otherwise (an fd or file, as for ``Popen``),
        stdout/stderr piped, in a process group of its own."""
        return subprocess.Popen(
            argv,
            cwd=self.workspace,
            env={**self.env(), **(extra_env or {})},
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )

    def run(
        self,
        prompt: str,
        *extra: str,
        resume: str | None = None,
        argv: list[str] | None = None,
        timeout: float = 120.0,
        interrupt_when: Callable[[dict[str, Any]], bool] | None = None,
        interrupt_signal: int = signal.SIGINT,
        extra_env: dict[str, str] | None = None,
        stdin: Any = subprocess.DEVNULL,
    ) -> CodexRun:
        """Run Codex (or ``argv``) to its end and return what it printed.

        ``interrupt_when(event)`` returning true for a stdout event sends ``interrupt_signal`` to
        the spawned process, once (the npm launcher forwards it to the native binary).
        ``extra_env`` and ``stdin`` are passed to ``start``.
        ``timeout`` only guards against a hang: the process group is then killed and the result
        has ``timed_out=True``. Whatever the spawned process left in its group is killed at the end.
        """
        command = argv or self.argv(prompt, *extra, resume=resume)
        process = self.start(command, extra_env=extra_env, stdin=stdin)
        timed_out = threading.Event()

        def kill_on_deadline() -> None:
            timed_out.set()
            _kill_group(process)

        watchdog = threading.Timer(timeout, kill_on_deadline)
        watchdog.start()
        stderr_chunks: list[bytes] = []
        stderr_reader = threading.Thread(target=lambda: stderr_chunks.append(process.stderr.read()), daemon=True)
        stderr_reader.start()
        stdout = bytearray()
        interrupted = False
        try:
            for line in process.stdout:
                stdout += line
                if interrupt_when is not None and not interrupted:
                    events = parse_events(line)
                    if events and interrupt_when(events[0]):
                        process.send_signal(interrupt_signal)
                        interrupted = True
            exit_code = process.wait()
        finally:
            watchdog.cancel()
            _kill_group(process)
            process.wait()
            stderr_reader.join(timeout=10)
            process.stdout.close()
            process.stderr.close()
        return CodexRun(
            argv=command,
            stdout=bytes(stdout),
            stderr=b"".join(stderr_chunks).decode(errors="replace"),
            exit_code=exit_code,
            timed_out=timed_out.is_set(),
            interrupted=interrupted,
        )

    def rollout_files(self) -> list[Path]:
        """The session rollout files Codex wrote (``$CODEX_HOME/sessions/…/rollout-*.jsonl``)."""
        return sorted((self.codex_home / "sessions").rglob("rollout-*.jsonl"))


def _kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the process group that ``start`` created (its id is the spawned process's pid)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# ---- scenarios ---------------------------------------------------------------------------------
# Each script is what the mock model answers, one entry per request Codex makes. Usage numbers are
# distinct per turn so a test can tell which calls were summed.

HELLO_PATCH = mock.add_file_patch("hello.txt", "hello from the mock model")
UPDATE_HELLO_PATCH = (
    "*** Begin Patch\n*** Update File: hello.txt\n@@\n-hello from the mock model\n+hello again from the mock model\n*** End Patch\n"
)
PLAN_STEPS = ["Inspect the workspace", "Run a shell command", "Write hello.txt"]


def _plan(done: int) -> dict[str, Any]:
    """update_plan with the first ``done`` steps completed and the next one in progress."""
    steps = []
    for index, step in enumerate(PLAN_STEPS):
        status = "completed" if index < done else "in_progress" if index == done else "pending"
        steps.append((step, status))
    return mock.update_plan(steps, explanation="mock plan")


def command_ok(tools: ToolDialect) -> list[ScriptEntry]:
    return [
        ModelTurn([tools.command("echo hello-from-mock")], Usage(1000, 50, 0, 20)),
        ModelTurn([mock.message("The command printed hello-from-mock.")], Usage(1100, 51, 800, 20)),
    ]


def command_failed(tools: ToolDialect) -> list[ScriptEntry]:
    return [
        ModelTurn([tools.command("ls /nonexistent-dir")], Usage(1000, 50, 0, 20)),
        ModelTurn([mock.message("The directory does not exist.")], Usage(1100, 51, 800, 20)),
    ]


def apply_patch(tools: ToolDialect) -> list[ScriptEntry]:
    return [
        ModelTurn([tools.patch(HELLO_PATCH)], Usage(1000, 50, 0, 20)),
        ModelTurn([tools.patch(UPDATE_HELLO_PATCH)], Usage(1100, 51, 800, 20)),
        ModelTurn([mock.message("Created hello.txt, then changed it.")], Usage(1200, 52, 800, 20)),
    ]


def mcp_call(tools: ToolDialect) -> list[ScriptEntry]:
    return [
        ModelTurn([tools.mcp("echo", "say", {"text": "hi from mock"})], Usage(1000, 50, 0, 20)),
        ModelTurn([mock.message("The MCP tool answered.")], Usage(1100, 51, 800, 20)),
    ]


def web_search(tools: ToolDialect) -> list[ScriptEntry]:
    # A web search is run by the provider, not by Codex: it ends nothing and needs no answer, so
    # the message comes in the same response.
    return [
        ModelTurn(
            [mock.web_search("langfuse codex integration"), mock.message("Found the integration docs.")],
            Usage(1000, 50, 0, 20),
        )
    ]


def plan(tools: ToolDialect) -> list[ScriptEntry]:
    return [
        ModelTurn([_plan(0)], Usage(1000, 50, 0, 20)),
        ModelTurn([_plan(1)], Usage(1100, 51, 800, 20)),
        ModelTurn([tools.command("echo step two")], Usage(1200, 52, 800, 20)),
        ModelTurn([_plan(3)], Usage(1300, 53, 800, 20)),
        ModelTurn([mock.message("Plan finished.")], Usage(1400, 54, 800, 20)),
    ]


def reasoning(tools: ToolDialect) -> list[ScriptEntry]:
    return [
        ModelTurn(
            [
                mock.reasoning("**Reading the request**\n\nThe user wants a listing.", "**Choosing a command**\n\n`ls` will do."),
                mock.message("Let me look at the workspace first."),
                tools.command("ls -a"),
            ],
            Usage(1000, 80, 0, 50),
        ),
        ModelTurn(
            [
                mock.reasoning("**Summarising**\n\nThe workspace is empty."),
                mock.message("The workspace has no files yet."),
                mock.message("Final answer: nothing to list."),
            ],
            Usage(1100, 90, 800, 60),
        ),
    ]


def turn_failed(tools: ToolDialect) -> list[ScriptEntry]:
    return [HttpFault(400, mock.error_body("mock: invalid request (scenario=turn_failed)"))]


def retry_500(tools: ToolDialect) -> list[ScriptEntry]:
    server_error = HttpFault(500, mock.error_body("mock: internal error", type_="server_error", code=None))
    return [server_error, server_error, ModelTurn([mock.message("Answered after two retries.")], Usage(1000, 50, 0, 20))]


def resume_first(tools: ToolDialect) -> list[ScriptEntry]:
    return [
        ModelTurn([tools.command("echo first run")], Usage(1000, 50, 0, 20)),
        ModelTurn([mock.message("First run done.")], Usage(1100, 51, 800, 20)),
    ]


def resume(tools: ToolDialect) -> list[ScriptEntry]:
    """The resumed run's script (``resume_first`` plays before it, on the same thread)."""
    return [ModelTurn([mock.message("Second run done.")], Usage(1400, 54, 800, 20))]


def full(tools: ToolDialect) -> list[ScriptEntry]:
    return [
        ModelTurn([mock.reasoning("**Planning the task**\n\nI will make a plan first."), _plan(1)], Usage(1000, 50, 0, 20)),
        ModelTurn([tools.command("echo hello-from-mock && ls")], Usage(1100, 51, 800, 20)),
        ModelTurn(
            [mock.reasoning("**Writing the file**\n\nApplying a patch."), tools.patch(HELLO_PATCH)],
            Usage(1200, 52, 800, 20, cache_write_tokens=300),
        ),
        ModelTurn([tools.mcp("echo", "say", {"text": "hi from mock"})], Usage(1250, 30, 800, 10)),
        ModelTurn([tools.command("ls /nonexistent-dir")], Usage(1280, 30, 800, 10)),
        ModelTurn([_plan(3)], Usage(1300, 53, 800, 20)),
        ModelTurn(
            [mock.web_search("langfuse codex integration"), mock.message("All done: ran commands and created hello.txt.")],
            Usage(1400, 54, 800, 20),
        ),
    ]


def interrupted(tools: ToolDialect) -> list[ScriptEntry]:
    return [
        ModelTurn([tools.command("sleep 30")], Usage(1000, 50, 0, 20)),
        ModelTurn([mock.message("Never sent: the run is interrupted during the command.")]),
    ]


def _command_started(event: dict[str, Any]) -> bool:
    item = event.get("item") or {}
    msg = event.get("msg") or {}
    return (event.get("type") == "item.started" and item.get("type") == "command_execution") or (
        msg.get("type") == "exec_command_begin"
    )


@dataclass(frozen=True)
class Scenario:
    name: str
    prompt: str
    script: Callable[[ToolDialect], list[ScriptEntry]]
    request_max_retries: int = 0
    stream_max_retries: int = 0
    # Played first, as its own `codex exec`; the scenario's script then runs as `exec resume`.
    first_run: Callable[[ToolDialect], list[ScriptEntry]] | None = None
    first_prompt: str = ""
    interrupt_when: Callable[[dict[str, Any]], bool] | None = None


SCENARIOS: dict[str, Scenario] = {
    scenario.name: scenario
    for scenario in [
        Scenario("command_ok", "Run echo hello-from-mock", command_ok),
        Scenario("command_failed", "List /nonexistent-dir", command_failed),
        Scenario("apply_patch", "Create hello.txt, then change it", apply_patch),
        Scenario("mcp_call", "Call the echo MCP tool", mcp_call),
        Scenario("web_search", "Search the web for the Langfuse Codex integration", web_search),
        Scenario("plan", "Make a plan and follow it", plan),
        Scenario("reasoning", "List the workspace and explain", reasoning),
        Scenario("turn_failed", "This request is rejected by the model", turn_failed),
        # stream retries, not request retries: only those print "Reconnecting..." error lines
        Scenario("retry_500", "The model fails twice before answering", retry_500, stream_max_retries=2),
        Scenario("resume", "Continue where you left off", resume, first_run=resume_first, first_prompt="Run echo first run"),
        Scenario("full", "Run a command and create hello.txt", full),
        Scenario("interrupted", "Run a slow command", interrupted, interrupt_when=_command_started),
    ]
}


def run_scenario(
    codex: str | Path,
    scenario: Scenario | str,
    root: str | Path,
    *,
    json_flag: str = "--json",
    timeout: float = 120.0,
    **sandbox_options: Any,
) -> tuple[CodexSandbox, list[CodexRun]]:
    """Play a scenario against a fresh sandbox under ``root`` with its own mock server.

    Returns the sandbox (its ``server`` is already closed but keeps its recorded requests) and
    the runs: one, or two for ``resume`` (the first run, then ``exec resume`` of its thread).
    """
    if isinstance(scenario, str):
        scenario = SCENARIOS[scenario]
    with MockResponsesServer() as server:
        sandbox = CodexSandbox(
            codex,
            server,
            root,
            request_max_retries=scenario.request_max_retries,
            stream_max_retries=scenario.stream_max_retries,
            **sandbox_options,
        )
        runs = []
        resume_thread = None
        if scenario.first_run is not None:
            server.enqueue(*scenario.first_run(sandbox.tools))
            first = sandbox.run(
                scenario.first_prompt, argv=sandbox.argv(scenario.first_prompt, json_flag=json_flag), timeout=timeout
            )
            runs.append(first)
            resume_thread = first.thread_id
            if resume_thread is None:
                raise RuntimeError(f"first run of {scenario.name} printed no thread id:\n{first.stderr}")
        server.enqueue(*scenario.script(sandbox.tools))
        runs.append(
            sandbox.run(
                scenario.prompt,
                argv=sandbox.argv(scenario.prompt, resume=resume_thread, json_flag=json_flag),
                timeout=timeout,
                interrupt_when=scenario.interrupt_when,
            )
        )
    return sandbox, runs


# ---- recording ---------------------------------------------------------------------------------

RECORDINGS: dict[str, dict[str, list[str]]] = {
    # version -> json flag -> scenarios
    "0.169.0": {"--json": list(SCENARIOS)},
    "0.42.0": {
        "--json": ["command_ok", "apply_patch", "plan", "full"],
        "--experimental-json": ["command_ok", "apply_patch", "plan", "full"],
    },
}
# Fixed, so that the paths inside the recordings stay the same from one recording to the next.
RECORDING_ROOT = Path("/tmp/codex-langfuse-recording")


def record(version: str, json_flag: str, names: list[str], out_dir: Path = RECORDED_DIR) -> dict[str, Any]:
    """Record scenarios' stdout verbatim into ``<out_dir>/<version>/<name>[.experimental].jsonl``."""
    codex = ensure_codex(version)
    target = out_dir / version
    target.mkdir(parents=True, exist_ok=True)
    suffix = "" if json_flag == "--json" else ".experimental"
    manifest = {}
    for name in names:
        root = RECORDING_ROOT / version / f"{name}{suffix}"
        if root.exists():
            shutil.rmtree(root)
        sandbox, runs = run_scenario(codex, name, root, json_flag=json_flag)
        files = []
        for index, run in enumerate(runs):
            stem = f"{name}_first_run" if index < len(runs) - 1 else name
            path = target / f"{stem}{suffix}.jsonl"
            path.write_bytes(run.stdout)
            files.append(path.name)
            manifest[path.name] = {
                "argv": ["codex", *[arg.replace(str(root), "<root>") for arg in run.argv[1:]]],
                "exit_code": run.exit_code,
                "interrupted": run.interrupted,
                "event_kinds": dict(Counter(run.kinds)),
                "scenario_model_requests": [r.answered_with for r in sandbox.server.requests],
            }
        print(f"{version} {json_flag} {name}: " + ", ".join(f"{f} (exit {manifest[f]['exit_code']})" for f in files))
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.codex_harness")
    commands = parser.add_subparsers(dest="command", required=True)
    record_parser = commands.add_parser("record", help="re-record tests/fixtures/recorded/")
    record_parser.add_argument("--version", action="append", help="only these Codex versions")
    record_parser.add_argument("scenarios", nargs="*", help="only these scenarios")
    args = parser.parse_args(argv)
    for version, flags in RECORDINGS.items():
        if args.version and version not in args.version:
            continue
        manifest_path = RECORDED_DIR / version / "manifest.json"
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
        for json_flag, names in flags.items():
            chosen = [name for name in names if not args.scenarios or name in args.scenarios]
            manifest.update(record(version, json_flag, chosen))
        manifest_path.write_text(json.dumps(dict(sorted(manifest.items())), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
