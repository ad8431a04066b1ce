"""`codex-langfuse doctor`: check what the back end depends on and say what to fix.

Redis (reachable, version, persistence, eviction, the user it connects as), the destination
(Langfuse keys and address, server version; or the local sink), this machine's spool, and the
clock against Redis's. Each finding is one line; a problem comes with its fix. Checks that need a
permission the connection lacks (CONFIG on a managed Redis) say so instead of failing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis

from codex_langfuse.ingest import connections
from codex_langfuse.ingest.settings import Settings, SettingsError
from codex_langfuse.ingest.transport import DeliveryError, make_transport

MIN_REDIS = (6, 2)  # XAUTOCLAIM, XPENDING IDLE, SET GET
MAX_CLOCK_SKEW = 2.0  # seconds: timestamps, leases and idle timeouts compare clocks across hosts


@dataclass
class Finding:
    area: str
    message: str
    fix: str | None = None  # set: a problem

    @property
    def problem(self) -> bool:
        return self.fix is not None


def diagnose(settings: Settings) -> list[Finding]:
    findings = check_redis(settings)
    findings += check_destination(settings)
    findings += check_spool()
    return findings


def check_redis(settings: Settings) -> list[Finding]:
    url = connections.safe_url(settings.redis_url)
    client = connections.redis_client(settings)
    try:
        sent = time.time()
        info = client.info("server")
        seconds, micros = client.time()
        received = time.time()
    except redis.RedisError as exc:
        return [Finding("redis", f"cannot reach Redis at {url}: {exc}",
                        "start Redis or fix REDIS_URL (redis://[user:password@]host:port/db)")]
    findings = []
    version = str(info.get("redis_version", "0"))
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if parts < MIN_REDIS:
        findings.append(Finding("redis", f"Redis {version} at {url}", f"use Redis >= {'.'.join(map(str, MIN_REDIS))}"))
    else:
        findings.append(Finding("redis", f"Redis {version} at {url}"))
    findings += _redis_config(client)
    findings += _redis_user(client, settings)
    skew = (seconds + micros / 1e6) - (sent + received) / 2
    if abs(skew) > MAX_CLOCK_SKEW + (received - sent) / 2:
        findings.append(Finding("clock", f"this machine's clock is {skew:+.1f} s off Redis's",
                                "synchronise clocks (NTP, chrony) on every host of the pipeline"))
    else:
        findings.append(Finding("clock", f"within {abs(skew):.2f} s of Redis's"))
    return findings


def _redis_config(client: redis.Redis) -> list[Finding]:
    try:
        config: dict[str, Any] = client.config_get("appendonly")
        config.update(client.config_get("appendfsync"))
        config.update(client.config_get("maxmemory-policy"))
    except redis.ResponseError as exc:
        return [Finding("redis", f"cannot read its configuration ({str(exc).splitlines()[0]}); check by hand: "
                                 "appendonly yes, maxmemory-policy noeviction")]
    findings = []
    if config.get("appendonly") != "yes":
        findings.append(Finding("redis", "persistence: appendonly no (a crash loses what arrived since the last "
                                         "snapshot)", "CONFIG SET appendonly yes (and in redis.conf)"))
    else:
        findings.append(Finding("redis", f"persistence: appendonly yes, appendfsync {config.get('appendfsync')}"))
    policy = config.get("maxmemory-policy")
    if policy != "noeviction":
        findings.append(Finding("redis", f"eviction: maxmemory-policy {policy} (Redis may delete queued data)",
                                "CONFIG SET maxmemory-policy noeviction (and in redis.conf)"))
    else:
        findings.append(Finding("redis", "eviction: noeviction"))
    return findings


def _redis_user(client: redis.Redis, settings: Settings) -> list[Finding]:
    try:
        user = client.acl_whoami()
        rules = client.acl_getuser(user) or {}
    except redis.ResponseError as exc:
        return [Finding("redis", f"cannot read its ACLs ({str(exc).splitlines()[0]})")]
    user = user.decode() if isinstance(user, bytes) else user
    flags = [f.decode() if isinstance(f, bytes) else f for f in rules.get("flags", [])]
    if "nopass" in flags:
        return [Finding("acl", f"connected as {user!r}, which needs no password: anyone who reaches Redis can "
                               "write jobs for the workers",
                        "require a password, and give runners a user that may only XADD to the stream "
                        f"{settings.stream!r} (codex-langfuse acl prints the users)")]
    return [Finding("acl", f"connected as {user!r}")]


def check_destination(settings: Settings) -> list[Finding]:
    try:
        destination = settings.destination
    except SettingsError as exc:
        return [Finding("destination", "; ".join(exc.problems),
                        "set LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY (or choose CODEX_LANGFUSE_SINK_DIR)")]
    transport = make_transport(settings)
    try:
        answer = transport.check()
    except DeliveryError as error:
        fix = ("check LANGFUSE_BASE_URL and the network" if error.transient
               else "check LANGFUSE_PUBLIC_KEY, LANGFUSE_SECRET_KEY and LANGFUSE_BASE_URL")
        return [Finding(destination, f"{transport.describe()}: {error.message}", fix)]
    return [Finding(destination, f"{transport.describe()}: {answer}")]


def check_spool() -> list[Finding]:
    from codex_langfuse.producer.config import ProducerSettings
    from codex_langfuse.producer.spool import SPOOL_SUFFIX

    directory = ProducerSettings.from_env().spool_dir
    if directory is None or not directory.is_dir():
        return [Finding("spool", f"{directory}: none on this machine")]
    files = list(directory.glob(f"*{SPOOL_SUFFIX}"))
    size = sum(f.stat().st_size for f in files if f.exists())
    if not files:
        return [Finding("spool", f"{directory}: empty")]
    oldest = min(f.stat().st_mtime for f in files if f.exists())
    return [Finding("spool", f"{directory}: {len(files)} files, {size} bytes, oldest written "
                             f"{time.time() - oldest:.0f} s ago",
                    "entries wait there for Redis: the next producer on this machine sends them "
                    "(`codex-langfuse spool`, where installed, lists and sends them now)")]


def render(findings: list[Finding]) -> str:
    lines = []
    for finding in findings:
        mark = "PROBLEM" if finding.problem else "ok     "
        lines.append(f"{mark} {finding.area:<12} {finding.message}")
        if finding.fix:
            lines.append(f"        {'':<12} fix: {finding.fix}")
    problems = sum(f.problem for f in findings)
    lines.append(f"{problems} problem{'s' if problems != 1 else ''} found" if problems else "no problem found")
    return "\n".join(lines)
