"""A whole pipeline on 127.0.0.1 for integration tests: a real redis-server, a strict Langfuse
receiver of a chosen server profile (`latest`, `v4.16`, `v3`), dispatchers and workers as separate
processes (`codex-langfuse dispatch|worker`), started and stopped by pid. Timings are compressed
through settings, never asserted.

Redis runs with ACLs on, as in production (`codex-langfuse acl`): the runner side (`run`, `tee`,
`import`, `follow`, `feed`, `xadd`) connects as the runner user, which may only append to the
stream; the back end (`env`, `settings()`, the other commands of `cli`) as the back-end user;
`redis` is an admin client for the tests' own looks."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import redis

from codex_langfuse.ingest import acl
from codex_langfuse.ingest.keys import Keys
from codex_langfuse.ingest.settings import Settings
from tests.support.langfuse_receiver import LangfuseReceiver
from tests.support.redis_server import RedisServer

REPO = Path(__file__).resolve().parents[2]
# What child processes import from: this checkout's tests, and the package wherever the caller has
# it (an installed sdist's tests run against the installed package, not a checkout's).
PYTHONPATH = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
RUNNER, BACKEND = "runner", "backend"  # the Redis users (ingest/acl.py)
RUNNER_COMMANDS = ("run", "tee", "import", "follow")  # the producer's commands

# Compressed timings for tests: leases, sweeps and retries in seconds, not minutes.
FAST = {
    "CODEX_LANGFUSE_LEASE_SECONDS": "4",
    "CODEX_LANGFUSE_SWEEP_INTERVAL": "0.5",
    "CODEX_LANGFUSE_CLAIM_MIN_IDLE_MS": "2000",
    "CODEX_LANGFUSE_RETRY_BASE": "0.2",
    "CODEX_LANGFUSE_RETRY_CAP": "1.0",
    "CODEX_LANGFUSE_HTTP_TIMEOUT": "2",
    "CODEX_LANGFUSE_BLOCK_MS": "200",
    "CODEX_LANGFUSE_WORKER_TTL": "15",
    "CODEX_LANGFUSE_JOB_MONITORING_INTERVAL": "5",
    "CODEX_LANGFUSE_MAINTENANCE_INTERVAL": "5",
    "CODEX_LANGFUSE_IN_DOUBT_WAIT": "6",
}


class Stack:
    def __init__(self, tmp: Path, receiver: LangfuseReceiver | None = None, profile: str = "latest",
                 redis_server: RedisServer | None = None, **overrides: Any):
        self.tmp = Path(tmp)
        self.tmp.mkdir(parents=True, exist_ok=True)
        tuned = {**FAST, **{f"CODEX_LANGFUSE_{k.upper()}": str(v) for k, v in overrides.items()}}
        named = Settings(**{k.removeprefix("CODEX_LANGFUSE_").lower(): v for k, v in tuned.items()
                            if k.removeprefix("CODEX_LANGFUSE_").lower() in ("stream", "key_prefix")})
        self.passwords = {RUNNER: secrets.token_hex(12), BACKEND: secrets.token_hex(12)}
        self.redis_server = (redis_server or RedisServer()).with_users(
            [acl.runner(named, RUNNER, self.passwords[RUNNER]), acl.backend(named, BACKEND, self.passwords[BACKEND])]
        ).start()
        self.receiver = receiver or LangfuseReceiver(profile=profile).start()
        self.profile = self.receiver.profile.name
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("CODEX_LANGFUSE_", "LANGFUSE_"))},
            **FAST,
            "REDIS_URL": self.redis_server.url_as(BACKEND, self.passwords[BACKEND]),
            "LANGFUSE_PUBLIC_KEY": self.receiver.public_key,
            "LANGFUSE_SECRET_KEY": self.receiver.secret_key,
            "LANGFUSE_BASE_URL": self.receiver.base_url,
            "CODEX_LANGFUSE_SPOOL_DIR": str(self.tmp / "spool"),
            "CODEX_LANGFUSE_SINK_DIR": str(self.tmp / "sink"),
            "PYTHONPATH": PYTHONPATH,
            **{f"CODEX_LANGFUSE_{k.upper()}": str(v) for k, v in overrides.items()},
        }
        # what `run`, `tee` and the producer see: the runner user
        self.runner_env = {**self.env, "REDIS_URL": self.redis_server.url_as(RUNNER, self.passwords[RUNNER])}
        self.processes: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}

    # ---- settings as the processes see them ----

    def settings(self) -> Settings:
        saved = dict(os.environ)
        try:
            os.environ.clear()
            os.environ.update(self.env)
            return Settings()
        finally:
            os.environ.clear()
            os.environ.update(saved)

    @property
    def redis(self) -> redis.Redis:
        """An admin client: for the tests' own looks and faults."""
        return self.redis_server.client()

    @property
    def runner_redis(self) -> redis.Redis:
        """A client as the runner user."""
        return redis.Redis.from_url(self.runner_env["REDIS_URL"])

    @property
    def keys(self) -> Keys:
        return Keys(self.settings().key_prefix)

    # ---- processes ----

    def start(self, role: str, name: str | None = None, *extra: str) -> subprocess.Popen:
        name = name or f"{role}-{len(self.processes)}"
        log = self.tmp / f"{name}.log"
        self.logs[name] = log
        command = [sys.executable, "-m", "codex_langfuse.producer.cli", role, *extra]
        if role == "worker":
            command += ["--name", name]
        with open(log, "ab") as out:
            process = subprocess.Popen(command, env=self.runner_env if role in RUNNER_COMMANDS else self.env,
                                       stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
        self.processes[name] = process
        return process

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal a process and everything it started (an RQ worker's work horse and scheduler)."""
        process = self.processes[name]
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        if sig in (signal.SIGKILL, signal.SIGTERM):
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)

    def cli(self, *args: str, stdin: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        """`codex-langfuse ARGS`: `run` and `tee` as a runner, everything else as the back end."""
        env = self.runner_env if args and args[0] in RUNNER_COMMANDS else self.env
        return subprocess.run([sys.executable, "-m", "codex_langfuse.producer.cli", *args], env=env, cwd=REPO,
                              input=stdin, capture_output=True, timeout=timeout)

    def log_text(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace") if name in self.logs else ""

    def close(self) -> None:
        for name in list(self.processes):
            self.kill(name, signal.SIGTERM)
        self.processes.clear()
        self.receiver.stop()
        self.redis_server.close()

    # ---- feeding and waiting ----

    def feed(self, run_id: str, lines: Iterable[bytes], *, meta: dict[str, Any] | None = None,
             exit_code: int | None = 0, ts0: int | None = None, inst: str | None = None) -> int:
        """Write a run straight onto the stream as a producer would (entry format of README), as
        the runner user."""
        entries = self.entries(run_id, lines, meta=meta, exit_code=exit_code, ts0=ts0, inst=inst)
        self.xadd(entries)
        return len(entries)

    def entries(self, run_id: str, lines: Iterable[bytes], *, meta: dict[str, Any] | None = None,
                exit_code: int | None = 0, ts0: int | None = None, inst: str | None = None) -> list[dict[str, Any]]:
        """The stream entries of a run (`inst`: the producer's run instance field, when it sends one)."""
        ts = ts0 if ts0 is not None else int(time.time() * 1e6)
        data = [("start", json.dumps(meta or {}).encode())]
        data += [("line", line) for line in lines]
        data.append(("end", json.dumps({"exit_code": exit_code, "signal": None, "reason": "exited"}).encode()))
        return [{"v": "1", "run": run_id, "seq": str(seq), "ts": str(ts + seq * 1000), "kind": kind, "data": payload,
                 **({"inst": inst} if inst else {})} for seq, (kind, payload) in enumerate(data)]

    def xadd(self, entries: Iterable[dict[str, Any]]) -> None:
        """Entries onto the stream, as the runner user."""
        stream = self.settings().stream
        with self.runner_redis.pipeline(transaction=False) as pipe:
            for fields in entries:
                pipe.xadd(stream, fields)
            pipe.execute()

    def settled(self, run_ids: Iterable[str]) -> bool:
        """Every run closed, with nothing left to fold or deliver."""
        keys, client = self.keys, self.redis
        for run in run_ids:
            state = client.get(keys.state(run))
            if state is None or not json.loads(state).get("closed"):
                return False
            if client.hlen(keys.outbox(run)) or client.hlen(keys.log(run)) or client.zscore(keys.backlog, run):
                return False
        return True

    def wait(self, condition: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
        """A hang guard, not a measurement."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.05)
        logs = "\n".join(f"--- {name}\n{self.log_text(name)[-3000:]}" for name in self.processes)
        raise AssertionError(f"timed out waiting for {what}\n{logs}")
