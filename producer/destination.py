"""Where a producer's entries go: a Redis URL and a stream.

Spool records carry `destination_id(url, stream)` so that a spool is only ever delivered to the
Redis and stream it was written for. The id is a hash of the URL without its password
(scheme, user, host, port, database; or the socket path and database of a unix:// URL) and of the
stream: rotating a password keeps the destination, pointing at another server or database
changes it. URLs are shown with `redact_url`, never with their password.
"""

from __future__ import annotations

import hashlib
from urllib.parse import parse_qs, urlsplit, urlunsplit

REDIS_SCHEMES = ("redis", "rediss", "unix")
DEFAULT_PORT = 6379


def redis_url_problem(url: str) -> str | None:
    """Why redis-py cannot use `url`, or None when it can."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError as exc:
        return f"is not a URL ({exc})"
    if parts.scheme.lower() not in REDIS_SCHEMES:
        return "needs a scheme: redis://HOST:PORT/DB, rediss:// (TLS) or unix:///path/to/socket"
    if parts.scheme.lower() == "unix" and not parts.path:
        return "names no socket path (unix:///path/to/redis.sock)"
    if parts.scheme.lower() != "unix" and not parts.hostname:
        return "names no host (redis://HOST:PORT/DB)"
    return None


def destination_id(redis_url: str, stream: str) -> str:
    """16 hex characters naming (Redis server and database, stream), password left out."""
    try:
        parts = urlsplit(redis_url)
        scheme = parts.scheme.lower()
        query = parse_qs(parts.query)
        if scheme == "unix":
            where, database = parts.path, query.get("db", ["0"])[0]
        else:
            where = f"{(parts.hostname or '').lower()}:{parts.port or DEFAULT_PORT}"
            database = parts.path.strip("/") or query.get("db", ["0"])[0]
        canonical = f"{scheme}://{parts.username or ''}@{where}/{database}"
    except ValueError:
        canonical = redact_url(redis_url)
    return hashlib.sha256(f"{canonical}\n{stream}".encode("utf-8", "surrogateescape")).hexdigest()[:16]


def redact_url(url: str) -> str:
    """`url` with its password replaced by ***."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        user = f"{parts.username}:***@" if parts.username else ":***@"
        return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))
    except ValueError:
        return "<redis url>"
