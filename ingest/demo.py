"""`codex-langfuse demo`: the whole pipeline on one machine, in under a minute.

Starts a redis-server of its own (127.0.0.1, a free port, a temporary directory), a dispatcher
and a worker as separate processes (as the Procfile runs them), feeds a recorded Codex run
through `codex-langfuse tee`, waits until the trace is delivered, shows it, and stops every
process it started by its pid. With Langfuse keys in the environment the trace goes to
Langfuse; without, the demo chooses the local sink for its worker (`--sink`), which
`codex-langfuse show` reads. Ctrl-C stops everything it started and exits 130.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis

from codex_langfuse.ingest import connections
from codex_langfuse.ingest.deadletters import DeadLetters
from codex_langfuse.ingest.local_redis import LocalRedis
from codex_langfuse.ingest.observations import trace_id
from codex_langfuse.ingest.settings import Settings
from codex_langfuse.ingest.show import render_trace

RECORDED_RUN = Path(__file__).parent / "demo" / "codex_0.169.0_full.jsonl"
PROMPT = "Make a plan, run a command, create hello.txt and search the web"


def run_demo(settings: Settings, fixture: str | None = None, model: str = "gpt-5-codex", timeout: float = 60.0) -> int:
    fixture_path = Path(fixture) if fixture else RECORDED_RUN
    sink = None if settings.langfuse_enabled else settings.shown_sink_dir()
    server = LocalRedis().start()
    spool = tempfile.mkdtemp(prefix="codex-langfuse-demo-spool-")
    env = {**os.environ, "REDIS_URL": server.url, "CODEX_LANGFUSE_SPOOL_DIR": spool,
           "CODEX_LANGFUSE_LOG_LEVEL": os.environ.get("CODEX_LANGFUSE_LOG_LEVEL", "WARNING")}
    command = [sys.executable, "-m", "codex_langfuse.producer.cli"]
    processes: list[subprocess.Popen] = []
    ended: list[str] = []
    run_id = f"demo-{uuid.uuid4()}"
    try:
        print(f"redis-server on {server.url} (pid {server.proc.pid if server.proc else '?'})", file=sys.stderr)
        processes.append(subprocess.Popen([*command, "dispatch"], env=env))
        processes.append(subprocess.Popen([*command, "worker", *(["--sink", str(sink)] if sink else [])], env=env))
        with open(fixture_path, "rb") as stdin:
            subprocess.run([*command, "tee", "--run-id", run_id, "--model", model, "--name", "codex demo",
                            "--tag", "demo", "--metadata", f"fixture={fixture_path.name}", "--prompt", PROMPT],
                           stdin=stdin, stdout=subprocess.DEVNULL, env=env, check=True)
        demo_settings = settings.model_copy(update={"redis_url": server.url})
        delivered = wait_delivered(demo_settings, run_id, timeout, processes)
        ended = [f"the {role} stopped (exit code {process.returncode}; its reason is above)"
                 for role, process in zip(("dispatcher", "worker"), processes) if process.poll() is not None]
        refused = list(DeadLetters(connections.redis_client(demo_settings), connections.keys(demo_settings))
                       .select(run_id=run_id)) if delivered else []
    except KeyboardInterrupt:
        print("codex-langfuse demo: interrupted; stopping the redis-server, dispatcher and worker it started",
              file=sys.stderr)
        return 130
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        server.close()
    if not delivered:
        print(f"the trace of run {run_id} was not delivered" + (f": {'; '.join(ended)}" if ended else
                                                              f" within {timeout:.0f} s"), file=sys.stderr)
        return 1
    if refused:
        for letter in refused:
            print(f"{settings.langfuse_base_url} refused {len(letter.items)} {letter.kind} ({letter.reason}): "
                  f"{letter.message}", file=sys.stderr)
        return 1
    trace = trace_id(run_id)
    print(f"\nrun {run_id} -> trace {trace}")
    if settings.langfuse_enabled:
        print(f"sent to Langfuse: {settings.langfuse_base_url.rstrip('/')}/trace/{trace}")
    else:
        print(f"written to the local sink {sink / trace}\n")
        print(render_trace(sink, run_id))
        print(f"\nsee it again with: codex-langfuse show {run_id}")
    return 0


def wait_delivered(settings: Settings, run_id: str, timeout: float,
                   processes: list[subprocess.Popen] | None = None) -> bool:
    """True once the run is closed and nothing of it waits in the pipeline; False at the timeout
    or as soon as one of `processes` ended (it said why on stderr)."""
    connection = connections.redis_client(settings)
    keys = connections.keys(settings)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(process.poll() is not None for process in processes or []):
            return False
        try:
            state = connection.get(keys.state(run_id))
            closed = state is not None and b'"closed":true' in state
            if closed and not connection.hlen(keys.outbox(run_id)) and connection.zscore(keys.backlog, run_id) is None:
                return True
        except redis.RedisError:
            pass
        time.sleep(0.1)
    return False
