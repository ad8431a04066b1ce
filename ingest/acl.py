"""Redis users for least privilege (`codex-langfuse acl`).

Runners run Codex, which runs arbitrary commands: whatever Redis password a runner holds, assume
Codex can read it. So runners connect as a user that can only append to the event stream
(`XADD` on that one key, and `PING`): it cannot read a key, write any other, queue a job or run a
script. Dispatchers, workers and the operator commands (`status`, `replay`, `score`) connect as
the back-end user: the data, stream, scripting and pub/sub commands RQ and this project use, on
the project's keys (`<prefix>:*`, and the stream) and RQ's (`rq:*`, channels `rq:*`) only, and
no administrative or dangerous command (`CONFIG`, `FLUSHALL`, `KEYS`, `DEBUG`, `MODULE`, `ACL`,
...) but `INFO`, which RQ reads (and `TIME`, which `doctor` reads).

Passwords are given as their SHA-256 (`#<hex>`), so the printed rules can go into an ACL file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

from codex_langfuse.ingest.settings import Settings

RUNNER_COMMANDS = ("+xadd", "+ping")
BACKEND_COMMANDS = (
    "+@read", "+@write", "+@keyspace", "+@string", "+@hash", "+@list", "+@set", "+@sortedset", "+@stream",
    "+@transaction", "+@pubsub", "+@connection",
    "-@dangerous", "-@admin",
    # Lua (leases; RQ): what a script runs is checked against these same rules
    "+eval", "+evalsha", "+script|load", "+script|exists",
    "+info",  # RQ reads the server version
    "+time",  # `doctor` compares clocks
)
RQ_PREFIX = "rq:"


@dataclass(frozen=True)
class User:
    name: str
    rules: tuple[str, ...]

    def setuser(self) -> list[str]:
        """The arguments of `ACL SETUSER`."""
        return [self.name, *self.rules]

    def command(self) -> str:
        return " ".join(["ACL", "SETUSER", *self.setuser()])

    def acl_file_line(self) -> str:
        return " ".join(["user", *self.setuser()])


def password_hash(password: str) -> str:
    return "#" + hashlib.sha256(password.encode()).hexdigest()


def runner(settings: Settings, name: str, password: str) -> User:
    return User(name, ("reset", "on", password_hash(password), "resetkeys", f"~{settings.stream}",
                       "resetchannels", "-@all", *RUNNER_COMMANDS))


def backend(settings: Settings, name: str, password: str) -> User:
    keys = [f"~{settings.key_prefix}:*", f"~{RQ_PREFIX}*"]
    if not settings.stream.startswith(f"{settings.key_prefix}:"):
        keys.append(f"~{settings.stream}")
    return User(name, ("reset", "on", password_hash(password), "resetkeys", *keys,
                       "resetchannels", f"&{RQ_PREFIX}*", "-@all", *BACKEND_COMMANDS))


def where(redis_url: str) -> str:
    """host:port/db of a Redis URL, without its credentials."""
    parts = urlsplit(redis_url)
    return f"{parts.hostname}:{parts.port or 6379}{parts.path or '/0'}"


def url_for(redis_url: str, user: str, password: str) -> str:
    """`redis_url` (where Redis is) with `user` and `password` in it."""
    parts = urlsplit(redis_url)
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path or "/0", parts.query, ""))
