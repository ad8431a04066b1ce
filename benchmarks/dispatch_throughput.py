"""Events per second one dispatcher files: stream -> runs' logs -> one RQ job per batch of runs.

A real redis-server on 127.0.0.1 (started and stopped by pid). The stream is filled beforehand
with pipelined XADD; then one `Dispatcher` in this process reads, files and acknowledges until the
stream is drained (`run_once` in a loop, as `codex-langfuse dispatch` does; no workers, the jobs
stay queued). Baseline, same run, same redis-server, same entries: XREADGROUP COUNT 500 + XACK
alone (the floor for anything that reads a stream in a consumer group with redis-py).

Workloads: the fixture runs (15 entries per run: per-run costs show), and long runs (197 entries
per run). Each measured `--repeat` times; medians. Wall-clock rate and the rate per CPU second of
this process (what one core does, whatever else runs on a shared machine), with redis-server's
CPU per event beside them.

Target: >= 50,000 events/s.

    .venv/bin/python benchmarks/dispatch_throughput.py [--quick] [--events N] [--repeat R] [--json PATH]
    .venv/bin/python benchmarks/dispatch_throughput.py --profile    # cProfile of the dispatcher
"""

from __future__ import annotations

import cProfile
import pstats
import statistics
import sys
import time

import _common
from _common import EXEC_FIXTURES, Report

from codex_langfuse.ingest import connections
from codex_langfuse.ingest.dispatcher import Dispatcher
from codex_langfuse.ingest.settings import Settings
from pipeline_throughput import LONG_RUN_SOURCE, long_run_entries, run_entries
from tests.support.redis_server import RedisServer

EVENTS_PER_SECOND_TARGET = 50_000.0


def workload_entries(workload: str, events: int) -> list[dict]:
    """Stream entries of whole runs (each run its own id) until at least `events` of them."""
    entries: list[dict] = []
    copy = 0
    while len(entries) < events:
        sources = EXEC_FIXTURES if workload == "fixture runs" else [LONG_RUN_SOURCE]
        make = run_entries if workload == "fixture runs" else long_run_entries
        for path in sources:
            run_id = f"bench-dispatch-{workload.split()[0]}-{copy}-{path.stem[-12:]}"
            ts = 1_790_000_000_000_000
            entries += [{"v": "1", "run": run_id, "seq": str(seq), "ts": str(ts + seq * 1000), "kind": kind,
                         "data": data} for seq, (kind, data) in enumerate(make(run_id, path, copy))]
        copy += 1
    return entries


def fill(client, stream: str, entries: list[dict]) -> None:
    for i in range(0, len(entries), 500):
        with client.pipeline(transaction=False) as pipe:
            for fields in entries[i:i + 500]:
                pipe.xadd(stream, fields)
            pipe.execute()


def measure(client, settings: Settings, entries: list[dict], redis_pid: int, baseline: bool,
            profile: cProfile.Profile | None = None) -> dict:
    """Fill the stream, then drain it (the dispatcher, or XREADGROUP + XACK alone)."""
    client.flushall()
    fill(client, settings.stream, entries)
    dispatcher = Dispatcher(settings, connection=connections.redis_client(settings))
    dispatcher.ensure_group()
    dispatcher._last_sweep = time.monotonic()  # the sweep runs every 15 s, not in a 1 s drain
    redis_cpu, wall, cpu = _common.cpu_seconds(redis_pid), time.perf_counter(), time.process_time()
    if profile is not None:
        profile.enable()
    done = 0
    while True:
        if baseline:
            answer = dispatcher.redis.xreadgroup(dispatcher.group, dispatcher.name, {settings.stream: ">"},
                                                 count=settings.read_count)
            batch = answer[0][1] if answer else []
            if batch:
                dispatcher.redis.xack(settings.stream, dispatcher.group, *[entry_id for entry_id, _ in batch])
            read = len(batch)
        else:
            read = dispatcher.run_once(block_ms=1)
        if not read:
            break
        done += read
    if profile is not None:
        profile.disable()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    redis_cpu = _common.cpu_seconds(redis_pid) - redis_cpu
    assert done == len(entries), (done, len(entries))
    if not baseline:
        filed = sum(client.hlen(f"{dispatcher.keys.prefix}:run:{run}:log") for run in {e["run"] for e in entries})
        assert filed == len(entries), (filed, len(entries))
    dispatcher.redis.close()
    return {"events": done, "wall_s": wall, "per_s": done / wall, "per_cpu_s": done / max(cpu, 1e-9),
            "redis_cpu_us_per_event": redis_cpu * 1e6 / done, "cpu_us_per_event": cpu * 1e6 / done,
            "jobs": client.llen(f"rq:queue:{settings.queue}")}


def main() -> int:
    args_parser = _common.parser(__doc__.splitlines()[0])
    args_parser.add_argument("--events", type=int, help="entries per measurement (default 100,000; 20,000 with --quick)")
    args_parser.add_argument("--repeat", type=int, help="measurements per workload (default 5; 3 with --quick)")
    args_parser.add_argument("--profile", action="store_true", help="print a cProfile of the dispatcher and exit")
    args = args_parser.parse_args()
    _common.require_redis_server()
    events = args.events or (20_000 if args.quick else 100_000)
    repeat = args.repeat or (3 if args.quick else 5)
    server = RedisServer().start()
    try:
        settings = Settings(redis_url=server.url)
        client = server.client()
        workloads = {w: workload_entries(w, events) for w in ("fixture runs", "long runs")}
        if args.profile:
            profile = cProfile.Profile()
            for entries in workloads.values():
                measure(client, settings, entries, server.proc.pid, False, profile)
            pstats.Stats(profile).sort_stats("tottime").print_stats(30)
            return 0
        report = Report("dispatch_throughput", _common.command_line())
        results = {}
        for workload, entries in workloads.items():
            runs = len({e["run"] for e in entries})
            measured = {"dispatcher": [], "baseline": []}
            for _ in range(repeat):  # alternate, so a busy moment of the machine hits both
                measured["baseline"].append(measure(client, settings, entries, server.proc.pid, True))
                measured["dispatcher"].append(measure(client, settings, entries, server.proc.pid, False))
            results[workload] = {"runs": runs, "events": len(entries), **{
                name: {key: statistics.median(m[key] for m in ms) for key in ms[0]} for name, ms in measured.items()}}
            r = results[workload]
            print(f"  {workload}: dispatcher {r['dispatcher']['per_s']:,.0f} events/s "
                  f"({r['dispatcher']['per_cpu_s']:,.0f} per CPU s), XREADGROUP+XACK {r['baseline']['per_s']:,.0f}",
                  flush=True)
        rows = []
        for workload, r in results.items():
            for name in ("baseline", "dispatcher"):
                m = r[name]
                rows.append((workload, "XREADGROUP + XACK" if name == "baseline" else "Dispatcher.run_once",
                             r["events"] / r["runs"], m["per_s"], m["per_cpu_s"], m["cpu_us_per_event"],
                             m["redis_cpu_us_per_event"], f"{m['per_s'] / r['baseline']['per_s']:.1%}",
                             m["jobs"] if name == "dispatcher" else "-"))
        report.table(f"events/s, medians of {repeat} (the stream filled beforehand; {events:,} entries each)",
                     ("workload", "reader", "events/run", "events/s", "events per CPU s", "CPU us/event",
                      "redis-server CPU us/event", "ratio to XREADGROUP+XACK", "RQ jobs queued"), rows)
        for workload, r in results.items():
            value, base = r["dispatcher"]["per_s"], r["baseline"]["per_s"]
            report.check(f"dispatcher events/s, {workload}", value, f">= {EVENTS_PER_SECOND_TARGET:,.0f}",
                         value >= EVENTS_PER_SECOND_TARGET, baseline=f"XREADGROUP+XACK {base:,.0f}",
                         ratio=f"{value / base:.1%}")
        client.close()
        return report.finish(args.json)
    finally:
        server.close()


if __name__ == "__main__":
    sys.exit(main())
