"""Every everyday mistake ends in one clear line and an exit code, never a traceback
(ingest/cli.py: 1 failed or not found, 2 wrong usage or settings, 3 unavailable, 130 interrupted,
141 reader gone)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from codex_langfuse.ingest.observations import trace_id
from tests.support.redis_server import free_port
from tests.support.stack import PYTHONPATH, REPO
from tests.test_pipeline import TS0, fixture_lines, meta_for
from tests.conftest import CODEX_FIXTURES

FULL = CODEX_FIXTURES / "real_run_0.169.0_full.jsonl"
BACKEND = ("rq", "langfuse", "pydantic", "pydantic_settings", "prometheus_client", "pythonjsonlogger")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CODEX_LANGFUSE_", "LANGFUSE_"))}
    env.pop("REDIS_URL", None)
    return {**env, "PYTHONPATH": PYTHONPATH, **extra}


def command(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "codex_langfuse.producer.cli", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def one_line(answer: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in answer.stderr, answer.stderr
    lines = answer.stderr.strip().splitlines()
    assert len(lines) == 1, answer.stderr
    return lines[0]


@pytest.mark.parametrize("args", [["status"], ["score", "some-run", "ci", "1"], ["replay", "--sink", "/tmp/unused"]])
def test_redis_unreachable_is_one_line_and_exit_3(args):
    url = f"redis://127.0.0.1:{free_port()}/0"
    answer = command(*args, env=clean_env(REDIS_URL=url))
    assert answer.returncode == 3
    line = one_line(answer)
    assert line.startswith(f"codex-langfuse {args[0]}: cannot reach Redis at {url}: ")
    assert line.endswith("(is it running? check REDIS_URL)") and "Connection refused" in line


@pytest.mark.parametrize("variable, value, message", [
    ("CODEX_LANGFUSE_RETRY_FOR", "6 hours", "not a duration (e.g. 90, 90s, 15m, 6h, 7d)"),
    ("CODEX_LANGFUSE_LOG_LEVEL", "verbose", "must be one of DEBUG, INFO, WARNING, ERROR or CRITICAL"),
    ("LANGFUSE_HOST", "cloud.langfuse.com", "must be an http:// or https:// URL, e.g. https://cloud.langfuse.com"),
])
@pytest.mark.parametrize("subcommand", ["status", "worker"])
def test_a_wrong_setting_is_one_line_and_exit_2(variable, value, message, subcommand):
    answer = command(subcommand, env=clean_env(**{variable: value}))
    assert answer.returncode == 2
    assert one_line(answer) == f"codex-langfuse {subcommand}: {variable}={value!r}: {message}"


def test_6h_is_a_duration(redis_server):
    answer = command("status", env=clean_env(REDIS_URL=redis_server.url, CODEX_LANGFUSE_RETRY_FOR="6h"))
    assert answer.returncode == 0, answer.stderr


def test_show_of_an_unknown_run_exits_1(tmp_path):
    answer = command("show", "no-such-run", env=clean_env(CODEX_LANGFUSE_SINK_DIR=str(tmp_path)))
    assert answer.returncode == 1
    assert one_line(answer) == f"codex-langfuse show: no trace for no-such-run in {tmp_path}"


def test_show_into_a_reader_that_goes_away_prints_no_traceback(tmp_path):
    trace = trace_id("long-run")
    folder = tmp_path / trace
    folder.mkdir()
    for i in range(400):
        (folder / f"{i:016x}.json").write_text(json.dumps({"traceId": trace, "spanId": f"{i:016x}", "name": "x" * 2000,
                                                           "startTimeUnixNano": "1", "endTimeUnixNano": "2"}))
    process = subprocess.Popen([sys.executable, "-m", "codex_langfuse.producer.cli", "show", "long-run", "--json"],
                               env=clean_env(CODEX_LANGFUSE_SINK_DIR=str(tmp_path)), cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.read(100)  # like `| head -c 100`
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(60) == 141
    assert stderr == ""


def test_ctrl_c_on_demo_stops_what_it_started_and_exits_130(tmp_path):
    demo = subprocess.Popen([sys.executable, "-m", "codex_langfuse.producer.cli", "demo"],
                            env=clean_env(XDG_STATE_HOME=str(tmp_path)), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    first = demo.stderr.readline()  # "redis-server on redis://… (pid N)": the demo is under way
    assert first.startswith("redis-server on "), first
    redis_pid = int(first.rsplit("pid ", 1)[1].rstrip(")\n"))
    time.sleep(0.5)  # let it start the dispatcher and the worker
    demo.send_signal(signal.SIGINT)
    rest = demo.stderr.read()
    assert demo.wait(60) == 130
    assert "Traceback" not in rest, rest
    assert "codex-langfuse demo: interrupted; stopping the redis-server, dispatcher and worker it started" in rest
    assert not Path(f"/proc/{redis_pid}").exists()
    # a process stopped by the demo may still be in the middle of exiting (a hang guard, not a measure)
    deadline = time.monotonic() + 10
    while _group_members(demo.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _group_members(demo.pid) == []


def _group_members(pgid: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def test_the_back_end_commands_on_a_runner_with_the_base_package_say_what_to_install(tmp_path):
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(
        "import sys\n"
        f"BLOCKED = {BACKEND!r}\n"
        "class Blocker:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in BLOCKED:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Blocker())\n")
    env = clean_env(PYTHONPATH=f"{tmp_path}{os.pathsep}{PYTHONPATH}")
    for subcommand in ("worker", "status", "doctor"):
        answer = command(subcommand, env=env)
        assert answer.returncode == 2
        line = one_line(answer)
        assert line.startswith(f"codex-langfuse {subcommand}: needs the back end, which is not installed here")
        assert line.endswith("pip install 'codex-langfuse[backend]'")
    assert command("--help", env=env).returncode == 0


@pytest.mark.integration
def test_score_takes_a_run_id_or_its_trace_id_and_refuses_an_unknown_run(stack):
    stack.start("dispatch")
    stack.start("worker")
    stack.feed("scored-run", fixture_lines(FULL), meta=meta_for(FULL), ts0=TS0)
    stack.wait(lambda: stack.settled(["scored-run"]), what="the run")
    trace = trace_id("scored-run")

    by_trace = command("score", trace, "review", "good", env=stack.env)
    assert by_trace.returncode == 0, by_trace.stderr
    assert f"codex-langfuse score: {trace} is the trace of run scored-run" in by_trace.stderr
    assert f"queued for trace {trace} (id {trace}-review)" in by_trace.stdout
    stack.wait(lambda: any(s.name == "review" for s in stack.receiver.scores()), what="the score")
    assert not any(s.trace_id == trace_id(trace) for s in stack.receiver.scores())  # no trace of a hashed trace id

    unknown = command("score", "scored-rnu", "review", "good", env=stack.env)
    assert unknown.returncode == 1
    assert one_line(unknown) == ("codex-langfuse score: no run 'scored-rnu' is known (no run id or trace id seen in "
                                 "the last 37 days); --force scores a run whose entries come later")
    forced = command("score", "not-yet", "review", "good", "--force", env=stack.env)
    assert forced.returncode == 0 and "run not-yet is not known yet; the score waits for it" in forced.stderr


@pytest.mark.integration
def test_doctor_says_what_to_fix(stack, redis_server):
    # a Redis as it comes (no users, no persistence): the stack's own runs with the users of `acl`
    plain = {**stack.env, "REDIS_URL": redis_server.url}
    answer = command("doctor", env=plain)
    assert answer.returncode == 1, answer.stdout + answer.stderr
    out = answer.stdout
    assert "ok      redis        Redis 7." in out
    assert "PROBLEM redis        persistence: appendonly no" in out and "fix: CONFIG SET appendonly yes" in out
    assert "ok      redis        eviction: noeviction" in out
    assert "PROBLEM acl          connected as 'default', which needs no password" in out
    assert "ok      clock        within" in out
    assert (f"ok      langfuse     Langfuse at {stack.receiver.base_url}: keys accepted (project test project), "
            f"server 4.16.0-test-receiver") in out
    assert "ok      spool" in out

    redis_server.client().config_set("appendonly", "yes")
    wrong = command("doctor", env={**plain, "LANGFUSE_SECRET_KEY": "sk-lf-wrong"})
    assert "ok      redis        persistence: appendonly yes" in wrong.stdout
    assert "PROBLEM langfuse     Langfuse at" in wrong.stdout and "HTTP 401: Invalid credentials" in wrong.stdout
    assert "fix: check LANGFUSE_PUBLIC_KEY, LANGFUSE_SECRET_KEY and LANGFUSE_BASE_URL" in wrong.stdout
    assert "Traceback" not in wrong.stderr


@pytest.mark.integration
def test_doctor_as_the_back_end_user_says_what_it_cannot_read(stack):
    """With the users of `codex-langfuse acl` the back end may not read Redis's configuration or
    ACLs (CONFIG GET would show secrets): doctor says so, and finds no problem it cannot see."""
    answer = command("doctor", env=stack.env)
    assert answer.returncode == 0, answer.stdout + answer.stderr
    assert "cannot read its configuration (this user has no permissions to run the 'config|get' command)" \
        in answer.stdout
    assert "cannot read its ACLs" in answer.stdout and "ok      clock        within" in answer.stdout
