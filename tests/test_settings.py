"""Settings of the back end: every mistake is refused at start with one line naming its variable;
durations take units; Langfuse's own variables are honoured, this project's win; a destination is
never chosen silently."""

from __future__ import annotations

import pytest

from codex_langfuse.ingest.settings import NoDestination, SettingsError, load_settings


@pytest.fixture
def env(monkeypatch):
    for name in list(__import__("os").environ):
        if name.startswith(("CODEX_LANGFUSE_", "LANGFUSE_")) or name == "REDIS_URL":
            monkeypatch.delenv(name)
    return monkeypatch


def refused(env, **variables) -> list[str]:
    for name, value in variables.items():
        env.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    return caught.value.problems


@pytest.mark.parametrize("text, seconds", [("6h", 21600), ("21600", 21600), ("90s", 90), ("15m", 900), ("7d", 604800),
                                           ("2.5", 2.5), ("500ms", 0.5)])
def test_durations_take_units(env, text, seconds):
    env.setenv("CODEX_LANGFUSE_RETRY_FOR", text)
    assert load_settings().retry_for == seconds


def test_a_duration_that_is_not_one_is_refused_in_one_line_naming_the_variable(env):
    assert refused(env, CODEX_LANGFUSE_RETRY_FOR="6 hours") == [
        "CODEX_LANGFUSE_RETRY_FOR='6 hours': not a duration (e.g. 90, 90s, 15m, 6h, 7d)"]
    assert refused(env, CODEX_LANGFUSE_RETRY_FOR="6h", CODEX_LANGFUSE_LEASE_SECONDS="1.5") == [
        "CODEX_LANGFUSE_LEASE_SECONDS='1.5': must be whole seconds (e.g. 90, 90s, 15m, 6h, 7d)"]


def test_log_level_and_format_are_checked(env):
    assert refused(env, CODEX_LANGFUSE_LOG_LEVEL="verbose") == [
        "CODEX_LANGFUSE_LOG_LEVEL='verbose': must be one of DEBUG, INFO, WARNING, ERROR or CRITICAL"]
    env.setenv("CODEX_LANGFUSE_LOG_LEVEL", "debug")
    assert load_settings().log_level == "DEBUG"
    assert refused(env, CODEX_LANGFUSE_LOG_FORMAT="yaml") == ["CODEX_LANGFUSE_LOG_FORMAT='yaml': must be one of text or json"]


@pytest.mark.parametrize("variable", ["LANGFUSE_BASE_URL", "LANGFUSE_HOST"])
def test_a_langfuse_url_without_scheme_is_refused_not_retried(env, variable):
    assert refused(env, **{variable: "cloud.langfuse.com"}) == [
        f"{variable}='cloud.langfuse.com': must be an http:// or https:// URL, e.g. https://cloud.langfuse.com"]


def test_secrets_are_never_echoed(env):
    env.setenv("LANGFUSE_SECRET_KEY", "sk-lf-secret")
    [problem] = refused(env, CODEX_LANGFUSE_BATCH_MAX_SPANS="many")
    assert problem.startswith("CODEX_LANGFUSE_BATCH_MAX_SPANS='many'") and "sk-lf-secret" not in problem


def test_langfuse_variables_are_honoured_and_ours_win(env):
    env.setenv("LANGFUSE_TIMEOUT", "5")
    env.setenv("LANGFUSE_TRACING_ENVIRONMENT", "staging")
    env.setenv("LANGFUSE_RELEASE", "v1.2")
    settings = load_settings()
    assert (settings.http_timeout, settings.environment, settings.release) == (5.0, "staging", "v1.2")
    env.setenv("CODEX_LANGFUSE_HTTP_TIMEOUT", "7")
    env.setenv("CODEX_LANGFUSE_ENVIRONMENT", "production")
    env.setenv("CODEX_LANGFUSE_RELEASE", "v2")
    settings = load_settings()
    assert (settings.http_timeout, settings.environment, settings.release) == (7.0, "production", "v2")


def test_without_keys_and_without_a_chosen_sink_there_is_no_destination(env):
    with pytest.raises(NoDestination) as caught:
        load_settings().destination
    [problem] = caught.value.problems
    assert "LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY not set" in problem and "CODEX_LANGFUSE_SINK_DIR" in problem
    env.setenv("LANGFUSE_PUBLIC_KEY", "pk-lf-1")
    with pytest.raises(NoDestination, match="LANGFUSE_SECRET_KEY not set; set it"):
        load_settings().destination
    env.setenv("CODEX_LANGFUSE_SINK_DIR", "/tmp/sink")
    assert load_settings().destination == "sink"
    env.setenv("LANGFUSE_SECRET_KEY", "sk-lf-1")
    assert load_settings().destination == "langfuse"  # keys win over a sink directory


def test_tracing_disabled_means_no_destination_at_all(env):
    env.setenv("LANGFUSE_PUBLIC_KEY", "pk-lf-1")
    env.setenv("LANGFUSE_SECRET_KEY", "sk-lf-1")
    env.setenv("LANGFUSE_TRACING_ENABLED", "false")
    with pytest.raises(SettingsError, match="LANGFUSE_TRACING_ENABLED is false"):
        load_settings().destination


def test_the_ledger_is_kept_per_destination(env):
    env.setenv("CODEX_LANGFUSE_SINK_DIR", "/tmp/sink")
    sink = load_settings().destination_id()
    env.setenv("LANGFUSE_PUBLIC_KEY", "pk-lf-1")
    env.setenv("LANGFUSE_SECRET_KEY", "sk-lf-1")
    project_1 = load_settings().destination_id()
    env.setenv("LANGFUSE_PUBLIC_KEY", "pk-lf-2")
    project_2 = load_settings().destination_id()
    env.setenv("LANGFUSE_BASE_URL", "https://eu.example.com")
    elsewhere = load_settings().destination_id()
    assert len({sink, project_1, project_2, elsewhere}) == 4
