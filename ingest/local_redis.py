"""A redis-server of our own on 127.0.0.1, started and stopped by pid: the demo's embedded
default, and the real server of the integration tests.

Given users (`with_users`, see `ingest.acl`), it starts with ACLs on: those users, and the default
user with every right behind a password (the one `url` and `client()` use).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from codex_langfuse.ingest.acl import User, url_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRedis:
    """One redis-server process; `stop`/`start` keep the port so clients reconnect to it,
    `freeze`/`thaw` (SIGSTOP/SIGCONT) make it hang with its socket open."""

    def __init__(self, port: int | None = None, appendonly: bool = False):
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install -y redis-server)")
        self.binary = binary
        self.port = port or free_port()
        self.appendonly = appendonly
        self.dir = Path(tempfile.mkdtemp(prefix="cl-redis-"))
        self.proc: subprocess.Popen | None = None
        self.users: list[User] = []
        self.default_password: str | None = None

    def with_users(self, users: list[User]) -> "LocalRedis":
        """Start with ACLs on: these users, and the default user behind a password."""
        self.users = list(users)
        self.default_password = self.default_password or os.urandom(16).hex()
        return self

    @property
    def url(self) -> str:
        """As the default user (every right; with ACLs on, behind its password)."""
        if self.default_password:
            return self.url_as("default", self.default_password)
        return f"redis://127.0.0.1:{self.port}/0"

    def url_as(self, user: str, password: str) -> str:
        return url_for(f"redis://127.0.0.1:{self.port}/0", user, password)

    def _acl_file(self) -> Path:
        path = self.dir / "users.acl"
        # The default user keeps every right, behind a password: Redis replays the AOF's
        # transactions as the default user and, without the fix of redis/redis#14541, silently
        # drops them on restart when it may not run them (turning it off loses data).
        lines = [f"user default on >{self.default_password} ~* &* +@all", *(user.acl_file_line() for user in self.users)]
        path.write_text("\n".join(lines) + "\n")
        return path

    def client(self, **kwargs) -> redis.Redis:
        return redis.Redis.from_url(self.url, **kwargs)

    def start(self) -> "LocalRedis":
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.dir), "--save", "", "--daemonize", "no",
            "--maxmemory-policy", "noeviction", "--loglevel", "warning",
            "--appendonly", "yes" if self.appendonly else "no",
        ]
        if self.users:
            args += ["--aclfile", str(self._acl_file())]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if redis.Redis.from_url(self.url, socket_timeout=0.2).ping():
                    return self
            except redis.RedisError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.thaw()
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: what a crash looks like (no shutdown save)."""
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
            self.proc = None

    def freeze(self) -> None:
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGCONT)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
