"""Configuration of the ingest side, read from the environment.

Langfuse's own variable names are honoured (`LANGFUSE_PUBLIC_KEY`, `LANGFUSE_SECRET_KEY`,
`LANGFUSE_BASE_URL` or `LANGFUSE_HOST`) and `REDIS_URL`; everything else is
`CODEX_LANGFUSE_<FIELD>` (e.g. `CODEX_LANGFUSE_RETRY_FOR=7200`).
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from codex_langfuse.producer.entries import DEFAULT_STREAM, normalize_environment

log = logging.getLogger("codex_langfuse")
_WARNED: set[str] = set()


def _state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "codex-langfuse"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CODEX_LANGFUSE_", extra="ignore")

    # Where things are
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", validation_alias=AliasChoices("REDIS_URL", "CODEX_LANGFUSE_REDIS_URL")
    )
    stream: str = DEFAULT_STREAM
    key_prefix: str = "codex-langfuse"
    queue: str = "codex-langfuse"

    # Langfuse; without both keys the worker writes to `sink_dir` instead
    langfuse_public_key: str | None = Field(None, validation_alias=AliasChoices("LANGFUSE_PUBLIC_KEY"))
    langfuse_secret_key: str | None = Field(None, validation_alias=AliasChoices("LANGFUSE_SECRET_KEY"))
    langfuse_base_url: str = Field(
        "https://cloud.langfuse.com", validation_alias=AliasChoices("LANGFUSE_BASE_URL", "LANGFUSE_HOST")
    )
    sink_dir: Path = Field(default_factory=lambda: _state_dir() / "sink")
    http_timeout: float = 20.0

    # Delivery: transient failures are retried for `retry_for` seconds in total
    retry_for: float = 6 * 3600.0
    retry_base: float = 2.0
    retry_cap: float = 300.0
    batch_max_spans: int = 200
    batch_max_bytes: int = 3_000_000
    ledger_ttl: int = 30 * 86400
    # A span whose send ended in doubt and that Langfuse's observations listing has not confirmed
    # (a lagging v1 listing, or none that answers) is sent again after this long.
    in_doubt_wait: float = 600.0

    # Folding
    lease_seconds: int = 60
    idle_timeout: float = 900.0
    gap_timeout: float = 120.0
    fold_batch: int = 5000
    done_ttl: int = 7 * 86400
    trace_name: str = "codex exec"
    environment: str | None = None
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
    sweep_interval: float = 15.0

    # RQ worker: a dead worker's job is requeued after heartbeat TTL + maintenance pass
    worker_ttl: int = 35
    job_monitoring_interval: int = 10
    maintenance_interval: int = 10
    job_timeout: int = 600
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


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
