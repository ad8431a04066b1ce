from __future__ import annotations

from pathlib import Path

from codex_langfuse.producer.config import ProducerSettings, default_spool_dir


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
