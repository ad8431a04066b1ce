"""How long `run.emit(line)` holds the caller's thread, with Redis up, stopped and frozen.

Each call is timed on the caller's thread with perf_counter_ns around it, over real fixture lines
(newline-terminated, as read from Codex's stdout) replayed to --lines (100k by default), against
two baselines timed the same way in the same run with the same line objects:
`queue.SimpleQueue.put` and `collections.deque.append`.

Two paces: "bursts" (1,000 lines back to back, then 10 ms of quiet: the sender thread gets to run
between bursts, and with Redis frozen the window covers both a sender blocked on its socket and
one spooling) and "tight" (every line back to back: the sender thread competes for the GIL all
the time). Each with the garbage collector on (the real case) and off; garbage-collector passes
are recorded through gc.callbacks, so a slow call can be told apart as "inside a GC pass".

Targets: p99 <= 20 us in every condition; no call >= 50 ms outside a GC pass; p99 with Redis
frozen within 2x of Redis up (the caller never waits for Redis).

    .venv/bin/python benchmarks/emit_latency.py [--quick] [--lines N] [--json PATH]
"""

from __future__ import annotations

import collections
import gc
import queue
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

P99_TARGET_US = 20.0
SLOW_CALL_MS = 50.0
FROZEN_VS_UP = 2.0
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


def measure(name: str, call, lines: list[bytes], pace: str, gc_on: bool) -> dict:
    gc.collect()
    if gc_on:
        gc.enable()
    else:
        gc.disable()
    try:
        with GcWatch() as watch:
            starts, durations = time_calls(call, lines, pace)
    finally:
        gc.enable()
    stats = summary(d / 1000 for d in durations)  # microseconds
    slow = [(s, d) for s, d in zip(starts, durations) if d >= SLOW_CALL_MS * 1e6]
    slow_in_gc = sum(1 for s, d in slow if watch.overlaps(s, s + d))
    stats.update(
        name=name,
        over_1ms=sum(1 for d in durations if d >= 1_000_000),
        slow=len(slow),
        slow_outside_gc=len(slow) - slow_in_gc,
        gc_passes=len(watch.spans),
        gc_max_ms=max(((e - s) / 1e6 for s, e, _ in watch.spans), default=0.0),
    )
    return stats


def measure_emit(redis_url: str, spool_dir: Path, lines: list[bytes], pace: str, gc_on: bool, tag: str) -> dict:
    producer = Producer(redis_url=redis_url, spool_dir=spool_dir)
    run = producer.start_run(run_id=f"bench-emit-{tag}", model="gpt-5-codex")
    try:
        stats = measure("run.emit", run.emit, lines, pace, gc_on)
        queued_at_end = producer.stats()["queued"]
    finally:
        producer.close(3.0)
    counts = producer.stats()  # after close: where every entry ended up
    stats.update(dropped=counts["dropped_queue_full"] + counts["dropped_closed"], errors=counts["errors"],
                 spooled=counts["spooled"], sent=counts["sent"], queued_at_end=queued_at_end)
    return stats


def main() -> int:
    args_parser = _common.parser(__doc__.splitlines()[0])
    args_parser.add_argument("--lines", type=int, help="lines per measurement (default 100,000; 10,000 with --quick)")
    args = args_parser.parse_args()
    _common.require_redis_server()
    count = args.lines or (10_000 if args.quick else 100_000)
    # with the newline, as a runner reads them from Codex's stdout (`for line in proc.stdout`): emit
    # strips it, so every queued entry holds bytes of its own, as in real use
    lines = [line + b"\n" for line in replayed(fixture_lines(), count)]
    report = Report("emit_latency", _common.command_line())
    print(f"emit_latency: {count:,} fixture lines ({sum(map(len, lines)) / count:.0f} B average) per measurement")

    workdir = Path(tempfile.mkdtemp(prefix="bench-emit-"))
    server = RedisServer().start()
    results: list[dict] = []
    try:
        for condition in ("up", "stopped", "frozen"):
            if condition == "stopped":
                server.stop()
            elif condition == "frozen":
                server.start()
                server.freeze()
            for pace in ("bursts", "tight"):
                for gc_on in (True, False):
                    tag = f"{condition}-{pace}-{'gc' if gc_on else 'nogc'}"
                    row = {"condition": condition, "pace": pace, "gc": "on" if gc_on else "off"}
                    simple_queue = queue.SimpleQueue()
                    baseline_q = measure("SimpleQueue.put", simple_queue.put, lines, pace, gc_on)
                    del simple_queue
                    dq: collections.deque = collections.deque()
                    baseline_d = measure("deque.append", dq.append, lines, pace, gc_on)
                    del dq
                    emit = measure_emit(server.url, workdir / tag, lines, pace, gc_on, tag)
                    if condition == "frozen":
                        # the next producer starts against a freshly frozen server, not a backlog of
                        # half-sent pipelines
                        server.thaw()
                        server.stop()
                        server.start()
                        server.freeze()
                    results.append({**row, "emit": emit, "simple_queue": baseline_q, "deque": baseline_d})
                    print(f"  {tag}: emit p50 {emit['p50']:.2f} p99 {emit['p99']:.2f} p99.9 {emit['p99.9']:.1f} "
                          f"max {emit['max']:.0f} us; deque p99 {baseline_d['p99']:.2f} us", flush=True)
    finally:
        server.thaw()
        server.close()
        shutil.rmtree(workdir, ignore_errors=True)

    rows = []
    for r in results:
        for key in ("emit", "simple_queue", "deque"):
            s = r[key]
            rows.append((r["condition"], r["pace"], r["gc"], s["name"], s["p50"], s["p99"], s["p99.9"], s["max"],
                         s["over_1ms"], s["slow"], s["slow_outside_gc"], s["gc_passes"], s["gc_max_ms"]))
    report.table("per-call latency on the caller's thread (us)",
                 ("redis", "pace", "gc", "call", "p50", "p99", "p99.9", "max", ">=1ms", ">=50ms", ">=50ms not GC",
                  "GC passes", "longest GC ms"), rows)
    report.table("producer counters (entries: start + lines + end) after close(3 s)",
                 ("redis", "pace", "gc", "lines emitted", "queued when the last emit returned", "sent to redis",
                  "spooled", "dropped (queue cap)", "errors"),
                 [(r["condition"], r["pace"], r["gc"], count, r["emit"]["queued_at_end"], r["emit"]["sent"],
                   r["emit"]["spooled"], r["emit"]["dropped"], r["emit"]["errors"]) for r in results])

    by_key = {(r["condition"], r["pace"], r["gc"]): r for r in results}
    for r in results:
        emit, base = r["emit"], r["deque"]
        label = f"p99 emit, redis {r['condition']}, {r['pace']}, gc {r['gc']} (us)"
        report.check(label, emit["p99"], f"<= {P99_TARGET_US:.0f} us", emit["p99"] <= P99_TARGET_US,
                     baseline=f"deque.append {base['p99']:.2f}", ratio=f"{emit['p99'] / base['p99']:.1f}x")
    for r in results:
        report.check(f"emit calls >= {SLOW_CALL_MS:.0f} ms outside GC, redis {r['condition']}, {r['pace']}, gc {r['gc']}",
                     r["emit"]["slow_outside_gc"], "0", r["emit"]["slow_outside_gc"] == 0)
    for pace in ("bursts", "tight"):
        up, frozen = by_key[("up", pace, "on")]["emit"], by_key[("frozen", pace, "on")]["emit"]
        report.check(f"p99 emit redis frozen / redis up, {pace}, gc on", frozen["p99"] / up["p99"],
                     f"<= {FROZEN_VS_UP:.0f}x", frozen["p99"] <= FROZEN_VS_UP * up["p99"],
                     baseline=f"up {up['p99']:.2f} us", ratio=f"frozen {frozen['p99']:.2f} us")
    return report.finish(args.json)


if __name__ == "__main__":
    sys.exit(main())
