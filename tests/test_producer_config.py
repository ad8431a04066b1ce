from __future__ import annotations

from pathlib import Path

import pytest

from codex_langfuse.producer.config import ProducerSettings, SettingError, default_spool_dir
from codex_langfuse.producer.destination import destination_id


def test_defaults_without_environment(monkeypatch):
    monkeypatch.setenv("HOME", "/home/someone")
    settings = ProducerSettings.from_env({})
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.stream == "codex-langfuse:events"
    assert settings.spool_dir == Path("/home/someone/.local/state/codex-langfuse/spool")
    assert (settings.queue_max_bytes, settings.spool_max_bytes, settings.max_line_bytes) == (64 << 20, 512 << 20, 1 << 20)
    assert settings.redis_timeout <= 1.0


def test_environment_and_keyword_overrides():
    environ = {
        "REDIS_URL": "redis://redis.internal:6380/2",
        "CODEX_LANGFUSE_STREAM": "other:events",
        "XDG_STATE_HOME": "/state",
        "CODEX_LANGFUSE_QUEUE_MAX_BYTES": "1000",
        "CODEX_LANGFUSE_SPOOL_MAX_BYTES": "2000",
        "CODEX_LANGFUSE_MAX_LINE_BYTES": "300",
        "CODEX_LANGFUSE_PRODUCER_REDIS_TIMEOUT": "0.25",
    }
    settings = ProducerSettings.from_env(environ)
    assert settings == ProducerSettings(
        redis_url="redis://redis.internal:6380/2", stream="other:events", spool_dir=Path("/state/codex-langfuse/spool"),
        queue_max_bytes=1000, spool_max_bytes=2000, max_line_bytes=300, redis_timeout=0.25,
    )
    assert ProducerSettings.from_env({**environ, "CODEX_LANGFUSE_SPOOL_DIR": "/var/spool/cl"}).spool_dir == Path("/var/spool/cl")
    assert ProducerSettings.from_env(environ, stream="kw", max_line_bytes=None).stream == "kw"
    assert default_spool_dir({"XDG_STATE_HOME": "/s"}) == Path("/s/codex-langfuse/spool")


def test_bad_values_fall_back_to_defaults(caplog):
    settings = ProducerSettings.from_env({"CODEX_LANGFUSE_QUEUE_MAX_BYTES": "lots", "CODEX_LANGFUSE_MAX_LINE_BYTES": "-5"})
    assert settings.queue_max_bytes == 64 << 20 and settings.max_line_bytes == 1 << 20
    assert "CODEX_LANGFUSE_QUEUE_MAX_BYTES" in caplog.text


@pytest.mark.parametrize("name,value,expected", [
    ("CODEX_LANGFUSE_QUEUE_MAX_BYTES", "64MB", "CODEX_LANGFUSE_QUEUE_MAX_BYTES='64MB' is not a positive whole number of bytes"),
    ("CODEX_LANGFUSE_SPOOL_MAX_BYTES", "0", "CODEX_LANGFUSE_SPOOL_MAX_BYTES='0' is not a positive whole number of bytes"),
    ("CODEX_LANGFUSE_PRODUCER_REDIS_TIMEOUT", "inf", "CODEX_LANGFUSE_PRODUCER_REDIS_TIMEOUT='inf' is not a positive number of seconds"),
    ("CODEX_LANGFUSE_HEARTBEAT_SECONDS", "nan", "CODEX_LANGFUSE_HEARTBEAT_SECONDS='nan' is not a positive number of seconds"),
    ("REDIS_URL", "localhost:6379", "REDIS_URL='localhost:6379' needs a scheme"),
    ("REDIS_URL", "redis://:secret@:6379/0", "REDIS_URL='redis://:***@:6379/0' names no host"),
    ("REDIS_URL", "redis://host:port/0", "REDIS_URL='redis://host:port/0' is not a URL"),
])
def test_strict_settings_name_the_variable_and_what_it_expects(name, value, expected):
    """`run`, `tee` and `spool` refuse to start on these; the Python API falls back instead."""
    with pytest.raises(SettingError) as refused:
        ProducerSettings.from_env({name: value}, strict=True)
    assert str(refused.value).startswith(expected) and "secret" not in str(refused.value)
    ProducerSettings.from_env({name: value})  # lenient: logged, default used


def test_the_destination_ignores_the_password_and_spelling_but_not_the_server_or_stream():
    same = destination_id("redis://:old@Redis.internal:6379/0", "codex-langfuse:events")
    assert destination_id("redis://:rotated@redis.internal/0", "codex-langfuse:events") == same
    assert destination_id("redis://redis.internal:6379", "codex-langfuse:events") == same  # db 0, port 6379
    assert destination_id("redis://redis.internal:6379/1", "codex-langfuse:events") != same
    assert destination_id("redis://other:6379/0", "codex-langfuse:events") != same
    assert destination_id("redis://redis.internal:6379/0", "other:events") != same
    assert destination_id("redis://alice:pw@redis.internal:6379/0", "codex-langfuse:events") != same  # another user
    assert len(same) == 16 and int(same, 16) >= 0
    assert destination_id("unix:///run/redis.sock?db=2", "s") != destination_id("unix:///run/redis.sock", "s")
