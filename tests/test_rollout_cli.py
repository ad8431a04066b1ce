"""The `import` command's own parts: dates and ages, the progress bar, a dry run needing no Redis."""

from __future__ import annotations

import datetime
import io
import json
import shutil
import time
from pathlib import Path

import pytest

from codex_langfuse.producer.cli import main
from codex_langfuse.producer.importer import TerminalProgress
from codex_langfuse.producer.rollout_cli import _moment

FIXTURES = Path(__file__).parent / "fixtures"


def test_dates_times_and_ages():
    assert _moment("2026-07-30") == int(datetime.datetime(2026, 7, 30, tzinfo=datetime.timezone.utc).timestamp() * 1e6)
    assert _moment("2026-07-30T12:00:00+02:00") == int(
        datetime.datetime(2026, 7, 30, 10, tzinfo=datetime.timezone.utc).timestamp() * 1e6)
    week = time.time() - 7 * 86400
    assert abs(_moment("7d") / 1e6 - week) < 60
    with pytest.raises(Exception, match="not a date"):
        _moment("last tuesday")


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_bar_draws_on_a_terminal_only():
    terminal = FakeTerminal()
    bar = TerminalProgress(terminal, width=10)
    bar(5_000_000, 10_000_000)
    bar(10_000_000, 10_000_000)
    drawn = terminal.getvalue()
    assert "[#####-----]  50.0%" in drawn and "[##########] 100.0%" in drawn and drawn.endswith("\n")
    piped = io.StringIO()
    TerminalProgress(piped)(1, 2)
    assert piped.getvalue() == ""


def test_a_dry_run_counts_without_redis(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens: must not be needed
    tree = tmp_path / "sessions"
    shutil.copytree(FIXTURES / "rollouts" / "0.130.0", tree)
    assert main(["import", str(tree), "--dry-run", "--json", "--state", str(tmp_path / "s.sqlite3"),
                 "--idle-timeout", "0.001"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["dry_run"] and report["files"] == 5 and report["sent"] == report["turns"] == 6
    assert not (tmp_path / "spool").exists()
