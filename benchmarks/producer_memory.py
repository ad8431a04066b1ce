"""Producer memory while Redis is away, the spool it writes, and the delivery once Redis is back.

A child process (so its RSS is the producer's alone) creates a Producer and a run, reports its
RSS once idle (the baseline), then emits --lines real fixture lines (1M by default) back to back,
read from a file as a runner reads Codex's stdout (each line an object the queue alone keeps),
with Redis stopped (nothing listens on its port: spooling) or frozen (SIGSTOP: connections hang
until the sender's 1 s timeout). Its peak RSS (VmHWM) minus the idle RSS is the growth, which the
in-memory queue's byte cap must bound. Then: the spool file's size and the time until everything
is in it (flush), Redis is started (or thawed) and we time the delivery of the spool to the
stream, and check the stream holds each (run, seq) exactly once and gaplessly.

Emitting back to back outruns the sender (it spools at tens of thousands of entries/s), so the
queue reaches its cap and further lines are refused and counted (`dropped_queue_full`): the table
shows how many. Target: RSS growth <= queue cap + 30 MB in both conditions; every entry the
producer accepted is in the stream once, gapless by (run, seq).
(The spool cap is raised to 4 GiB so that the 1M lines fit; the queue cap is the default, 64 MiB.)

    .venv/bin/python benchmarks/producer_memory.py [--quick] [--lines N] [--json PATH]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common
from _common import REPO, Report

from codex_langfuse.producer import ProducerSettings
from codex_langfuse.producer.entries import DEFAULT_STREAM
from tests.support.redis_server import RedisServer

GROWTH_ALLOWANCE_BYTES = 30_000_000
SPOOL_MAX_BYTES = 4 * 1024 ** 3
RUN_ID = "bench-memory"

CHILD = r'''
import json, os, sys, time
sys.path.insert(0, sys.argv[4])
import _common
from codex_langfuse.producer import Producer

redis_url, spool_dir, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
spool_max = int(sys.argv[5])

def say(**fields):
    print(json.dumps(fields), flush=True)

# read from a file, as a runner reads Codex's stdout: every line is an object of its own, which
# the runner drops after emit and only the queue keeps (emit queues the object it is given)
lines_file = spool_dir + "-lines.jsonl"
fixture = _common.fixture_lines()
with open(lines_file, "wb") as out:
    for n in range(0, count, 10_000):
        out.write(b"".join(line + b"\n" for line in _common.replayed(fixture, min(10_000, count - n))))
producer = Producer(redis_url=redis_url, spool_dir=spool_dir, spool_max_bytes=spool_max)
run = producer.start_run(run_id="bench-memory", model="gpt-5-codex")
time.sleep(1.5)  # the sender thread has started, imported redis and met the dead Redis once
say(phase="idle", rss=_common.rss_kib()["VmRSS"], hwm=_common.rss_kib()["VmHWM"],
    queue_max_bytes=producer.settings.queue_max_bytes)
started = time.perf_counter()
refused = 0
with open(lines_file, "rb") as lines:
    for line in lines:
        if not run.emit(line):
            refused += 1
finished = run.finish(0)
emitted = time.perf_counter()
memory = _common.rss_kib()
say(phase="emitted", seconds=emitted - started, rss=memory["VmRSS"], hwm=memory["VmHWM"], refused=refused,
    finish_accepted=finished, stats=producer.stats())
flushed = producer.flush(900)
spool_bytes = sum(p.stat().st_size for p in __import__("pathlib").Path(spool_dir).glob("*.spool"))
say(phase="flushed", ok=flushed, seconds=time.perf_counter() - emitted, spool_bytes=spool_bytes,
    hwm=_common.rss_kib()["VmHWM"], stats=producer.stats())
sys.stdin.readline()  # Redis is back: the sender thread drains the spool in the background
sys.stdin.readline()  # the parent saw every entry arrive
closed = producer.close(10)
say(phase="closed", ok=closed, stats=producer.stats())
'''


def stream_check(client, expected: int) -> dict:
    """Every (run, seq) of the stream: how many, how many distinct, whether 0..n-1 without a gap."""
    seqs: list[int] = []
    start = "-"
    while True:
        entries = client.xrange(DEFAULT_STREAM, min=start, max="+", count=20_000)
        if not entries:
            break
        seqs.extend(int(fields[b"seq"]) for _, fields in entries if fields[b"run"] == RUN_ID.encode())
        ms, seq = entries[-1][0].decode().split("-")
        start = f"{ms}-{int(seq) + 1}"
    distinct = set(seqs)
    return {"entries": len(seqs), "distinct": len(distinct), "duplicates": len(seqs) - len(distinct),
            "gapless": distinct == set(range(len(distinct))), "expected": expected,
            "exactly_once": len(seqs) == len(distinct) == expected and distinct == set(range(expected))}


def run_condition(condition: str, count: int, workdir: Path) -> dict:
    server = RedisServer().start()
    spool_dir = workdir / f"spool-{condition}"
    if condition == "stopped":
        server.stop()
    else:
        server.freeze()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, server.url, str(spool_dir), str(count), str(Path(__file__).parent),
         str(SPOOL_MAX_BYTES)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        def read(phase: str) -> dict:
            line = child.stdout.readline()
            if not line:
                raise RuntimeError(f"the producer process ended before {phase} (exit {child.wait()})")
            message = json.loads(line)
            assert message["phase"] == phase, message
            return message

        idle = read("idle")
        emitted = read("emitted")
        flushed = read("flushed")
        expected = flushed["stats"]["spooled"] + flushed["stats"]["sent"]

        back = time.perf_counter()
        if condition == "stopped":
            server.start()
        else:
            server.thaw()
        child.stdin.write("redis is back\n")
        child.stdin.flush()
        client = server.client()
        first = None
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            length = client.xlen(DEFAULT_STREAM)
            if length and first is None:
                first = time.perf_counter()
            if length >= expected:
                break
            time.sleep(0.02)
        done = time.perf_counter()
        time.sleep(0.5)  # anything more (a duplicate) would arrive now
        child.stdin.write("close\n")
        child.stdin.flush()
        closed = read("closed")
        child.wait(60)
        # close() may add what the full queue refused earlier (the end entry): count from its books
        check = stream_check(client, closed["stats"]["sent"])
        used_memory = client.info("memory")["used_memory"]
        client.close()
        return {
            "condition": condition, "lines": count, "idle": idle, "emitted": emitted, "flushed": flushed,
            "closed": closed, "expected": expected, "growth_bytes": (emitted["hwm"] - idle["rss"]) * 1024,
            "peak_growth_bytes": (max(emitted["hwm"], flushed["hwm"]) - idle["rss"]) * 1024,
            "first_entry_s": (first - back) if first else float("nan"),
            "delivery_s": (done - first) if first else float("nan"), "delivered_after_s": done - back,
            "check": check, "redis_used_memory": used_memory,
        }
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        server.thaw()
        server.close()


def main() -> int:
    args_parser = _common.parser(__doc__.splitlines()[0])
    args_parser.add_argument("--lines", type=int, help="lines to emit (default 1,000,000; 100,000 with --quick)")
    args = args_parser.parse_args()
    _common.require_redis_server()
    count = args.lines or (100_000 if args.quick else 1_000_000)
    cap = ProducerSettings().queue_max_bytes
    report = Report("producer_memory", _common.command_line())
    workdir = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    results = []
    try:
        for condition in ("stopped", "frozen"):
            result = run_condition(condition, count, workdir)
            results.append(result)
            print(f"  redis {condition}: RSS growth {result['growth_bytes'] / 1e6:.1f} MB, spool "
                  f"{result['flushed']['spool_bytes'] / 1e6:.0f} MB, delivered {result['check']['entries']:,} "
                  f"in {result['delivery_s']:.1f} s", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    mb = 1e6
    report.table(f"RSS of the producer process emitting {count:,} lines back to back (MB)",
                 ("redis", "idle RSS (baseline)", "peak RSS while emitting", "growth", "peak growth incl. flush",
                  "queue cap", "growth / cap", "emit seconds", "lines/s emitted", "refused (queue full)",
                  "finish(0) accepted"),
                 [(r["condition"], r["idle"]["rss"] * 1024 / mb, r["emitted"]["hwm"] * 1024 / mb,
                   r["growth_bytes"] / mb, r["peak_growth_bytes"] / mb, cap / mb,
                   f"{r['growth_bytes'] / cap:.2f}", r["emitted"]["seconds"], count / r["emitted"]["seconds"],
                   r["emitted"]["refused"], r["emitted"]["finish_accepted"]) for r in results])
    report.table("spool and delivery when Redis returns",
                 ("redis", "spooled entries", "spool file MB", "spool bytes/entry", "emit end -> all spooled s",
                  "spooled entries/s (while emitting + flush)", "redis back -> first entry s", "delivery s", "spooled entries/s delivered", "in stream", "duplicates",
                  "gapless", "exactly once"),
                 [(r["condition"], r["flushed"]["stats"]["spooled"], r["flushed"]["spool_bytes"] / mb,
                   r["flushed"]["spool_bytes"] / max(1, r["flushed"]["stats"]["spooled"]), r["flushed"]["seconds"],
                   r["flushed"]["stats"]["spooled"] / (r["emitted"]["seconds"] + r["flushed"]["seconds"]),
                   r["first_entry_s"], r["delivery_s"], r["expected"] / r["delivery_s"] if r["delivery_s"] else 0.0,
                   r["check"]["entries"], r["check"]["duplicates"], r["check"]["gapless"], r["check"]["exactly_once"])
                  for r in results])
    report.table("producer counters at close",
                 ("redis", *[k for k in results[0]["closed"]["stats"]]),
                 [(r["condition"], *r["closed"]["stats"].values()) for r in results])
    for r in results:
        limit = cap + GROWTH_ALLOWANCE_BYTES
        report.check(f"RSS growth while emitting, redis {r['condition']} (MB)", r["growth_bytes"] / mb,
                     f"<= cap + 30 = {limit / mb:.0f}", r["growth_bytes"] <= limit,
                     baseline=f"idle {r['idle']['rss'] * 1024 / mb:.0f} MB", ratio=f"{r['growth_bytes'] / cap:.2f} x cap")
        report.check(f"spool delivered exactly once by (run, seq), redis {r['condition']}",
                     float(r["check"]["exactly_once"]), "all, once", r["check"]["exactly_once"],
                     ratio=f"{r['check']['duplicates']:,} duplicates")
    return report.finish(args.json)


if __name__ == "__main__":
    sys.exit(main())
