"""Configuration of the ingest side, read from the environment.

Langfuse's own variable names are honoured (`LANGFUSE_PUBLIC_KEY`, `LANGFUSE_SECRET_KEY`,
`LANGFUSE_BASE_URL` or `LANGFUSE_HOST`, `LANGFUSE_TRACING_ENVIRONMENT`, `LANGFUSE_RELEASE`,
`LANGFUSE_TIMEOUT`, `LANGFUSE_TRACING_ENABLED`) and `REDIS_URL`; everything else is
`CODEX_LANGFUSE_<FIELD>` (e.g. `CODEX_LANGFUSE_RETRY_FOR=6h`). Where both name one setting, this
project's own variable wins. Durations take a unit (`90`, `90s`, `15m`, `6h`, `7d`; seconds
without one). A wrong value is refused at start with one line naming the variable
(`SettingsError`), never found run by run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, BeforeValidator, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from codex_langfuse.producer.entries import DEFAULT_STREAM, normalize_environment

log = logging.getLogger("codex_langfuse")
_WARNED: set[str] = set()

ENV_PREFIX = "CODEX_LANGFUSE_"
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|[smhd]?)\s*")
_UNITS = {"ms": 0.001, "": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION_EXAMPLES = "e.g. 90, 90s, 15m, 6h, 7d"


def parse_duration(text: Any) -> float:
    """Seconds in `text` (`90`, `90s`, `15m`, `6h`, `7d`, `500ms`); ValueError otherwise."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    match = _DURATION.fullmatch(str(text))
    if not match:
        raise ValueError(f"not a duration ({DURATION_EXAMPLES})")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _whole_seconds(text: Any) -> int:
    seconds = parse_duration(text)
    if seconds != int(seconds):
        raise ValueError(f"must be whole seconds ({DURATION_EXAMPLES})")
    return int(seconds)


Seconds = Annotated[float, BeforeValidator(parse_duration)]
WholeSeconds = Annotated[int, BeforeValidator(_whole_seconds)]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class SettingsError(Exception):
    """Settings that cannot work; one line per problem, each naming its variable."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


class NoDestination(SettingsError):
    """Neither Langfuse keys nor a chosen local sink: nothing would reach Langfuse."""


def _state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "codex-langfuse"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    # Where things are
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", validation_alias=AliasChoices("REDIS_URL", "CODEX_LANGFUSE_REDIS_URL")
    )
    stream: str = DEFAULT_STREAM
    key_prefix: str = "codex-langfuse"
    queue: str = "codex-langfuse"

    # Langfuse. Without both keys a worker refuses to start unless the local sink was chosen
    # (`sink_dir`, or `--sink`): a missing secret must not send a fleet's traces to a local disk.
    langfuse_public_key: str | None = Field(None, validation_alias=AliasChoices("LANGFUSE_PUBLIC_KEY"))
    langfuse_secret_key: str | None = Field(None, validation_alias=AliasChoices("LANGFUSE_SECRET_KEY"))
    langfuse_base_url: str = Field(
        "https://cloud.langfuse.com", validation_alias=AliasChoices("LANGFUSE_BASE_URL", "LANGFUSE_HOST")
    )
    # Langfuse's switch: false means nothing is to be sent, so workers and replay refuse to run
    # (entries wait in Redis) instead of consuming and dropping them.
    tracing_enabled: bool = Field(True, validation_alias=AliasChoices("LANGFUSE_TRACING_ENABLED"))
    sink_dir: Path | None = None
    http_timeout: Seconds = Field(
        20.0, validation_alias=AliasChoices(f"{ENV_PREFIX}HTTP_TIMEOUT", "LANGFUSE_TIMEOUT")
    )

    # Delivery: transient failures are retried for `retry_for` seconds in total
    retry_for: Seconds = 6 * 3600.0
    retry_base: Seconds = 2.0
    retry_cap: Seconds = 300.0
    batch_max_spans: int = 200
    batch_max_bytes: int = 3_000_000
    ledger_ttl: WholeSeconds = 30 * 86400
    # A span whose send ended in doubt and that Langfuse's observations listing has not confirmed
    # (a lagging v1 listing, or none that answers) is sent again after this long.
    in_doubt_wait: Seconds = 600.0

    # Folding
    lease_seconds: WholeSeconds = 60
    idle_timeout: Seconds = 900.0
    gap_timeout: Seconds = 120.0
    fold_batch: int = 5000
    done_ttl: WholeSeconds = 7 * 86400
    # Caps per run: invalid, unknown or conflicting entries shown one by one (the rest counted and
    # sampled in one summary event), and observations sent (the rest summarised likewise)
    max_problem_events: int = Field(100, ge=0)
    max_observations: int = Field(10_000, ge=0)
    trace_name: str = "codex exec"
    environment: str | None = Field(
        None, validation_alias=AliasChoices(f"{ENV_PREFIX}ENVIRONMENT", "LANGFUSE_TRACING_ENVIRONMENT")
    )
    release: str | None = Field(None, validation_alias=AliasChoices(f"{ENV_PREFIX}RELEASE", "LANGFUSE_RELEASE"))
    prices_file: Path | None = None

    # Content leaving the worker
    capture_content: bool = True
    max_field_chars: int = 32_000
    max_output_chars: int = 8_000
    redact: bool = True
    redact_patterns: list[str] = []

    # Dispatcher
    read_count: int = 500
    block_ms: int = 1000
    claim_min_idle_ms: int = 60_000
    max_deliveries: int = 5
    sweep_interval: Seconds = 15.0

    # RQ worker: a dead worker's job is requeued after heartbeat TTL + maintenance pass
    worker_ttl: WholeSeconds = 35
    job_monitoring_interval: WholeSeconds = 10
    maintenance_interval: WholeSeconds = 10
    job_timeout: WholeSeconds = 600
    # simple: jobs run in the worker process, which keeps its Redis and HTTP connections (a fork per
    # job costs ~40 ms and a new TLS handshake with Langfuse); forking isolates each job
    worker_class: Literal["forking", "simple"] = "simple"

    @field_validator("environment")
    @classmethod
    def _environment_as_langfuse_stores_it(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        normalized = normalize_environment(value)  # ValueError: Langfuse would store 'default'
        if normalized != value and value not in _WARNED:
            _WARNED.add(value)  # once per process: settings are read again and again
            log.warning("codex-langfuse: CODEX_LANGFUSE_ENVIRONMENT %r is used as %r, as Langfuse stores it",
                        value, normalized)
        return normalized

    # Logs (stderr): `json` gives one object per line, with the run id on every line about a run
    log_level: LogLevel = "INFO"
    log_format: Literal["text", "json"] = "text"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("langfuse_base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http:// or https:// URL, e.g. https://cloud.langfuse.com")
        return value.strip()

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if urlsplit(value.strip()).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL, e.g. redis://127.0.0.1:6379/0")
        return value.strip()

    @model_validator(mode="after")
    def _lease_outlives_a_request(self) -> "Settings":
        # A worker renews its run's lease between requests to Langfuse: one request (and the
        # fold step before it) must fit in the lease twice over, or another worker could take
        # the run over mid-request and send the same spans.
        if self.http_timeout * 2 > self.lease_seconds:
            raise ValueError(f"CODEX_LANGFUSE_HTTP_TIMEOUT ({self.http_timeout}) must be at most half of "
                             f"CODEX_LANGFUSE_LEASE_SECONDS ({self.lease_seconds})")
        return self

    @property
    def langfuse_enabled(self) -> bool:
        return bool(self.langfuse_public_key and self.langfuse_secret_key)

    @property
    def destination(self) -> str:
        """`langfuse` or `sink`: where a worker sends (Langfuse keys win over a sink directory, which
        `show` also reads). Raises `NoDestination` naming what is missing."""
        if not self.tracing_enabled:
            raise SettingsError(["LANGFUSE_TRACING_ENABLED is false: nothing would be sent, so nothing is "
                                 "taken off the queue (unset it, or set it to true)"])
        if self.langfuse_enabled:
            return "langfuse"
        if self.sink_dir is not None:
            return "sink"
        missing = [name for name, value in (("LANGFUSE_PUBLIC_KEY", self.langfuse_public_key),
                                            ("LANGFUSE_SECRET_KEY", self.langfuse_secret_key)) if not value]
        raise NoDestination([f"no destination: {' and '.join(missing)} not set; set "
                             f"{'them' if len(missing) > 1 else 'it'} to send to Langfuse, or choose the local "
                             f"sink with {ENV_PREFIX}SINK_DIR=DIR (or --sink DIR)"])

    def destination_id(self) -> str:
        """Names the destination in Redis (the ledger is kept per destination): what the local sink
        accepted is not what Langfuse has, and one Langfuse project is not another."""
        if self.destination == "langfuse":
            seed = f"langfuse|{self.langfuse_base_url.rstrip('/')}|{self.langfuse_public_key}"
        else:
            seed = f"sink|{Path(self.sink_dir or '').expanduser().resolve()}"
        return hashlib.sha256(seed.encode()).hexdigest()[:12]

    def shown_sink_dir(self) -> Path:
        """Where `show` and `demo` read the local sink: the chosen one, or the default place."""
        return self.sink_dir if self.sink_dir is not None else default_sink_dir()


def default_sink_dir() -> Path:
    return _state_dir() / "sink"


def load_settings(**overrides: Any) -> Settings:
    """The settings from the environment, or `SettingsError` with one line per problem."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError([_problem(error) for error in exc.errors()]) from None


def _problem(error: Any) -> str:
    field = str(error["loc"][0]) if error.get("loc") else ""
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if not field:  # a rule across fields: its message names the variables
        return message
    name = _variable(field)
    value = os.environ.get(name, error.get("input"))
    shown = f"={value!r}" if isinstance(value, (str, int, float)) and not _secret(name) else ""
    if error.get("type") == "literal_error":
        message = f"must be one of {message.removeprefix('Input should be ').replace(chr(39), '')}"
    return f"{name}{shown}: {message}"


def _variable(field: str) -> str:
    """The environment variable a field (or one of its aliases, as pydantic reports it) was read from."""
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        names = [c for c in alias.choices if isinstance(c, str)] if isinstance(alias, AliasChoices) else []
        if field != name and field not in names:
            continue
        for candidate in names:
            if candidate in os.environ:
                return candidate
        return names[0] if names else f"{ENV_PREFIX}{name.upper()}"
    return field


def _secret(name: str) -> bool:
    return "SECRET" in name or "KEY" in name


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
