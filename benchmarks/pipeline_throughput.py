"""Events per second from the Redis stream through dispatcher and RQ workers into a Langfuse receiver.

A Stack-like setup on 127.0.0.1, every process started and stopped by pid: a real redis-server,
the strict local Langfuse receiver in its own process, one `codex-langfuse dispatch` and 1 or 2
`codex-langfuse worker` processes, with the production settings (not the tests' compressed
timings). Runs of Codex lines (each copy with its own run id and Codex thread id) are written
straight onto the stream with pipelined XADD. Workloads:

- 20-event runs: the 0.169.0 full run (reasoning, plan, command, file change, web search,
  message) with three more items: start, 18 lines, end;
- long runs: the same items repeated 16 times in one turn (197 events; real Codex runs print
  hundreds of lines).

Phases, for each configuration (worker class : count):

- workers: the workers are stopped (SIGSTOP) while the dispatcher files every run, then
  continued (SIGCONT); events/s and runs/s from then to the last span or score at the receiver:
  what the workers do, apart from the dispatcher. CPU per event of the workers' process groups
  (time the machine's other load cannot inflate);
- end to end: the runs written while dispatcher and workers run; end-to-end latency = span
  received - XADD of its run (includes the queueing);
- paced: 20-event runs written one at a time at about a third of the end-to-end rate, for the
  latency of an unloaded pipeline.

Every run must arrive exactly as the pure mapping makes it: the number of spans and scores, no
duplicate. Baseline, same run: the pure mapping itself (fold + encode_span of the same runs,
`ingest.fold` and `ingest.otlp`) on one core of this process, the work no worker can avoid; and
raw pipelined XADD + XREADGROUP/XACK of the same entries on the same redis-server.

Targets, one worker of the default class (`simple`, CODEX_LANGFUSE_WORKER_CLASS), workers phase:
>= 10,000 events/s on long runs; >= 300 runs/s on 20-event runs; two workers >= 1.8x one, judged
where the machine has the cores for it (>= 4: two workers, the receiver and redis-server each
busy), shown everywhere.

    .venv/bin/python benchmarks/pipeline_throughput.py [--quick] [--runs K] [--configs simple:1,simple:2]
                                                        [--profile DIR] [--json PATH]
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import _common
from _common import Report, summary

from codex_langfuse.ingest.content import ContentPolicy
from codex_langfuse.ingest.entries import Entry
from codex_langfuse.ingest.fold import FoldContext, fold, new_state
from codex_langfuse.ingest.observations import trace_id
from codex_langfuse.ingest.otlp import encode_span
from codex_langfuse.ingest.pricing import PriceTable
from codex_langfuse.ingest.settings import Settings
from tests.support.langfuse_receiver import ReceiverProcess
from tests.support.stack import FAST, Stack

EVENTS_PER_SECOND_TARGET = 10_000.0
RUNS_PER_SECOND_TARGET = 300.0
SCALING_TARGET = 1.8
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


def long_run_entries(run_id: str, path: Path, copy: int, rounds: int = LONG_RUN_ROUNDS,
                     extra: int = 0) -> list[tuple[str, bytes]]:
    """A long Codex run made of the 0.169.0 full run: its items (reasoning, plan, command, file
    change, web search, message) repeated `rounds` times in one turn, then the first `extra` items
    once more, item ids made unique."""
    data = run_entries(run_id, path, copy)
    start, lines, end = data[0], [d for _, d in data[1:-1]], data[-1]
    head, items, tail = lines[:2], lines[2:-1], lines[-1:]
    rounds_ = [re.sub(rb'"id":"(item_\d+)"', rb'"id":"\1_r' + str(r).encode() + b'"', line)
               for r in range(rounds) for line in items]
    more = [re.sub(rb'"id":"(item_\d+)"', rb'"id":"\1_x"', line) for line in items[:extra]]
    return [start] + [("line", line) for line in head + rounds_ + more + tail] + [end]


def short_run_entries(run_id: str, path: Path, copy: int) -> list[tuple[str, bytes]]:
    """A 20-event run: the 0.169.0 full run (17 entries) with its first three items once more."""
    return long_run_entries(run_id, path, copy, rounds=1, extra=3)


WORKLOADS = {"20-event runs": short_run_entries, "long runs": long_run_entries}
SHORT, LONG = WORKLOADS


def expected_counts(path: Path, make=run_entries) -> tuple[int, int]:
    """(spans, scores) the pure mapping makes of one run of `path`."""
    data = make("bench-expected", path, 0)
    entries = [Entry(run="bench-expected", seq=i, ts=1_790_000_000_000_000 + i * 1000, kind=k, data=d.decode())
               for i, (k, d) in enumerate(data)]
    result = fold(new_state("bench-expected"), entries, FoldContext(prices=PriceTable.load()))
    return len(result.observations), len(result.scores)


def mapping_rate(batches: list[tuple[str, list[tuple[str, bytes]]]]) -> float:
    """Events per CPU second of the pure mapping (fold + encode_span) of these runs in this process,
    the best of three passes."""
    context, policy = FoldContext(prices=PriceTable.load()), ContentPolicy()
    runs = [[Entry(run=run_id, seq=i, ts=1_790_000_000_000_000 + i * 1000, kind=k, data=d.decode())
             for i, (k, d) in enumerate(data)] for run_id, data in batches]
    events = sum(len(run) for run in runs)
    best = 0.0
    for _ in range(3):
        cpu = time.process_time()
        for run in runs:
            for observation in fold(new_state(run[0].run), run, context).observations:
                encode_span(observation, policy)
        best = max(best, events / max(time.process_time() - cpu, 1e-9))
    return best


def stream_filed(client, settings: Settings, keys) -> bool:
    """The dispatcher read and acknowledged every entry on the stream."""
    try:
        group = next((g for g in client.xinfo_groups(settings.stream) if g["name"].decode() == keys.group), None)
    except Exception:
        return False
    return group is not None and group.get("lag") in (0, None) and not group["pending"]


def signal_groups(processes, sig: int) -> None:
    for process in processes:
        os.killpg(process.pid, sig)


def measure(stack: Stack, settings: Settings, receiver, dispatcher, worker_procs, batches, want,
            sampler: _common.Sampler, label: str, workers_only: bool) -> dict:
    """Write every run of `batches` at once; measure until the last of them is at the receiver.
    `workers_only`: the workers are stopped until the dispatcher filed them all."""
    client = stack.redis
    runs = len(batches)
    events = sum(len(data) for _, data in batches)
    pids = {"redis-server": stack.redis_server.proc.pid, "receiver": receiver.pid}

    def cpu_now() -> dict[str, float]:
        return {"worker": sum(group_cpu_seconds(p.pid) for p in worker_procs),
                "dispatcher": group_cpu_seconds(dispatcher.pid),
                **{name: _common.cpu_seconds(pid) for name, pid in pids.items()}}

    def sample() -> None:
        for i, process in enumerate(worker_procs):
            sampler.start(f"{label}-worker{i}", process.pid)
        if not workers_only:
            sampler.start(f"{label}-dispatcher", dispatcher.pid)

    if workers_only:
        signal_groups(worker_procs, signal.SIGSTOP)
    else:
        sample()
    cpu_before = cpu_now()
    xadd_at: dict[str, float] = {}
    started = time.time()
    for run_id, data in batches:
        xadd_run(client, settings.stream, run_id, data)
        xadd_at[trace_id(run_id)] = time.time()
    if workers_only:
        wait_for(lambda: stream_filed(client, settings, stack.keys), f"the dispatcher to file {runs} runs")
        sample()
        cpu_before = cpu_now()
        started = time.time()
        signal_groups(worker_procs, signal.SIGCONT)
    wait_for(lambda: pipeline_drained(stack, settings), f"{runs} runs to reach the receiver")
    cpu = {name: value - cpu_before[name] for name, value in cpu_now().items()}
    sampler.stop()
    spans = [s for s in receiver.spans() if s.trace_id in xadd_at]
    scores = [s for s in receiver.score_writes() if s.trace_id in xadd_at]
    last = max([s.received_at for s in spans] + [s.received_at for s in scores])
    duration = last - started
    client.close()
    return {
        "runs": runs, "events": events, "events_per_run": events / runs,
        "duration_s": duration, "events_per_s": events / duration, "runs_per_s": runs / duration,
        "latency_ms": summary((s.received_at - xadd_at[s.trace_id]) * 1000 for s in spans),
        "spans": len(spans), "want_spans": want[0], "scores": len(scores), "want_scores": want[1],
        "duplicates": sum(n - 1 for n in Counter(s.span_id for s in spans).values() if n > 1),
        "cpu_ms_per_event": {name: seconds * 1000 / events for name, seconds in cpu.items()},
    }


def run_configuration(workdir: Path, worker_class: str, workers: int, runs: int, paced_seconds: float,
                      expected: dict[str, tuple[int, int]], receiver_as_is: bool, sampler: _common.Sampler) -> dict:
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

        result: dict = {"tag": tag, "worker_class": worker_class, "workers": workers, "workers_phase": {},
                        "end_to_end": {}}
        for workload, make in WORKLOADS.items():
            count = runs if workload == SHORT else max(1, runs // 10)
            want = (count * expected[workload][0], count * expected[workload][1])
            for phase, workers_only in (("workers_phase", True), ("end_to_end", False)):
                plan = [f"bench-{tag}-{phase[0]}-{workload.split()[0]}-{i}" for i in range(count)]
                batches = [(run_id, make(run_id, LONG_RUN_SOURCE, i)) for i, run_id in enumerate(plan)]
                result[phase][workload] = measure(stack, settings, receiver, dispatcher, worker_procs, batches, want,
                                                  sampler, f"{tag}-{phase}-{workload.split()[0]}", workers_only)
                if workload == SHORT and workers_only:
                    result["baseline"] = raw_stream_baseline(client, batches)
                    result["mapping"] = {}
                result["mapping"][workload] = mapping_rate(batches[:200])

        # ---- paced ----
        paced_rate = max(1.0, result["end_to_end"][SHORT]["runs_per_s"] / 3)
        paced_xadd: dict[str, float] = {}
        started = time.time()
        i = 0
        while time.time() - started < paced_seconds:
            run_id = f"bench-{tag}-paced-{i}"
            xadd_run(client, settings.stream, run_id, short_run_entries(run_id, LONG_RUN_SOURCE, runs + i))
            paced_xadd[trace_id(run_id)] = time.time()
            i += 1
            time.sleep(max(0.0, started + i / paced_rate - time.time()))
        wait_for(lambda: pipeline_drained(stack, settings), "the paced runs to reach the receiver")
        paced_spans = [s for s in receiver.spans() if s.trace_id in paced_xadd]
        root_latencies = [(s.received_at - paced_xadd[s.trace_id]) * 1000 for s in paced_spans if s.parent_span_id is None]
        result["paced"] = {
            "runs": i, "runs_per_s": paced_rate,
            "latency_ms": summary((s.received_at - paced_xadd[s.trace_id]) * 1000 for s in paced_spans),
            "root_latency_ms": summary(root_latencies),
            "spans": len(paced_spans), "want_spans": i * expected[SHORT][0],
            "duplicates": sum(n - 1 for n in Counter(s.span_id for s in paced_spans).values() if n > 1),
        }
        client.close()
        return result
    finally:
        stack.close()


def main() -> int:
    args_parser = _common.parser(__doc__.splitlines()[0])
    args_parser.add_argument("--runs", type=int, help="20-event runs per phase (default 1,000; 200 with --quick); "
                                                      "long runs: a tenth of that")
    args_parser.add_argument("--receiver-as-is", action="store_true",
                             help="do not set TCP_NODELAY on the receiver's connections (see _NODELAY_LAUNCHER)")
    args_parser.add_argument("--configs", default="simple:1,simple:2",
                             help="worker class:count pairs (default %(default)s; forking:N for the forking class)")
    args_parser.add_argument("--profile", metavar="DIR",
                             help="sample the workers (and the dispatcher) with py-spy during each phase")
    args = args_parser.parse_args()
    _common.require_redis_server()
    runs = args.runs or (200 if args.quick else 1000)
    paced_seconds = 3.0 if args.quick else 10.0
    configs = [(c.split(":")[0], int(c.split(":")[1])) for c in args.configs.split(",")]
    report = Report("pipeline_throughput", _common.command_line())
    if args.receiver_as_is:
        report.note("receiver as is: ~40 ms Nagle/delayed-ACK stall per HTTP answer (not Langfuse's behaviour)")
    else:
        report.note("receiver with TCP_NODELAY on its connections, as Langfuse's Node.js server has by default")
    expected = {workload: expected_counts(LONG_RUN_SOURCE, make) for workload, make in WORKLOADS.items()}
    print(f"pipeline_throughput: {runs:,} 20-event runs and {max(1, runs // 10):,} long runs "
          f"({len(long_run_entries('x', LONG_RUN_SOURCE, 0))} events each) per phase")

    workdir = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    results = []
    try:
        for worker_class, workers in configs:
            result = run_configuration(workdir, worker_class, workers, runs, paced_seconds, expected,
                                       args.receiver_as_is, _common.Sampler(args.profile))
            results.append(result)
            rates = ", ".join(f"{w}: {r['events_per_s']:,.0f} events/s ({r['runs_per_s']:.1f} runs/s)"
                              for w, r in result["workers_phase"].items())
            print(f"  {result['tag']}, workers phase: {rates}", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    rows = []
    for r in results:
        for workload, w in r["workers_phase"].items():
            per_cpu = 1000 / w["cpu_ms_per_event"]["worker"] if w["cpu_ms_per_event"]["worker"] else float("nan")
            rows.append((r["worker_class"], r["workers"], workload, w["runs"], w["events_per_run"], w["duration_s"],
                         w["events_per_s"], w["runs_per_s"], w["cpu_ms_per_event"]["worker"], per_cpu,
                         r["mapping"][workload], f"{w['events_per_s'] / r['mapping'][workload]:.1%}",
                         f"{w['spans']:,} ({w['want_spans']:,})", f"{w['scores']:,} ({w['want_scores']:,})",
                         w["duplicates"]))
    report.table("workers phase: the runs filed first, then the workers continued (events = stream entries)",
                 ("worker class", "workers", "workload", "runs", "events/run", "seconds", "events/s", "runs/s",
                  "worker CPU ms/event", "events per worker CPU s", "pure mapping events/CPU s", "ratio to mapping",
                  "spans (expected)", "scores (expected)", "duplicates"), rows)
    rows = []
    for r in results:
        for workload, w in r["end_to_end"].items():
            rows.append((r["worker_class"], r["workers"], workload, w["runs"], w["events_per_s"], w["runs_per_s"],
                         f"{w['events_per_s'] / r['baseline']['per_s']:.1%}", w["latency_ms"]["p50"],
                         w["latency_ms"]["p99"], *(w["cpu_ms_per_event"][k] for k in
                                                   ("worker", "dispatcher", "receiver", "redis-server")),
                         sum(w["cpu_ms_per_event"].values()), w["duplicates"]))
    report.table(f"end to end: runs written while everything runs (CPU ms per event; {os.cpu_count()} cores)",
                 ("worker class", "workers", "workload", "runs", "events/s", "runs/s", "ratio to raw stream",
                  "XADD->span p50 ms", "p99 ms", "workers CPU", "dispatcher CPU", "receiver CPU", "redis CPU",
                  "total CPU", "duplicates"), rows)
    report.table("paced 20-event runs: XADD of the run -> span at the receiver (ms)",
                 ("worker class", "workers", "runs/s offered", "p50", "p99", "max", "root span p50", "root span p99"),
                 [(r["worker_class"], r["workers"], r["paced"]["runs_per_s"], r["paced"]["latency_ms"]["p50"],
                   r["paced"]["latency_ms"]["p99"], r["paced"]["latency_ms"]["max"],
                   r["paced"]["root_latency_ms"]["p50"], r["paced"]["root_latency_ms"]["p99"]) for r in results])
    report.table("raw stream baseline (one process, the 20-event runs' entries, same redis-server)",
                 ("configuration", "events", "XADD events/s (pipelined x100)", "XREADGROUP+XACK events/s",
                  "overall events/s"),
                 [(r["tag"], r["baseline"]["events"], r["baseline"]["xadd_per_s"], r["baseline"]["read_ack_per_s"],
                   r["baseline"]["per_s"]) for r in results])

    for r in results:
        complete = all(w["spans"] == w["want_spans"] and w["scores"] == w["want_scores"] and w["duplicates"] == 0
                       for phase in ("workers_phase", "end_to_end") for w in r[phase].values())
        complete = complete and r["paced"]["spans"] == r["paced"]["want_spans"] and r["paced"]["duplicates"] == 0
        report.check(f"every span and score exactly once ({r['tag']})", float(complete), "all, once", complete)
    one = next((r for r in results if r["workers"] == 1 and r["worker_class"] == DEFAULT_WORKER_CLASS), None)
    two = next((r for r in results if r["workers"] == 2 and r["worker_class"] == DEFAULT_WORKER_CLASS), None)
    if one is not None:
        w = one["workers_phase"][LONG]
        report.check(f"events/s, one {DEFAULT_WORKER_CLASS} worker, long runs ({w['events_per_run']:.0f} events/run)",
                     w["events_per_s"], f">= {EVENTS_PER_SECOND_TARGET:,.0f}",
                     w["events_per_s"] >= EVENTS_PER_SECOND_TARGET,
                     baseline=f"pure mapping {one['mapping'][LONG]:,.0f}/CPU s",
                     ratio=f"{w['events_per_s'] / one['mapping'][LONG]:.1%}")
        w = one["workers_phase"][SHORT]
        report.check(f"runs/s, one {DEFAULT_WORKER_CLASS} worker, 20-event runs ({w['events_per_s']:,.0f} events/s)",
                     w["runs_per_s"], f">= {RUNS_PER_SECOND_TARGET:,.0f}", w["runs_per_s"] >= RUNS_PER_SECOND_TARGET,
                     baseline=f"pure mapping {one['mapping'][SHORT] / w['events_per_run']:,.0f} runs/CPU s",
                     ratio=f"{w['events_per_s'] / one['mapping'][SHORT]:.1%}")
    if one is not None and two is not None:
        cores = os.cpu_count() or 1
        for workload in WORKLOADS:
            scale = two["workers_phase"][workload]["events_per_s"] / one["workers_phase"][workload]["events_per_s"]
            if cores >= 4:
                report.check(f"two workers / one, {workload}", scale, f">= {SCALING_TARGET}x", scale >= SCALING_TARGET,
                             baseline="one worker", ratio=f"{scale:.2f}")
            else:
                report.note(f"two workers / one, {workload}: {scale:.2f}x (not judged: {cores} cores, where two "
                            f"workers, the receiver and redis-server share them)")
    return report.finish(args.json)


if __name__ == "__main__":
    sys.exit(main())
