"""The producer's settings, read from the environment in one place.

Inside a runner (the Python API) a bad value never stops the runner: it is logged and the default
is used instead. The commands (`run`, `tee`, `spool`) read them with strict=True and refuse to
start with a one-line error naming the variable, so a mistake shows at once, not as lost data.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from codex_langfuse.producer.destination import redact_url, redis_url_problem
from codex_langfuse.producer.entries import DEFAULT_STREAM

logger = logging.getLogger("codex_langfuse.producer")

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
MIB = 1024 * 1024

ENV_REDIS_URL = "REDIS_URL"
ENV_STREAM = "CODEX_LANGFUSE_STREAM"
ENV_SPOOL_DIR = "CODEX_LANGFUSE_SPOOL_DIR"
ENV_QUEUE_MAX_BYTES = "CODEX_LANGFUSE_QUEUE_MAX_BYTES"
ENV_SPOOL_MAX_BYTES = "CODEX_LANGFUSE_SPOOL_MAX_BYTES"
ENV_MAX_LINE_BYTES = "CODEX_LANGFUSE_MAX_LINE_BYTES"
ENV_REDIS_TIMEOUT = "CODEX_LANGFUSE_PRODUCER_REDIS_TIMEOUT"
ENV_HEARTBEAT_SECONDS = "CODEX_LANGFUSE_HEARTBEAT_SECONDS"


def default_spool_dir(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    state_home = environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state_home) / "codex-langfuse" / "spool"


@dataclass(frozen=True)
class ProducerSettings:
    redis_url: str = DEFAULT_REDIS_URL
    stream: str = DEFAULT_STREAM
    spool_dir: Path | None = None  # None: default_spool_dir()
    queue_max_bytes: int = 64 * MIB
    spool_max_bytes: int = 512 * MIB
    max_line_bytes: int = 1 * MIB
    # socket connect and read timeout of the sender's Redis client; the runner never waits on it
    redis_timeout: float = 1.0
    # an open run that printed nothing for this long gets an empty `meta` entry, so the ingest
    # side can tell a silent Codex (a long command) from a dead producer (idle timeout)
    heartbeat_seconds: float = 60.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, strict: bool = False, **overrides) -> "ProducerSettings":
        """Settings from `environ` (default os.environ); keyword arguments that are not None win.
        `strict`: a bad value raises SettingError instead of falling back to the default."""
        environ = os.environ if environ is None else environ
        defaults = cls()
        values = {
            "redis_url": environ.get(ENV_REDIS_URL) or defaults.redis_url,
            "stream": environ.get(ENV_STREAM) or defaults.stream,
            "spool_dir": Path(environ[ENV_SPOOL_DIR]) if environ.get(ENV_SPOOL_DIR) else default_spool_dir(environ),
            "queue_max_bytes": _positive(environ, ENV_QUEUE_MAX_BYTES, int, defaults.queue_max_bytes, strict),
            "spool_max_bytes": _positive(environ, ENV_SPOOL_MAX_BYTES, int, defaults.spool_max_bytes, strict),
            "max_line_bytes": _positive(environ, ENV_MAX_LINE_BYTES, int, defaults.max_line_bytes, strict),
            "redis_timeout": _positive(environ, ENV_REDIS_TIMEOUT, float, defaults.redis_timeout, strict),
            "heartbeat_seconds": _positive(environ, ENV_HEARTBEAT_SECONDS, float, defaults.heartbeat_seconds, strict),
        }
        problem = redis_url_problem(values["redis_url"]) if overrides.get("redis_url") is None else None
        if problem is not None:
            if strict:
                raise SettingError(f"{ENV_REDIS_URL}={redact_url(values['redis_url'])!r} {problem}")
            logger.warning("%s=%r %s: entries will wait in the spool", ENV_REDIS_URL, redact_url(values["redis_url"]), problem)
        for key, value in overrides.items():
            if key not in values:
                raise TypeError(f"unknown producer setting {key!r}")
            if value is not None:
                values[key] = Path(value) if key == "spool_dir" else value
        return cls(**values)


class SettingError(ValueError):
    """A setting that cannot be used; its message names the variable and says what it expects."""


def _positive(environ: Mapping[str, str], name: str, kind, default, strict: bool = False):
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = kind(raw.strip())
    except ValueError:
        value = None
    if value is None or not value > 0 or value == float("inf"):
        what = "a positive whole number of bytes" if kind is int else "a positive number of seconds"
        if strict:
            raise SettingError(f"{name}={raw!r} is not {what} (default {default})")
        logger.warning("ignoring %s=%r (not %s); using %s", name, raw, what, default)
        return default
    return value
