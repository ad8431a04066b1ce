"""Shared pieces of the benchmarks: the machine, the fixtures, percentiles, and the report.

Every benchmark prints its figures next to a baseline measured in the same run, states its
targets, and exits 1 when one is missed (2 when it could not run at all). `--json PATH` also
writes the figures as JSON, which is what BENCHMARKS.md is written from.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # tests.support (RedisServer, Stack, LangfuseReceiver) is not installed

CODEX_FIXTURES = REPO / "tests" / "fixtures" / "codex"
# `codex exec --json` output of real runs (the rollout_* files are Codex's session files, not its stdout)
EXEC_FIXTURES = sorted(CODEX_FIXTURES.glob("real_run_*.jsonl")) + [CODEX_FIXTURES / "repo_docs_exec_md_sample.jsonl"]
ALL_FIXTURES = sorted(CODEX_FIXTURES.glob("*.jsonl"))


def fixture_lines(paths: Iterable[Path] = ALL_FIXTURES) -> list[bytes]:
    """Every stdout line of the given fixtures, without line endings, in file order."""
    lines: list[bytes] = []
    for path in paths:
        lines.extend(line for line in path.read_bytes().splitlines() if line)
    return lines


def replayed(lines: Sequence[bytes], count: int) -> list[bytes]:
    """`count` lines: the fixture lines over and over (the same objects, as a runner would hold them)."""
    return [lines[i % len(lines)] for i in range(count)]


# ---- statistics ----

def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, int(-(-q * len(sorted_values) // 100)))  # ceil(q/100 * n)
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summary(values: Iterable[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "p50": percentile(ordered, 50),
        "p99": percentile(ordered, 99),
        "p99.9": percentile(ordered, 99.9),
        "max": ordered[-1] if ordered else float("nan"),
    }


def ratio(value: float, baseline: float) -> float:
    return value / baseline if baseline else float("inf")


# ---- processes ----

def rss_kib(pid: int | str = "self") -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process in KiB, from /proc."""
    found = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value = line.split(":", 1)
                found[name] = int(value.split()[0])
    return found


def cpu_seconds(pid: int, children: bool = True) -> float:
    """User + system CPU of a process (plus its reaped children) from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    # after the ")": state is field 3, so utime (14) is index 11
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    ticks = utime + stime + ((cutime + cstime) if children else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def require_redis_server() -> None:
    if shutil.which("redis-server") is None:
        print("redis-server is not installed (apt-get install -y redis-server)", file=sys.stderr)
        sys.exit(2)


# ---- the machine ----

def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kib = 0
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemTotal:"):
                    mem_kib = int(line.split()[1])
    except OSError:
        pass
    redis_version = "not installed"
    if shutil.which("redis-server"):
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
        match = re.search(r"v=(\S+)", out)
        redis_version = match.group(1) if match else out.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(mem_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "redis_server": redis_version,
        "kernel": platform.release(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git": _git_revision(),
        "load_average_at_start": loadavg(),
    }


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def _git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "producer", "ingest"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return rev + (" + uncommitted changes in producer/ or ingest/" if dirty else "")
    except OSError:
        return "?"


# ---- the report ----

@dataclass
class Check:
    figure: str
    value: float
    target: str
    met: bool
    baseline: str = ""
    ratio: str = ""


@dataclass
class Report:
    name: str
    command: str
    machine: dict[str, Any] = field(default_factory=machine)
    sections: list[dict[str, Any]] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Print a table now and keep it for the JSON."""
        self.sections.append({"title": title, "columns": list(columns), "rows": [list(r) for r in rows]})
        print(f"\n## {title}")
        cells = [list(map(str, columns))] + [[_cell(v) for v in row] for row in rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
        for index, row in enumerate(cells):
            print("  ".join(value.rjust(widths[i]) if i else value.ljust(widths[i]) for i, value in enumerate(row)))
            if index == 0:
                print("  ".join("-" * w for w in widths))
        sys.stdout.flush()

    def check(self, figure: str, value: float, target: str, met: bool, baseline: str = "", ratio: str = "") -> None:
        self.checks.append(Check(figure, value, target, bool(met), baseline, ratio))

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"note: {text}")

    def finish(self, json_path: str | None) -> int:
        rows = [(c.figure, c.value, c.baseline, c.ratio, c.target, "yes" if c.met else "NO") for c in self.checks]
        self.table("targets", ("figure", "value", "baseline", "ratio", "target", "met"), rows)
        missed = [c for c in self.checks if not c.met]
        self.machine["load_average_at_end"] = loadavg()
        print(f"machine: {self.machine}")
        print(f"\n{self.name}: {len(self.checks) - len(missed)} of {len(self.checks)} targets met"
              + (f"; MISSED: {', '.join(c.figure for c in missed)}" if missed else ""))
        if json_path:
            payload = {"name": self.name, "command": self.command, "machine": self.machine,
                       "sections": self.sections, "checks": [asdict(c) for c in self.checks], "notes": self.notes}
            Path(json_path).write_text(json.dumps(payload, indent=1, default=str))
        return 1 if missed else 0


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a short smoke run (figures are rough)")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    return p


def command_line() -> str:
    return " ".join([".venv/bin/python", os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])


# ---- profiles ----

class Sampler:
    """py-spy sampling processes by pid while a phase runs (`--profile DIR`), each writing the
    collapsed stacks to DIR/<label>.txt, and a summary of where the time went (`hot`)."""

    def __init__(self, directory: str | None):
        self.directory = Path(directory) if directory else None
        self.running: list[tuple[subprocess.Popen, Path]] = []

    def start(self, label: str, pid: int, subprocesses: bool = False) -> None:
        if self.directory is None:
            return
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self.directory.mkdir(parents=True, exist_ok=True)
        out = self.directory / f"{label}.txt"
        command = [spy, "record", "--pid", str(pid), "--rate", "250", "--format", "raw", "--output", str(out),
                   "--nonblocking"] + (["--subprocesses"] if subprocesses else [])
        self.running.append((subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), out))

    def stop(self) -> list[Path]:
        done = []
        for process, out in self.running:
            process.send_signal(2)  # SIGINT: py-spy writes its file and exits
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
            done.append(out)
            print(f"profile {out}:\n{hot(out)}", flush=True)
        self.running.clear()
        return done


def hot(path: Path, top: int = 25) -> str:
    """The functions with the most samples on the stack (inclusive) and at its top (self)."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return "  (no profile written)"
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [re.sub(r" \(.*?([^/]+\.py):\d+\)", r" (\1)", f) for f in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n
        own[frames[-1]] = own.get(frames[-1], 0) + n
    if not total:
        return "  (no samples)"
    rows = [f"  {total} samples; inclusive:"]
    rows += [f"    {n / total:6.1%}  {f}" for f, n in sorted(inclusive.items(), key=lambda x: -x[1])[:top]]
    rows += ["  self:"] + [f"    {n / total:6.1%}  {f}" for f, n in sorted(own.items(), key=lambda x: -x[1])[:top]]
    return "\n".join(rows)
