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
from codex_langfuse.producer.capture import LineSplitter
from codex_langfuse.producer.cli import main
from codex_langfuse.producer.entries import SHRINKABLE_FACTOR, fit_line
from codex_langfuse.producer.passthrough import Tail
from codex_langfuse.producer.spool import orphan_candidates
from codex_langfuse.producer.xadd import LINES

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
    elif mode == "stderr-only":
        sys.stderr.buffer.write(b"x" * 20000 + b"\nNot inside a trusted directory and --skip-git-repo-check was not specified.\n")
        sys.stderr.flush()
        sys.exit(int(os.environ.get("FAKE_CODEX_EXIT", "1")))
    elif mode == "flood":
        line = b'{"type":"item.completed","item":{"type":"agent_message","text":"' + b"a" * 950 + b'"}}'
        for n in range(int(os.environ["FAKE_CODEX_LINES"])):
            os.write(1, b'{"n":%d,' % n + line[1:] + b"\n")
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
    assert via.stderr == direct.stderr  # copied through byte for byte (with --run-id nothing is announced)

    entries = stream_entries(redis_server, "cli-run")
    assert [entry["seq"] for entry in entries] == list(range(len(entries)))
    start, meta, *lines, end = entries
    assert start["kind"] == "start" and meta["kind"] == "meta" and end["kind"] == "end"
    assert start["ts"] <= min(entry["ts"] for entry in entries[1:])
    assert {key: start["data"][key] for key in ("prompt", "cwd", "tags", "metadata", "name", "user_id", "environment")} == {
        "prompt": "fix the bug", "cwd": str(tmp_path), "tags": ["nightly"], "metadata": {"ci": "yes"},
        "name": "bench", "user_id": "u1", "environment": "test",
    }
    assert meta["data"] == {"model": "model-from-config"}
    assert [entry["kind"] for entry in lines] == ["line"] * len(lines)
    assert [entry["data"] for entry in lines] == expected_lines(direct.stdout)
    # a failed run carries the end of Codex's stderr
    assert end["data"] == {"exit_code": 3, "signal": None, "reason": "exited", "stderr": "codex diagnostics \ufffd (not json)\n"}


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
    # the run starts before anything was read, though the capture process queues the start entry
    assert entries[0]["ts"] <= min(entry["ts"] for entry in entries[1:])
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


def split(parts) -> list[tuple[bytes, int | None]]:
    """The lines of a splitter's parts as they are read (line, original length if cut), before the
    sender strips a \r before the newline and fits them to the line limit."""
    lines = []
    for kind, data, extra in parts:
        if kind == LINES:
            pieces = data.split(b"\n")
            assert pieces.pop() == b"" and len(pieces) == extra
            lines += [(piece, None) for piece in pieces]
        else:
            lines.append((data, extra))
    return lines


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 64, 100_000])
def test_line_splitter_gives_the_same_lines_for_any_chunking(chunk_size):
    limit = 4
    data = b'{"a":1}\n\r\n\nline two\r\n' + b"z" * 100 + b"\nlast"
    splitter = LineSplitter(max_line_bytes=limit * SHRINKABLE_FACTOR)
    parts = []
    for start in range(0, len(data), chunk_size):
        parts += splitter.feed(data[start:start + chunk_size])
        assert len(splitter._carry) <= limit * SHRINKABLE_FACTOR  # bounded, whatever the input
    parts += splitter.finish()
    # as the sender fits them: a line past the splitter's cap arrives cut (its first bytes and its
    # length), a shorter one whole and is cut there; either way the same entry
    fitted = [fit_line(line.removesuffix(b"\r"), length, limit) for line, length in split(parts)]
    assert fitted == [(b'{"a"', 7), (b"", None), (b"", None), (b"line", 8), (b"zzzz", 100), (b"last", None)]
    assert splitter.lines == 6


def test_line_splitter_hands_over_the_lines_of_a_read_as_one_part():
    splitter = LineSplitter(max_line_bytes=1000)
    assert splitter.feed(b"a\nb\nc") == [(LINES, b"a\nb\n", 2)]
    assert splitter.feed(b"d\ne\n") == [(LINES, b"cd\ne\n", 2)]
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

@pytest.mark.parametrize("reads", [[b"abcdefg\r", b"\n"], [b"abcdefg", b"\r", b"\n"], [b"abcde", b"fg\r\nabcd\r\n"]])
def test_line_splitter_cut_line_ending_in_crlf_reports_the_length_without_it(reads):
    """A line that outgrows the cap across reads is kept cut; its length leaves out the \r\n."""
    splitter = LineSplitter(max_line_bytes=4)
    parts = [part for chunk in reads for part in splitter.feed(chunk)]
    assert split(parts)[0] == (b"abcd", 7)
    assert splitter.finish() == []


def test_stderr_tail_keeps_the_last_bytes_as_text():
    tail = Tail(size=8)
    for chunk in (b"first line\n", "l\u00e9ft: ".encode(), b"err\xff\n"):
        tail.add(chunk)
    assert tail.text() == "t: err\ufffd\n"
    cut_in_a_character = Tail(size=4)
    cut_in_a_character.add("x\u00e9abc".encode())  # the \u00e9's first byte falls off
    assert cut_in_a_character.text() == "abc"


TRUSTED = "Not inside a trusted directory and --skip-git-repo-check was not specified.\n"


@pytest.mark.parametrize("exit_code", [1, 0])
def test_the_end_of_codexs_stderr_goes_with_a_run_that_failed_or_printed_nothing(fake_codex, environment, redis_server,
                                                                                tmp_path, exit_code):
    env = {**environment, "FAKE_CODEX_MODE": "stderr-only", "FAKE_CODEX_EXIT": str(exit_code)}
    direct = run_process([fake_codex, "exec", "--json", "p"], env, tmp_path)
    via = run_process([BRIDGE, "run", "--run-id", f"untrusted-{exit_code}", "--", fake_codex, "exec", "--json", "p"], env, tmp_path)
    assert via.returncode == direct.returncode == exit_code
    assert via.stderr == direct.stderr  # still passed through, byte for byte
    end = stream_entries(redis_server, f"untrusted-{exit_code}")[-1]
    assert end["kind"] == "end" and end["data"]["stderr"].endswith(TRUSTED)
    assert 8000 < len(end["data"]["stderr"].encode()) <= 8192  # the last 8 KiB, not all of it


def test_a_run_that_succeeded_and_printed_sends_no_stderr(fake_codex, environment, redis_server, tmp_path):
    env = {**environment, "FAKE_CODEX_MODE": "read-stdin"}
    via = run_process([BRIDGE, "run", "--run-id", "fine", "--", fake_codex, "exec", "--json", "-"], env, tmp_path, input=b"p")
    assert via.returncode == 0
    assert "stderr" not in stream_entries(redis_server, "fine")[-1]["data"]


def test_run_warns_when_codex_exec_is_not_asked_for_json(fake_codex, environment, redis_server, tmp_path):
    warned = run_process([BRIDGE, "run", "--run-id", "no-json", "--", fake_codex, "exec", "fix it"], environment, tmp_path)
    assert b"codex-langfuse: warning: `codex exec` without --json" in warned.stderr
    for asked in (["--json"], ["--experimental-json"]):
        quiet = run_process([BRIDGE, "run", "--run-id", "json", "--", fake_codex, "exec", *asked, "fix it"], environment, tmp_path)
        assert b"warning" not in quiet.stderr


@pytest.mark.parametrize("argv,expected", [
    (["run", "--flush-timeout", "soon", "--", "codex"], "argument --flush-timeout: expected a number of seconds"),
    (["run", "--flush-timeout", "-1", "--", "codex"], "argument --flush-timeout: expected a number of seconds"),
    (["run", "--run-id", "a/b", "--", "codex"], "argument --run-id: must be 1-128 characters"),
    (["run", "--metadata", "novalue", "--", "codex"], "argument --metadata: expected KEY=VALUE"),
    (["run", "--bogus", "--", "codex"], "unrecognized arguments: --bogus"),
    (["run", "--", "--json", "codex"], "unrecognized option '--json'"),
    (["run"], "give the Codex command after --"),
    (["tee", "--nope"], "unrecognized arguments: --nope"),
    (["spool", "frobnicate"], "invalid choice: 'frobnicate'"),
    (["spool", "flush", "--timeout", "x"], "argument --timeout: expected a number of seconds"),
])
def test_usage_mistakes_are_one_line_and_exit_2(environment, tmp_path, argv, expected):
    result = run_process([BRIDGE, *argv], environment, tmp_path, stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and re.match(rf"codex-langfuse {argv[0]}( flush)?: error: ", lines[0]) and expected in lines[0]


@pytest.mark.parametrize("command", ["run", "tee", "spool"])
@pytest.mark.parametrize("name,value,expected", [
    ("REDIS_URL", "localhost:6379", "REDIS_URL='localhost:6379' needs a scheme"),
    ("CODEX_LANGFUSE_QUEUE_MAX_BYTES", "64MB", "CODEX_LANGFUSE_QUEUE_MAX_BYTES='64MB' is not a positive whole number"),
])
def test_setting_mistakes_stop_the_commands_with_one_line_and_exit_2(fake_codex, environment, tmp_path, command, name,
                                                                     value, expected):
    argv = {"run": ["run", "--", fake_codex, "exec", "--json", "p"], "tee": ["tee"], "spool": ["spool"]}[command]
    result = run_process([BRIDGE, *argv], {**environment, name: value}, tmp_path, stdin=subprocess.DEVNULL)
    assert result.returncode == 2 and result.stdout == b""  # Codex did not run
    assert result.stderr.decode().splitlines() == [f"codex-langfuse {command}: error: " + result.stderr.decode()
                                                   .split(": error: ", 1)[1].rstrip("\n")]
    assert expected in result.stderr.decode() and b"Traceback" not in result.stderr


def test_a_flood_is_passed_through_and_every_line_captured_past_the_queue_cap(fake_codex, environment, redis_server, tmp_path):
    """The capture process waits for room instead of dropping: the journal holds what waits."""
    lines = 20_000  # ~20 MB of 1 KB lines, against a 1 MiB in-memory queue
    env = {**environment, "FAKE_CODEX_MODE": "flood", "FAKE_CODEX_LINES": str(lines), "CODEX_LANGFUSE_QUEUE_MAX_BYTES": "1048576"}
    via = run_process([BRIDGE, "run", "--run-id", "flood", "--flush-timeout", "60", "--", fake_codex, "exec", "--json", "p"],
                      env, tmp_path)
    assert via.returncode == 0 and via.stdout.count(b"\n") == lines
    entries = stream_entries(redis_server, "flood")
    assert [entry["seq"] for entry in entries] == list(range(len(entries)))
    assert [entry["data"] for entry in entries if entry["kind"] == "line"] == expected_lines(via.stdout)


def test_a_flood_into_a_frozen_redis_is_spooled_whole_by_the_deadline(fake_codex, environment, redis_server, tmp_path):
    lines = 20_000
    env = {**environment, "FAKE_CODEX_MODE": "flood", "FAKE_CODEX_LINES": str(lines)}
    redis_server.freeze()
    try:
        started = time.monotonic()
        via = run_process([BRIDGE, "run", "--run-id", "frozen-flood", "--flush-timeout", "3", "--", fake_codex, "exec",
                           "--json", "p"], env, tmp_path)
        took = time.monotonic() - started
    finally:
        redis_server.thaw()
    assert via.returncode == 0 and took < HANG_GUARD
    spool_dir = Path(environment["CODEX_LANGFUSE_SPOOL_DIR"])
    listed = run_process([BRIDGE, "spool", "--json"], environment, tmp_path)
    [left] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert left["owner"] == "gone" and left["this_destination"] and left["entries"] >= lines + 2 - 500  # the batch in flight
    flushed = run_process([BRIDGE, "spool", "flush"], environment, tmp_path)
    assert flushed.returncode == 0, flushed.stdout + flushed.stderr
    assert orphan_candidates(spool_dir) == []
    entries = stream_entries(redis_server, "frozen-flood")
    assert sorted({entry["seq"] for entry in entries}) == list(range(lines + 2))  # start, every line, end
    assert [entry["data"] for entry in sorted({e["seq"]: e for e in entries}.values(), key=lambda e: e["seq"])
            if entry["kind"] == "line"] == expected_lines(via.stdout)


def test_spool_lists_and_flushes_only_what_this_destination_owns_unless_asked(fake_codex, environment, redis_server, tmp_path):
    spool_dir = Path(environment["CODEX_LANGFUSE_SPOOL_DIR"])
    other = {**environment, "CODEX_LANGFUSE_STREAM": "other:events"}
    redis_server.stop()
    for env, run_id in ((environment, "mine"), (other, "theirs")):
        via = run_process([BRIDGE, "run", "--run-id", run_id, "--flush-timeout", "1", "--", fake_codex, "exec", "--json", "p"],
                          env, tmp_path)
        assert via.returncode == 3
    down = run_process([BRIDGE, "spool", "flush"], environment, tmp_path)
    assert down.returncode == 1 and b"Redis did not answer" in down.stdout
    redis_server.start()
    listed = [json.loads(line) for line in run_process([BRIDGE, "spool", "--json"], environment, tmp_path).stdout.splitlines()]
    assert sorted(found["this_destination"] for found in listed) == [False, True]
    assert all(found["owner"] == "gone" and found["entries"] > 2 for found in listed)
    text = run_process([BRIDGE, "spool"], environment, tmp_path).stdout.decode()
    assert "(this)" in text and "(other)" in text
    flushed = run_process([BRIDGE, "spool", "flush"], environment, tmp_path)
    assert flushed.returncode == 0 and b"--all sends them here" in flushed.stdout
    assert {entry["run"] for entry in stream_entries(redis_server)} == {"mine"}
    assert len(orphan_candidates(spool_dir)) == 1
    everything = run_process([BRIDGE, "spool", "flush", "--all"], environment, tmp_path)
    assert everything.returncode == 0 and orphan_candidates(spool_dir) == []
    assert {entry["run"] for entry in stream_entries(redis_server)} == {"mine", "theirs"}
