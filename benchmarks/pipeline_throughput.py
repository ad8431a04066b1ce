"""Events per second from the Redis stream through dispatcher and RQ workers into a Langfuse receiver.

A Stack-like setup on 127.0.0.1, every process started and stopped by pid: a real redis-server,
the strict local Langfuse receiver in its own process, one `codex-langfuse dispatch` and 1 or 2
`codex-langfuse worker` processes, with the production settings (not the tests' compressed
timings). For each configuration, K runs of the `codex exec --json` fixtures (each copy with its
own run id and Codex thread id) are written straight onto the stream with pipelined XADD, and:

- saturated: all K runs at once; events/s = entries / (first XADD -> last span or score at the
  receiver); end-to-end latency = span received - XADD of its run (includes the queueing);
- paced: runs written one at a time at about a third of the saturated rate, for the latency of
  an unloaded pipeline (XADD of the run -> each of its spans at the receiver);
- CPU per event of each process group (a forking worker's work horses and its scheduler count).

Every run must arrive exactly as the pure mapping makes it: the number of spans and scores, no
duplicate. Baseline, same run, same redis-server: raw pipelined XADD of the same entries, then
XREADGROUP COUNT 500 + XACK in one process.

Targets, one worker of the default class (`simple`, CODEX_LANGFUSE_WORKER_CLASS):
- >= 2,000 events/s on long runs (197 events each: closer to real Codex runs, which print
  hundreds of lines);
- >= 20 runs/s on the fixture runs (15 events each), where the cost per run (one RQ job, a
  lease, a commit, one export) dominates: 20 runs/s is 1.7 million runs a day, against the
  thousands a day this is built for. (These runs' events/s is shown, not a target.)

    .venv/bin/python benchmarks/pipeline_throughput.py [--quick] [--runs K] [--json PATH]
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import _common
from _common import EXEC_FIXTURES, Report, summary

from codex_langfuse.ingest.entries import Entry
from codex_langfuse.ingest.fold import FoldContext, fold, new_state
from codex_langfuse.ingest.observations import trace_id
from codex_langfuse.ingest.pricing import PriceTable
from codex_langfuse.ingest.settings import Settings
from tests.support.langfuse_receiver import ReceiverProcess
from tests.support.stack import FAST, Stack

EVENTS_PER_SECOND_TARGET = 2000.0
RUNS_PER_SECOND_TARGET = 20.0
DEFAULT_WORKER_CLASS = "simple"
# The receiver's http.server writes the headers and the body of an answer in two send()s; with
# Nagle's algorithm on, the body waits for the client's delayed ACK: ~40 ms per request on
# loopback. Langfuse's own server (Node.js, `noDelay` true by default) does not do that, so the
# receiver is started with TCP_NODELAY on its connections unless --receiver-as-is.
_NODELAY_LAUNCHER = """
import socket, sys
import tests.support.langfuse_receiver as receiver
_setup = receiver._Handler.setup
def setup(self):
    _setup(self)
    self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
receiver._Handler.setup = setup
sys.exit(receiver.main(sys.argv[1:]))
"""


class NoDelayReceiverProcess(ReceiverProcess):
    def command(self) -> list[str]:
        module_command = super().command()
        return [module_command[0], "-c", _NODELAY_LAUNCHER, *module_command[3:]]
HANG_GUARD_S = 900.0
# the tests' compressed timings, put back to the production defaults
PRODUCTION = {key.removeprefix("CODEX_LANGFUSE_").lower(): Settings.model_fields[key.removeprefix("CODEX_LANGFUSE_").lower()].default
              for key in FAST}


def meta_for(path: Path) -> dict:
    return {"model": "gpt-5-codex", "prompt": f"prompt of {path.stem}", "name": "codex exec",
            "tags": ["bench", path.stem], "metadata": {"fixture": path.name}}


def run_entries(run_id: str, path: Path, copy: int) -> list[tuple[str, bytes]]:
    """(kind, data) of a run: start, the fixture's lines (with a thread id of its own), end."""
    lines = [re.sub(rb'("thread_id":"[^"]+)"', rb'\1-' + str(copy).encode() + b'"', line)
             for line in path.read_bytes().splitlines() if line]
    return ([("start", json.dumps(meta_for(path)).encode())] + [("line", line) for line in lines]
            + [("end", json.dumps({"exit_code": 0, "signal": None, "reason": "exited"}).encode())])


LONG_RUN_SOURCE = _common.CODEX_FIXTURES / "real_run_0.169.0_full.jsonl"
LONG_RUN_ROUNDS = 16


def long_run_entries(run_id: str, path: Path, copy: int) -> list[tuple[str, bytes]]:
    """A long Codex run made of the 0.169.0 full run: its items (reasoning, plan, command, file
    change, web search, message) repeated LONG_RUN_ROUNDS times in one turn, item ids made unique."""
    data = run_entries(run_id, path, copy)
    start, lines, end = data[0], [d for _, d in data[1:-1]], data[-1]
    head, items, tail = lines[:2], lines[2:-1], lines[-1:]
    rounds = [re.sub(rb'"id":"(item_\d+)"', rb'"id":"\1_r' + str(r).encode() + b'"', line)
              for r in range(LONG_RUN_ROUNDS) for line in items]
    return [start] + [("line", line) for line in head + rounds + tail] + [end]


WORKLOADS = {"fixture runs": run_entries, "long runs": long_run_entries}


def expected_counts(path: Path, make=run_entries) -> tuple[int, int]:
    """(spans, scores) the pure mapping makes of one run of `path`."""
    data = make("bench-expected", path, 0)
    entries = [Entry(run="bench-expected", seq=i, ts=1_790_000_000_000_000 + i * 1000, kind=k, data=d.decode())
               for i, (k, d) in enumerate(data)]
    result = fold(new_state("bench-expected"), entries, FoldContext(prices=PriceTable.load()))
    return len(result.observations), len(result.scores)


def xadd_run(client, stream: str, run_id: str, data: list[tuple[str, bytes]]) -> None:
    ts = int(time.time() * 1e6)
    with client.pipeline(transaction=False) as pipe:
        for seq, (kind, payload) in enumerate(data):
            pipe.xadd(stream, {"v": "1", "run": run_id, "seq": str(seq), "ts": str(ts + seq * 1000),
                               "kind": kind, "data": payload})
        pipe.execute()


def group_cpu_seconds(leader: int) -> float:
    """CPU of every process in `leader`'s process group, plus the children they reaped."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == leader:  # pgrp
            total += sum(int(v) for v in fields[11:15]) / tick
    return total


def pipeline_drained(stack: Stack, settings: Settings) -> bool:
    client, keys = stack.redis, stack.keys
    try:
        groups = client.xinfo_groups(settings.stream)
    except Exception:
        return False
    group = next((g for g in groups if g["name"].decode() == keys.group), None)
    if group is None or group.get("lag") not in (0, None) or group["pending"]:
        return False
    if client.llen(f"rq:queue:{settings.queue}"):
        return False
    return client.zcard(keys.backlog) == 0


def wait_for(condition, what: str, timeout: float = HANG_GUARD_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def raw_stream_baseline(client, entries: list[tuple[str, list[tuple[str, bytes]]]]) -> dict:
    """Pipelined XADD (100 per round trip) of the same entries, then XREADGROUP COUNT 500 + XACK."""
    stream, group = "bench:raw", "bench-raw"
    client.delete(stream)
    flat = [(run_id, seq, kind, payload) for run_id, data in entries for seq, (kind, payload) in enumerate(data)]
    ts = str(int(time.time() * 1e6))
    started = time.perf_counter()
    for i in range(0, len(flat), 100):
        with client.pipeline(transaction=False) as pipe:
            for run_id, seq, kind, payload in flat[i:i + 100]:
                pipe.xadd(stream, {"v": "1", "run": run_id, "seq": str(seq), "ts": ts, "kind": kind, "data": payload})
            pipe.execute()
    added = time.perf_counter()
    client.xgroup_create(stream, group, id="0")
    read = 0
    while True:
        answer = client.xreadgroup(group, "c1", {stream: ">"}, count=500)
        batch = answer[0][1] if answer else []
        if not batch:
            break
        client.xack(stream, group, *[entry_id for entry_id, _ in batch])
        read += len(batch)
    done = time.perf_counter()
    client.delete(stream)
    assert read == len(flat), (read, len(flat))
    return {"events": len(flat), "xadd_per_s": len(flat) / (added - started), "read_ack_per_s": len(flat) / (done - added),
            "per_s": len(flat) / (done - started)}


def saturate(stack: Stack, settings: Settings, receiver, dispatcher, worker_procs, batches, want) -> dict:
    """Write every run of `batches` at once; measure until the last of them is at the receiver."""
    client = stack.redis
    runs = len(batches)
    events = sum(len(data) for _, data in batches)
    pids = {"redis-server": stack.redis_server.proc.pid, "receiver": receiver.pid}

    def cpu_now() -> dict[str, float]:
        return {"worker": sum(group_cpu_seconds(p.pid) for p in worker_procs),
                "dispatcher": group_cpu_seconds(dispatcher.pid),
                **{name: _common.cpu_seconds(pid) for name, pid in pids.items()}}

    cpu_before = cpu_now()
    xadd_at: dict[str, float] = {}
    first_xadd = time.time()
    for run_id, data in batches:
        xadd_run(client, settings.stream, run_id, data)
        xadd_at[trace_id(run_id)] = time.time()
    fed = time.time()
    wait_for(lambda: pipeline_drained(stack, settings), f"{runs} runs to reach the receiver")
    cpu = {name: value - cpu_before[name] for name, value in cpu_now().items()}
    spans = [s for s in receiver.spans() if s.trace_id in xadd_at]
    scores = [s for s in receiver.score_writes() if s.trace_id in xadd_at]
    last = max([s.received_at for s in spans] + [s.received_at for s in scores])
    duration = last - first_xadd
    client.close()
    return {
        "runs": runs, "events": events, "events_per_run": events / runs,
        "feed_s": fed - first_xadd, "duration_s": duration, "events_per_s": events / duration,
        "runs_per_s": runs / duration,
        "latency_ms": summary((s.received_at - xadd_at[s.trace_id]) * 1000 for s in spans),
        "spans": len(spans), "want_spans": want[0], "scores": len(scores), "want_scores": want[1],
        "duplicates": sum(n - 1 for n in Counter(s.span_id for s in spans).values() if n > 1),
        "cpu_ms_per_event": {name: seconds * 1000 / events for name, seconds in cpu.items()},
    }


def run_configuration(workdir: Path, worker_class: str, workers: int, runs: int, paced_seconds: float,
                      fixtures: list[Path], expected: dict[tuple[str, Path], tuple[int, int]], receiver_as_is: bool) -> dict:
    tag = f"{worker_class}-{workers}"
    receiver = (ReceiverProcess() if receiver_as_is else NoDelayReceiverProcess()).start()
    stack = Stack(workdir / tag, receiver=receiver, **PRODUCTION, worker_class=worker_class)
    try:
        settings = stack.settings()
        client = stack.redis
        dispatcher = stack.start("dispatch", "dispatcher")
        worker_procs = [stack.start("worker", f"worker-{i}") for i in range(workers)]
        wait_for(lambda: client.scard("rq:workers") == workers, "the workers to register", 60)
        wait_for(lambda: client.exists(settings.stream), "the dispatcher's consumer group", 60)
        time.sleep(0.5)

        result = {"tag": tag, "worker_class": worker_class, "workers": workers}
        result["saturated"] = {}
        for workload, make in WORKLOADS.items():
            count = runs if workload == "fixture runs" else max(1, runs // 10)
            sources = fixtures if workload == "fixture runs" else [LONG_RUN_SOURCE]
            plan = [(f"bench-{tag}-{workload.split()[0]}-{i}", sources[i % len(sources)], i) for i in range(count)]
            batches = [(run_id, make(run_id, path, copy)) for run_id, path, copy in plan]
            want = (sum(expected[(workload, path)][0] for _, path, _ in plan),
                    sum(expected[(workload, path)][1] for _, path, _ in plan))
            result["saturated"][workload] = saturate(stack, settings, receiver, dispatcher, worker_procs, batches, want)
            if workload == "fixture runs":
                result["baseline"] = raw_stream_baseline(client, batches)
        fixture_rate = result["saturated"]["fixture runs"]["runs_per_s"]

        # ---- paced ----
        paced_rate = max(1.0, fixture_rate / 3)
        paced_xadd: dict[str, float] = {}
        paced_plan = []
        started = time.time()
        i = 0
        while time.time() - started < paced_seconds:
            run_id, path = f"bench-{tag}-paced-{i}", fixtures[i % len(fixtures)]
            paced_plan.append((run_id, path))
            xadd_run(client, settings.stream, run_id, run_entries(run_id, path, runs + i))
            paced_xadd[trace_id(run_id)] = time.time()
            i += 1
            time.sleep(max(0.0, started + i / paced_rate - time.time()))
        wait_for(lambda: pipeline_drained(stack, settings), "the paced runs to reach the receiver")
        paced_spans = [s for s in receiver.spans() if s.trace_id in paced_xadd]
        root_latencies = [(s.received_at - paced_xadd[s.trace_id]) * 1000 for s in paced_spans if s.parent_span_id is None]
        result["paced"] = {
            "runs": len(paced_plan), "runs_per_s": paced_rate,
            "latency_ms": summary((s.received_at - paced_xadd[s.trace_id]) * 1000 for s in paced_spans),
            "root_latency_ms": summary(root_latencies),
            "spans": len(paced_spans), "want_spans": sum(expected[("fixture runs", p)][0] for _, p in paced_plan),
            "duplicates": sum(n - 1 for n in Counter(s.span_id for s in paced_spans).values() if n > 1),
        }
        client.close()
        return result
    finally:
        stack.close()


def main() -> int:
    args_parser = _common.parser(__doc__.splitlines()[0])
    args_parser.add_argument("--runs", type=int, help="runs in the saturated phase (default 1,000; 100 with --quick)")
    args_parser.add_argument("--receiver-as-is", action="store_true",
                             help="do not set TCP_NODELAY on the receiver's connections (see _NODELAY_LAUNCHER)")
    args_parser.add_argument("--configs", default="forking:1,forking:2,simple:1,simple:2",
                             help="worker class:count pairs (default %(default)s)")
    args = args_parser.parse_args()
    _common.require_redis_server()
    runs = args.runs or (100 if args.quick else 1000)
    paced_seconds = 3.0 if args.quick else 15.0
    configs = [(c.split(":")[0], int(c.split(":")[1])) for c in args.configs.split(",")]
    if args.quick:
        configs = configs[:1]
    report = Report("pipeline_throughput", _common.command_line())
    if args.receiver_as_is:
        report.note("receiver as is: ~40 ms Nagle/delayed-ACK stall per HTTP answer (not Langfuse's behaviour)")
    else:
        report.note("receiver with TCP_NODELAY on its connections, as Langfuse's Node.js server has by default")
    fixtures = EXEC_FIXTURES
    expected = {("fixture runs", path): expected_counts(path) for path in fixtures}
    expected[("long runs", LONG_RUN_SOURCE)] = expected_counts(LONG_RUN_SOURCE, long_run_entries)
    per_run = sum(len(run_entries("x", p, 0)) for p in fixtures) / len(fixtures)
    print(f"pipeline_throughput: {runs:,} runs of {len(fixtures)} fixtures ({per_run:.1f} entries per run on average), "
          f"then {max(1, runs // 10):,} long runs ({len(long_run_entries('x', LONG_RUN_SOURCE, 0))} entries each)")

    workdir = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    results = []
    try:
        for worker_class, workers in configs:
            result = run_configuration(workdir, worker_class, workers, runs, paced_seconds, fixtures, expected,
                                       args.receiver_as_is)
            results.append(result)
            rates = ", ".join(f"{w}: {r['events_per_s']:,.0f} events/s ({r['runs_per_s']:.1f} runs/s)"
                              for w, r in result["saturated"].items())
            print(f"  {result['tag']}: {rates}; raw stream {result['baseline']['per_s']:,.0f} events/s", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    rows = []
    for r in results:
        for workload, w in r["saturated"].items():
            rows.append((r["worker_class"], r["workers"], workload, w["runs"], w["events_per_run"], w["events"],
                         w["duration_s"], w["events_per_s"], w["runs_per_s"], r["baseline"]["per_s"],
                         f"{w['events_per_s'] / r['baseline']['per_s']:.1%}",
                         f"{w['spans']:,} ({w['want_spans']:,})", f"{w['scores']:,} ({w['want_scores']:,})",
                         w["duplicates"]))
    report.table("saturated: every run written at once (events = stream entries)",
                 ("worker class", "workers", "workload", "runs", "events/run", "events", "seconds", "events/s",
                  "runs/s", "raw stream events/s", "ratio to raw", "spans (expected)", "scores (expected)",
                  "duplicates"), rows)
    rows = []
    for r in results:
        for workload, w in r["saturated"].items():
            rows.append((r["worker_class"], r["workers"], f"saturated, {workload}", "all at once",
                         w["latency_ms"]["p50"], w["latency_ms"]["p99"], w["latency_ms"]["max"], "-", "-"))
        p = r["paced"]
        rows.append((r["worker_class"], r["workers"], "paced, fixture runs", p["runs_per_s"], p["latency_ms"]["p50"],
                     p["latency_ms"]["p99"], p["latency_ms"]["max"], p["root_latency_ms"]["p50"],
                     p["root_latency_ms"]["p99"]))
    report.table("end-to-end latency, XADD of the run -> span at the receiver (ms)",
                 ("worker class", "workers", "phase", "runs/s offered", "p50", "p99", "max", "root span p50",
                  "root span p99"), rows)
    report.table(f"CPU per event, saturated (ms of CPU per stream entry; the machine has {os.cpu_count()} cores)",
                 ("worker class", "workers", "workload", "workers (incl. work horses, scheduler)", "dispatcher",
                  "receiver", "redis-server", "total"),
                 [(r["worker_class"], r["workers"], workload,
                   *(w["cpu_ms_per_event"][k] for k in ("worker", "dispatcher", "receiver", "redis-server")),
                   sum(w["cpu_ms_per_event"].values())) for r in results for workload, w in r["saturated"].items()])
    report.table("raw stream baseline (one process, the fixture runs' entries, same redis-server)",
                 ("configuration", "events", "XADD events/s (pipelined x100)", "XREADGROUP+XACK events/s",
                  "overall events/s"),
                 [(r["tag"], r["baseline"]["events"], r["baseline"]["xadd_per_s"], r["baseline"]["read_ack_per_s"],
                   r["baseline"]["per_s"]) for r in results])

    for r in results:
        complete = all(w["spans"] == w["want_spans"] and w["scores"] == w["want_scores"] and w["duplicates"] == 0
                       for w in r["saturated"].values())
        complete = complete and r["paced"]["spans"] == r["paced"]["want_spans"] and r["paced"]["duplicates"] == 0
        report.check(f"every span and score exactly once ({r['tag']})", float(complete), "all, once", complete)
    for r in results:
        if r["workers"] == 1 and r["worker_class"] == DEFAULT_WORKER_CLASS:
            for workload, w in r["saturated"].items():
                ratio = f"{w['events_per_s'] / r['baseline']['per_s']:.1%}"
                baseline = f"raw stream {r['baseline']['per_s']:,.0f}"
                if workload == "long runs":
                    report.check(f"events/s, one {DEFAULT_WORKER_CLASS} worker, {workload} "
                                 f"({w['events_per_run']:.0f} events/run)", w["events_per_s"],
                                 f">= {EVENTS_PER_SECOND_TARGET:,.0f}", w["events_per_s"] >= EVENTS_PER_SECOND_TARGET,
                                 baseline=baseline, ratio=ratio)
                else:
                    report.check(f"runs/s, one {DEFAULT_WORKER_CLASS} worker, {workload} "
                                 f"({w['events_per_run']:.0f} events/run, {w['events_per_s']:,.0f} events/s)",
                                 w["runs_per_s"], f">= {RUNS_PER_SECOND_TARGET:,.0f}",
                                 w["runs_per_s"] >= RUNS_PER_SECOND_TARGET, baseline=baseline, ratio=ratio)
    return report.finish(args.json)


if __name__ == "__main__":
    sys.exit(main())
