"""`codex-langfuse run` and `tee` as processes, with a fake Codex and a real redis-server."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import termios
import textwrap
import threading
import time
from pathlib import Path

import pytest

from codex_langfuse.producer import DEFAULT_STREAM, Producer, decode_fields, trace_id
from codex_langfuse.producer.cli import LineSplitter, main
from codex_langfuse.producer.spool import orphan_candidates

BRIDGE = str(Path(sys.executable).parent / "codex-langfuse")
CODEX_FIXTURES = Path(__file__).parent / "fixtures" / "codex"
HANG_GUARD = 90

FAKE_CODEX = textwrap.dedent(r'''
    #!PYTHON
    """Stands in for `codex exec --json`; FAKE_CODEX_MODE picks the behaviour."""
    import hashlib, json, os, signal, sys, time

    mode = os.environ.get("FAKE_CODEX_MODE", "normal")
    out = sys.stdout.buffer

    def write(data):
        out.write(data)
        out.flush()

    if mode == "normal":
        write(b'{"type":"thread.started","thread_id":"0199a-thread"}\n')
        sys.stderr.buffer.write(b"codex diagnostics \xff (not json)\n")
        sys.stderr.flush()
        write(b'{"type":"turn.started"}\r\n')
        write(b'{"type":"item.completed","item":{"id":"item_0","type":"agent_message","text":"h\xc3\xa9"}}\n')
        write(b"\xff\xfe binary \x00 line\n")
        write(b"x" * 300000 + b"\n")
        write(b'{"type":"turn.completed","usage":{"input_tokens":1}}\n{"split":')
        time.sleep(0.05)
        write(b'"across writes"}\n\n')
        write(b"final line without newline")
        sys.exit(3)
    elif mode == "killed":
        write(b'{"type":"thread.started"}\n')
        os.kill(os.getpid(), signal.SIGKILL)
    elif mode == "trap-term":
        def on_term(signum, frame):
            write(b'{"got":"SIGTERM"}\n')
            sys.exit(143)
        signal.signal(signal.SIGTERM, on_term)
        write(b'{"ready":true}\n')
        time.sleep(60)
    elif mode == "count-sigint":
        received = []
        signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
        write(b'{"ready":true}\n')
        deadline = time.monotonic() + 60
        while not received and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(1.0)  # room for a second, duplicate SIGINT to arrive
        write(json.dumps({"sigint_count": len(received)}).encode() + b"\n")
        sys.exit(130)
    elif mode == "read-stdin":
        data = sys.stdin.buffer.read()
        write(json.dumps({"stdin_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}).encode() + b"\n")
    elif mode == "probe-stdin":
        try:
            os.fstat(0)
            is_open = True
        except OSError:
            is_open = False
        write(json.dumps({"stdin_open": is_open}).encode() + b"\n")
''').lstrip()


@pytest.fixture
def fake_codex(tmp_path) -> str:
    path = tmp_path / "bin" / "codex"
    path.parent.mkdir()
    path.write_text(FAKE_CODEX.replace("PYTHON", sys.executable))
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def environment(redis_server, tmp_path) -> dict:
    codex_home = tmp_path / "codex-home"
    codex_home.mkdir()
    return {
        **os.environ,
        "REDIS_URL": redis_server.url,
        "CODEX_LANGFUSE_SPOOL_DIR": str(tmp_path / "spool"),
        "CODEX_HOME": str(codex_home),
    }


def stream_entries(redis_server, run_id: str | None = None) -> list[dict]:
    client = redis_server.client(socket_timeout=5)
    try:
        entries = [decode_fields(fields) for _, fields in client.xrange(DEFAULT_STREAM)]
    finally:
        client.close()
    return [entry for entry in entries if run_id is None or entry["run"] == run_id]


def expected_lines(stdout: bytes) -> list[bytes]:
    pieces = stdout.split(b"\n")
    if pieces[-1] == b"":
        pieces.pop()
    return [piece[:-1] if piece.endswith(b"\r") else piece for piece in pieces]


def run_process(args, env, cwd, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, timeout=HANG_GUARD, **kwargs)


def test_run_passes_codex_through_byte_for_byte_and_captures_every_line(fake_codex, environment, redis_server, tmp_path):
    (Path(environment["CODEX_HOME"]) / "config.toml").write_text('model = "model-from-config"\n')
    codex_args = [fake_codex, "exec", "--json", "-C", str(tmp_path), "fix the bug"]
    direct = run_process(codex_args, environment, tmp_path)
    via = run_process(
        [BRIDGE, "run", "--run-id", "cli-run", "--tag", "nightly", "--metadata", "ci=yes", "--name", "bench",
         "--user-id", "u1", "--environment", "test", "--", *codex_args],
        environment, tmp_path,
    )
    assert direct.returncode == via.returncode == 3
    assert via.stdout == direct.stdout and via.stdout.endswith(b"final line without newline")
    assert via.stderr == direct.stderr  # inherited, untouched (with --run-id nothing is announced)

    entries = stream_entries(redis_server, "cli-run")
    assert [entry["seq"] for entry in entries] == list(range(len(entries)))
    start, meta, *lines, end = entries
    assert start["kind"] == "start" and meta["kind"] == "meta" and end["kind"] == "end"
    assert {key: start["data"][key] for key in ("prompt", "cwd", "tags", "metadata", "name", "user_id", "environment")} == {
        "prompt": "fix the bug", "cwd": str(tmp_path), "tags": ["nightly"], "metadata": {"ci": "yes"},
        "name": "bench", "user_id": "u1", "environment": "test",
    }
    assert meta["data"] == {"model": "model-from-config"}
    assert [entry["kind"] for entry in lines] == ["line"] * len(lines)
    assert [entry["data"] for entry in lines] == expected_lines(direct.stdout)
    assert end["data"] == {"exit_code": 3, "signal": None, "reason": "exited"}


def test_run_sends_codex_version_and_repository_once_codex_runs(environment, redis_server, tmp_path):
    package = tmp_path / "node_modules" / "@openai" / "codex"
    (package / "bin").mkdir(parents=True)
    (package / "package.json").write_text(json.dumps({"name": "@openai/codex", "version": "0.169.0"}))
    launcher = package / "bin" / "codex.js"
    launcher.write_text(FAKE_CODEX.replace("PYTHON", sys.executable))
    launcher.chmod(0o755)
    (tmp_path / "node_modules" / ".bin").mkdir()
    (tmp_path / "node_modules" / ".bin" / "codex").symlink_to(launcher)
    checkout = tmp_path / "checkout"
    (checkout / ".git" / "refs" / "heads").mkdir(parents=True)
    (checkout / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (checkout / ".git" / "refs" / "heads" / "main").write_text("d" * 40 + "\n")
    (checkout / ".git" / "config").write_text('[remote "origin"]\n\turl = https://ci:token@git.example/team/app.git\n')
    env = {**environment, "PATH": f"{tmp_path / 'node_modules' / '.bin'}{os.pathsep}{environment['PATH']}"}
    via = run_process([BRIDGE, "run", "--run-id", "with-meta", "--", "codex", "exec", "--json", "-C", str(checkout), "-m", "o3", "p"],
                      env, tmp_path)
    assert via.returncode == 3
    start, meta = stream_entries(redis_server, "with-meta")[:2]
    assert start["data"]["model"] == "o3" and start["data"]["cwd"] == str(checkout)
    assert meta["kind"] == "meta" and meta["data"] == {
        "codex_version": "0.169.0", "repository": "https://git.example/team/app.git", "branch": "main", "commit": "d" * 40,
    }


def test_run_announces_a_generated_run_id(fake_codex, environment, redis_server, tmp_path):
    via = run_process([BRIDGE, "run", "--", fake_codex, "exec", "--json", "-m", "gpt-5", "hi"], environment, tmp_path)
    first_line, rest = via.stderr.split(b"\n", 1)
    match = re.fullmatch(rb"codex-langfuse: run ([0-9a-f-]{36}) trace ([0-9a-f]{32})", first_line)
    assert match, first_line
    run_id = match.group(1).decode()
    assert match.group(2).decode() == trace_id(run_id)
    assert rest == b"codex diagnostics \xff (not json)\n"
    entries = stream_entries(redis_server, run_id)
    assert entries[0]["data"]["model"] == "gpt-5" and entries[-1]["kind"] == "end"


def test_codex_killed_by_a_signal_gives_the_same_wait_status(fake_codex, environment, redis_server, tmp_path):
    env = {**environment, "FAKE_CODEX_MODE": "killed"}
    direct = run_process([fake_codex, "exec", "--json", "p"], env, tmp_path)
    via = run_process([BRIDGE, "run", "--run-id", "killed", "--", fake_codex, "exec", "--json", "p"], env, tmp_path)
    assert direct.returncode == via.returncode == -signal.SIGKILL
    assert via.stdout == direct.stdout
    entries = stream_entries(redis_server, "killed")
    assert [entry["kind"] for entry in entries] == ["start", "line", "end"]
    assert entries[-1]["data"] == {"exit_code": None, "signal": signal.SIGKILL, "reason": "exited"}


def read_first_line(process: subprocess.Popen) -> bytes:
    box = []
    reader = threading.Thread(target=lambda: box.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(HANG_GUARD)
    assert box, "no first line"
    return box[0]


def test_sigterm_to_the_bridge_reaches_codex(fake_codex, environment, redis_server, tmp_path):
    env = {**environment, "FAKE_CODEX_MODE": "trap-term"}
    bridge = subprocess.Popen([BRIDGE, "run", "--run-id", "term", "--", fake_codex, "exec", "--json", "p"],
                              env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert read_first_line(bridge) == b'{"ready":true}\n'
        bridge.send_signal(signal.SIGTERM)
        rest, _ = bridge.communicate(timeout=HANG_GUARD)
    finally:
        bridge.kill()
    assert rest == b'{"got":"SIGTERM"}\n'
    assert bridge.returncode == 143
    entries = stream_entries(redis_server, "term")
    assert [entry["data"] for entry in entries if entry["kind"] == "line"] == [b'{"ready":true}', b'{"got":"SIGTERM"}']
    assert entries[-1]["data"]["exit_code"] == 143


def test_sigint_sent_to_the_bridge_alone_is_forwarded_once(fake_codex, environment, redis_server, tmp_path):
    env = {**environment, "FAKE_CODEX_MODE": "count-sigint"}
    bridge = subprocess.Popen([BRIDGE, "run", "--run-id", "int-kill", "--", fake_codex, "exec", "--json", "p"],
                              env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              start_new_session=True)  # no controlling terminal: the signal can only come from kill
    try:
        assert read_first_line(bridge) == b'{"ready":true}\n'
        bridge.send_signal(signal.SIGINT)
        rest, _ = bridge.communicate(timeout=HANG_GUARD)
    finally:
        bridge.kill()
    assert json.loads(rest) == {"sigint_count": 1}
    assert bridge.returncode == 130


def test_ctrl_c_on_the_terminal_reaches_codex_exactly_once(fake_codex, environment, redis_server, tmp_path):
    env = {**environment, "FAKE_CODEX_MODE": "count-sigint"}
    controller, terminal = os.openpty()
    try:
        bridge = subprocess.Popen(
            [BRIDGE, "run", "--run-id", "int-tty", "--", fake_codex, "exec", "--json", "p"],
            env=env, cwd=tmp_path, stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True, preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )
        try:
            assert read_first_line(bridge) == b'{"ready":true}\n'
            os.write(controller, b"\x03")  # the terminal sends SIGINT to its foreground group: bridge and Codex
            rest, _ = bridge.communicate(timeout=HANG_GUARD)
        finally:
            bridge.kill()
    finally:
        os.close(controller)
        os.close(terminal)
    assert json.loads(rest) == {"sigint_count": 1}
    assert bridge.returncode == 130


def test_closed_stdin_stays_closed_for_codex(fake_codex, environment, redis_server, tmp_path):
    env = {**environment, "FAKE_CODEX_MODE": "probe-stdin"}
    closing_stdin = ["sh", "-c", 'exec "$@" <&-', "sh"]
    direct = run_process([*closing_stdin, fake_codex, "exec", "--json"], env, tmp_path)
    via = run_process([*closing_stdin, BRIDGE, "run", "--run-id", "closed-stdin", "--", fake_codex, "exec", "--json"], env, tmp_path)
    assert direct.stdout == via.stdout == b'{"stdin_open": false}\n'
    assert via.returncode == 0
    assert [entry["kind"] for entry in stream_entries(redis_server, "closed-stdin")] == ["start", "line", "end"]


@pytest.mark.parametrize("size", [40, 200_000])
def test_prompt_on_stdin_is_passed_through_and_captured(fake_codex, environment, redis_server, tmp_path, size):
    env = {**environment, "FAKE_CODEX_MODE": "read-stdin"}
    prompt = ("Write a haiku about pipes. é " * (size // 29 + 1)).encode()[:size]
    via = run_process([BRIDGE, "run", "--run-id", f"stdin-{size}", "--", fake_codex, "exec", "--json", "-"], env, tmp_path, input=prompt)
    assert via.returncode == 0
    assert json.loads(via.stdout) == {"stdin_bytes": len(prompt), "sha256": hashlib.sha256(prompt).hexdigest()}
    entries = stream_entries(redis_server, f"stdin-{size}")
    [meta] = [entry for entry in entries if entry["kind"] == "meta" and "prompt" in entry["data"]]
    assert meta["data"]["prompt"] == prompt[:64 * 1024].decode("utf-8", "replace")
    assert meta["seq"] < entries[-1]["seq"]


def test_codex_not_found_exits_127_and_still_records_the_run(environment, redis_server, tmp_path):
    via = run_process([BRIDGE, "run", "--run-id", "missing", "--", str(tmp_path / "no" / "codex"), "exec", "p"], environment, tmp_path)
    assert via.returncode == 127
    assert b"codex-langfuse: cannot run" in via.stderr
    entries = stream_entries(redis_server, "missing")
    assert [entry["kind"] for entry in entries] == ["start", "end"]
    assert entries[-1]["data"]["exit_code"] == 127


def test_run_with_redis_frozen_exits_within_the_flush_timeout_and_the_spool_delivers_later(fake_codex, environment, redis_server, tmp_path):
    redis_server.freeze()
    try:
        via = run_process([BRIDGE, "run", "--run-id", "frozen-run", "--flush-timeout", "3", "--", fake_codex, "exec", "--json", "p"],
                          environment, tmp_path)
    finally:
        redis_server.thaw()
    assert via.returncode == 3 and via.stdout.endswith(b"final line without newline")
    assert orphan_candidates(Path(environment["CODEX_LANGFUSE_SPOOL_DIR"])), "the run waits in the spool"
    adopter = Producer(redis_url=redis_server.url, spool_dir=environment["CODEX_LANGFUSE_SPOOL_DIR"], adopt_interval=0.2)
    adopter.start_run(run_id="adopter").finish(0)
    deadline = time.monotonic() + HANG_GUARD
    while not [entry for entry in stream_entries(redis_server, "frozen-run") if entry["kind"] == "end"]:
        assert time.monotonic() < deadline, "the spooled run never arrived"
        time.sleep(0.05)
    assert adopter.close(10)
    entries = stream_entries(redis_server, "frozen-run")
    assert [entry["seq"] for entry in entries] == list(range(len(entries)))
    assert [entry["data"] for entry in entries if entry["kind"] == "line"] == expected_lines(via.stdout)


def test_tee_copies_stdin_to_stdout_and_captures_the_lines(environment, redis_server, tmp_path):
    stream = (CODEX_FIXTURES / "real_run_0.169.0_full.jsonl").read_bytes() + b"\xff trailing, no newline"
    via = run_process([BRIDGE, "tee", "--run-id", "tee-run", "--session-id", "s-1"], environment, tmp_path, input=stream)
    assert via.returncode == 0
    assert via.stdout == stream
    entries = stream_entries(redis_server, "tee-run")
    assert entries[0]["kind"] == "start" and entries[0]["data"]["session_id"] == "s-1"
    assert [entry["data"] for entry in entries if entry["kind"] == "line"] == expected_lines(stream)
    assert entries[-1]["data"] == {"exit_code": None, "signal": None, "reason": "eof"}


def test_tee_keeps_capturing_when_its_reader_goes_away(environment, redis_server, tmp_path):
    stream = b"".join(b'{"n":%d,"pad":"%s"}\n' % (n, b"p" * 200) for n in range(3000))
    tee = subprocess.Popen([BRIDGE, "tee", "--run-id", "tee-epipe"], env=environment, cwd=tmp_path,
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    tee.stdout.close()  # nobody reads our stdout any more
    _, stderr = tee.communicate(stream, timeout=HANG_GUARD)
    assert tee.returncode == 141, stderr
    entries = stream_entries(redis_server, "tee-epipe")
    assert len([entry for entry in entries if entry["kind"] == "line"]) == 3000
    assert entries[-1]["data"]["reason"] == "eof"


def test_help_lists_every_subcommand(environment, tmp_path):
    result = run_process([BRIDGE, "--help"], environment, tmp_path)
    assert result.returncode == 0
    for name in ("run", "tee", "dispatch", "worker", "replay", "status", "score", "demo", "show"):
        assert re.search(rb"^\s+" + name.encode() + rb"\s", result.stdout, re.MULTILINE), name


def test_other_subcommands_are_handed_to_ingest_cli(monkeypatch):
    import types

    received = []
    fake = types.ModuleType("codex_langfuse.ingest.cli")
    fake.main = lambda argv: received.append(argv) or 7
    monkeypatch.setitem(sys.modules, "codex_langfuse.ingest.cli", fake)
    assert main(["status", "--json"]) == 7
    assert received == [["status", "--json"]]


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 64, 100_000])
def test_line_splitter_gives_the_same_lines_for_any_chunking(chunk_size):
    data = b'{"a":1}\n\r\n\nline two\r\n' + b"z" * 50 + b"\nlast"
    splitter = LineSplitter(max_line_bytes=20)
    lines = []
    for start in range(0, len(data), chunk_size):
        lines += splitter.feed(data[start:start + chunk_size])
        assert len(splitter._kept) <= 20  # bounded, whatever the input
    lines += splitter.finish()
    assert lines == [(b'{"a":1}', None), (b"", None), (b"", None), (b"line two", None), (b"z" * 20, 50), (b"last", None)]


def test_line_splitter_cut_line_ending_in_crlf_reports_the_length_without_it():
    splitter = LineSplitter(max_line_bytes=4)
    assert splitter.feed(b"abcdefg\r\n") == [(b"abcd", 7)]
    assert splitter.feed(b"abcd\r\n") == [(b"abcd", None)]
    assert splitter.finish() == []


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_run_joins_the_trace_in_traceparent_and_says_which(fake_codex, environment, redis_server, tmp_path):
    env = {**environment, "TRACEPARENT": TRACEPARENT, "FAKE_CODEX_MODE": "normal"}
    done = run_process([BRIDGE, "run", "--", fake_codex, "exec", "--json", "-s", "read-only",
                        "-c", "model_reasoning_effort=high", "hi"], env, tmp_path)
    assert done.returncode == 3
    (start,) = [e for e in stream_entries(redis_server) if e["kind"] == "start"]
    assert start["data"]["parent"] == TRACEPARENT
    assert start["data"]["model_parameters"] == {"sandbox_mode": "read-only", "reasoning_effort": "high"}
    assert b"trace 0af7651916cd43dd8448eb211c80319c" in done.stderr


def test_tee_parent_option_wins_and_a_bad_one_is_ignored_with_a_warning(environment, redis_server, tmp_path):
    stream = (CODEX_FIXTURES / "real_run_0.169.0_full.jsonl").read_bytes()
    other = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    env = {**environment, "TRACEPARENT": TRACEPARENT}
    via = run_process([BRIDGE, "tee", "--run-id", "tee-parent", "--parent", other, "--set-trace-attributes"],
                      env, tmp_path, input=stream)
    assert via.returncode == 0 and via.stdout == stream
    bad = run_process([BRIDGE, "tee", "--run-id", "tee-bad-parent"], {**env, "TRACEPARENT": "garbage"}, tmp_path,
                      input=stream)
    assert bad.returncode == 0 and bad.stdout == stream
    assert b"ignoring the parent 'garbage'" in bad.stderr
    starts = {e["run"]: e["data"] for e in stream_entries(redis_server) if e["kind"] == "start"}
    assert starts["tee-parent"]["parent"] == other and starts["tee-parent"]["set_trace_attributes"] is True
    assert "parent" not in starts["tee-bad-parent"]


def test_the_environment_option_is_normalised_or_refused_clearly(environment, redis_server, tmp_path):
    ok = run_process([BRIDGE, "tee", "--run-id", "tee-env", "--environment", "Staging"], environment, tmp_path,
                     input=b"{}\n")
    assert ok.returncode == 0
    assert b"environment 'Staging' is sent as 'staging'" in ok.stderr
    (start,) = [e for e in stream_entries(redis_server, "tee-env") if e["kind"] == "start"]
    assert start["data"]["environment"] == "staging"
    refused = run_process([BRIDGE, "tee", "--run-id", "tee-env-2", "--environment", "ci.nightly"], environment,
                          tmp_path, input=b"{}\n")
    assert refused.returncode == 2
    assert b"environment 'ci.nightly' cannot be used" in refused.stderr
    assert stream_entries(redis_server, "tee-env-2") == []
