"""How long `run.emit(line)` holds the caller's thread, with Redis up, down and frozen, against a
synchronous XADD and a Langfuse SDK span timed the same way in the same run.

Each call is timed on the caller's thread with perf_counter_ns around it, over real fixture lines
(newline-terminated, as read from Codex's stdout) replayed to --lines (100k by default). Baselines,
timed the same way over the same line objects: `collections.deque.append` (the floor of any
hand-off), a synchronous `XADD` through redis-py to the same redis-server (what a producer without
a background thread would pay), and a Langfuse SDK span (`start_observation(input=line).end()`,
langfuse's own client exporting to a closed port, so its background export fails fast).

Conditions for emit: Redis up, down (stopped: connections refused) and frozen (SIGSTOP: the
sender hangs on its socket until the 1 s timeout); paces "bursts" (1,000 lines back to back,
then 10 ms of quiet) and "tight" (back to back: the sender thread competes for the GIL all the
time); the garbage collector on, as in real use, its passes recorded through gc.callbacks.

Targets (issue 10): median <= 2 us, p99 <= 20 us, p99.9 <= 100 us in every condition; median at
least 20x below the synchronous XADD's and the Langfuse span's.

    .venv/bin/python benchmarks/emit_latency.py [--quick] [--lines N] [--json PATH]
"""

from __future__ import annotations

import collections
import gc
import logging
import shutil
import sys
import tempfile
import time
from array import array
from pathlib import Path

import _common
from _common import Report, fixture_lines, replayed, summary

from codex_langfuse.producer import Producer
from tests.support.redis_server import RedisServer

P50_TARGET_US = 2.0
P99_TARGET_US = 20.0
P999_TARGET_US = 100.0
CHEAPER_THAN = 20.0
BURST = 1000
BURST_PAUSE_S = 0.010


class GcWatch:
    """Start and end (perf_counter_ns) of every garbage-collector pass, whichever thread ran it."""

    def __init__(self) -> None:
        self.spans: list[tuple[int, int, int]] = []
        self._started = 0

    def __call__(self, phase: str, info: dict) -> None:
        now = time.perf_counter_ns()
        if phase == "start":
            self._started = now
        else:
            self.spans.append((self._started, now, info["generation"]))

    def __enter__(self) -> "GcWatch":
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc) -> None:
        gc.callbacks.remove(self)

    def overlaps(self, start: int, end: int) -> bool:
        return any(s < end and e > start for s, e, _ in self.spans)


def time_calls(call, lines: list[bytes], pace: str) -> tuple[array, array]:
    """(start ns, duration ns) of call(line) for every line, on this thread."""
    n = len(lines)
    starts, durations = array("q", bytes(8 * n)), array("q", bytes(8 * n))
    clock = time.perf_counter_ns
    sleep = time.sleep
    for i in range(n):
        line = lines[i]
        t0 = clock()
        call(line)
        t1 = clock()
        starts[i] = t0
        durations[i] = t1 - t0
        if pace == "bursts" and i % BURST == BURST - 1:
            sleep(BURST_PAUSE_S)
    return starts, durations


def measure(name: str, call, lines: list[bytes], pace: str) -> dict:
    gc.collect()
    with GcWatch() as watch:
        starts, durations = time_calls(call, lines, pace)
    stats = summary(d / 1000 for d in durations)  # microseconds
    stats.update(
        name=name,
        over_1ms=sum(1 for d in durations if d >= 1_000_000),
        in_gc_over_100us=sum(1 for s, d in zip(starts, durations) if d >= 100_000 and watch.overlaps(s, s + d)),
        gc_passes=len(watch.spans),
        gc_max_ms=max(((e - s) / 1e6 for s, e, _ in watch.spans), default=0.0),
    )
    return stats


def measure_emit(redis_url: str, spool_dir: Path, lines: list[bytes], pace: str, tag: str) -> dict:
    producer = Producer(redis_url=redis_url, spool_dir=spool_dir)
    run = producer.start_run(run_id=f"bench-emit-{tag}", model="gpt-5-codex")
    time.sleep(0.5)  # the sender thread has started and imported redis, as in a runner that has been up
    try:
        stats = measure("run.emit", run.emit, lines, pace)
        queued_at_end = producer.stats()["queued"]
    finally:
        producer.close(3.0)
    counts = producer.stats()  # after close: where every entry ended up
    stats.update(dropped=counts["dropped_queue_full"] + counts["dropped_closed"], errors=counts["errors"],
                 spooled=counts["spooled"], sent=counts["sent"], queued_at_end=queued_at_end)
    return stats


def measure_xadd(client, lines: list[bytes], pace: str) -> dict:
    seq = iter(range(len(lines)))

    def xadd(line: bytes) -> None:
        client.xadd("bench:sync-xadd", {"v": "1", "run": "bench-sync", "seq": next(seq), "kind": "line", "data": line})

    try:
        return measure("redis-py XADD (sync)", xadd, lines, pace)
    finally:
        client.delete("bench:sync-xadd")


def measure_langfuse_span(lines: list[bytes], pace: str) -> dict:
    from langfuse import Langfuse  # the benchmark may import langfuse; the producer never does

    for name in ("langfuse", "opentelemetry"):  # its failing exports (to a closed port) are expected
        logging.getLogger(name).setLevel(logging.CRITICAL)
    client = Langfuse(public_key="pk-lf-bench", secret_key="sk-lf-bench", base_url="http://127.0.0.1:9", timeout=1)

    def span(line: bytes) -> None:
        client.start_observation(name="line", input=line.decode("utf-8", "replace")).end()

    try:
        return measure("Langfuse SDK span", span, lines, pace)
    finally:
        client.shutdown()


def main() -> int:
    args_parser = _common.parser(__doc__.splitlines()[0])
    args_parser.add_argument("--lines", type=int, help="lines per measurement (default 100,000; 10,000 with --quick)")
    args = args_parser.parse_args()
    _common.require_redis_server()
    count = args.lines or (10_000 if args.quick else 100_000)
    # with the newline, as a runner reads them from Codex's stdout (`for line in proc.stdout`)
    lines = [line + b"\n" for line in replayed(fixture_lines(), count)]
    report = Report("emit_latency", _common.command_line())
    print(f"emit_latency: {count:,} fixture lines ({sum(map(len, lines)) / count:.0f} B average) per measurement")

    workdir = Path(tempfile.mkdtemp(prefix="bench-emit-"))
    server = RedisServer().start()
    results: list[dict] = []
    baselines: dict[str, dict] = {}
    try:
        client = server.client()
        span_lines = lines[: min(count, 20_000)]  # the SDK span is slow: fewer calls suffice
        for pace in ("bursts", "tight"):
            dq: collections.deque = collections.deque()
            baselines[f"deque-{pace}"] = measure("deque.append", dq.append, lines, pace)
            del dq
            baselines[f"xadd-{pace}"] = measure_xadd(client, span_lines, pace)
            baselines[f"langfuse-{pace}"] = measure_langfuse_span(span_lines, pace)
            print(f"  baselines, {pace}: deque p50 {baselines[f'deque-{pace}']['p50']:.2f} us, sync XADD p50 "
                  f"{baselines[f'xadd-{pace}']['p50']:.1f} us, Langfuse span p50 {baselines[f'langfuse-{pace}']['p50']:.1f} us",
                  flush=True)
        client.close()
        for condition in ("up", "down", "frozen"):
            if condition == "down":
                server.stop()
            elif condition == "frozen":
                server.start()
                server.freeze()
            for pace in ("bursts", "tight"):
                tag = f"{condition}-{pace}"
                emit = measure_emit(server.url, workdir / tag, lines, pace, tag)
                if condition == "frozen":
                    # the next producer starts against a freshly frozen server, not a backlog of half-sent writes
                    server.thaw()
                    server.stop()
                    server.start()
                    server.freeze()
                results.append({"condition": condition, "pace": pace, "emit": emit})
                print(f"  {tag}: emit p50 {emit['p50']:.2f} p99 {emit['p99']:.2f} p99.9 {emit['p99.9']:.1f} "
                      f"max {emit['max']:.0f} us", flush=True)
    finally:
        server.thaw()
        server.close()
        shutil.rmtree(workdir, ignore_errors=True)

    rows = [("-", key.split("-")[1], s["name"], s["n"], s["p50"], s["p99"], s["p99.9"], s["max"], s["over_1ms"],
             s["gc_passes"], s["gc_max_ms"]) for key, s in baselines.items()]
    rows += [(r["condition"], r["pace"], r["emit"]["name"], r["emit"]["n"], r["emit"]["p50"], r["emit"]["p99"],
              r["emit"]["p99.9"], r["emit"]["max"], r["emit"]["over_1ms"], r["emit"]["gc_passes"], r["emit"]["gc_max_ms"])
             for r in results]
    report.table("per-call time on the caller's thread (us)",
                 ("redis", "pace", "call", "calls", "p50", "p99", "p99.9", "max", ">=1ms", "GC passes", "longest GC ms"),
                 rows)
    report.table("producer counters (entries: start + lines + end) after close(3 s)",
                 ("redis", "pace", "lines emitted", "queued when the last emit returned", "sent to redis",
                  "spooled", "dropped (queue cap)", "errors"),
                 [(r["condition"], r["pace"], count, r["emit"]["queued_at_end"], r["emit"]["sent"],
                   r["emit"]["spooled"], r["emit"]["dropped"], r["emit"]["errors"]) for r in results])

    for r in results:
        emit, label = r["emit"], f"redis {r['condition']}, {r['pace']}"
        floor = baselines[f"deque-{r['pace']}"]
        for quantile, target in (("p50", P50_TARGET_US), ("p99", P99_TARGET_US), ("p99.9", P999_TARGET_US)):
            report.check(f"emit {quantile}, {label} (us)", emit[quantile], f"<= {target:g} us", emit[quantile] <= target,
                         baseline=f"deque.append {floor[quantile]:.2f}", ratio=f"{emit[quantile] / floor[quantile]:.1f}x deque")
    for pace in ("bursts", "tight"):
        up = next(r["emit"] for r in results if r["condition"] == "up" and r["pace"] == pace)
        for key, what in (("xadd", "a synchronous XADD"), ("langfuse", "a Langfuse SDK span")):
            other = baselines[f"{key}-{pace}"]
            cheaper = other["p50"] / up["p50"]
            report.check(f"emit cheaper than {what}, {pace} (median / median)", cheaper, f">= {CHEAPER_THAN:.0f}x",
                         cheaper >= CHEAPER_THAN, baseline=f"{other['p50']:.1f} us", ratio=f"emit {up['p50']:.2f} us")
    return report.finish(args.json)


if __name__ == "__main__":
    sys.exit(main())
