"""How live the traces are: from the line that completes an item to its observation at the receiver.

A Stack-like setup on 127.0.0.1, every process started and stopped by pid: a real redis-server,
the strict local Langfuse receiver in its own process (TCP_NODELAY, as Langfuse's server), one
`codex-langfuse dispatch` and one `codex-langfuse worker` (default class) with the production
settings. This process plays the producers: every 10 ms it writes the lines due (pipelined XADD,
`ts` = the moment of writing, as a producer stamps a line when it reads it), in two scenarios:

- one run at 1,000 lines/s;
- 100 runs at 10 lines/s each (each run one line every 100 ms, the runs staggered).

The lines are the 0.169.0 full run's items (reasoning, plan, command, file change, web search,
message) repeated with fresh item ids, so about 2 in 3 lines complete an observation. An
observation's completion line is the entry after which the pure mapping emits it (found by
folding each run entry by entry); its latency is the receiver's arrival time minus the moment
that line was written, for every span of the scenario (the roots and turns end with the runs).

Baseline, same run, same receiver: the Langfuse SDK in this process (`Langfuse()`, default
settings: flush_at 512, flush_interval 5 s), one observation started and ended on each completion
line at the same pace; its latency is measured the same way (arrival - end).

Targets: p50 <= 250 ms and p99 <= 1 s in both scenarios.

    .venv/bin/python benchmarks/live_latency.py [--quick] [--seconds S] [--json PATH]
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import _common
from _common import Report, summary

from codex_langfuse.ingest.entries import Entry
from codex_langfuse.ingest.fold import Folder, FoldContext, new_state
from codex_langfuse.ingest.observations import trace_id
from codex_langfuse.ingest.pricing import PriceTable
from pipeline_throughput import (
    LONG_RUN_SOURCE, PRODUCTION, NoDelayReceiverProcess, group_cpu_seconds, meta_for, pipeline_drained, wait_for,
)
from tests.support.stack import Stack

P50_TARGET_MS = 250.0
P99_TARGET_MS = 1000.0
TICK_S = 0.010
SCENARIOS = {"one run at 1,000 lines/s": (1, 1000.0), "100 runs at 10 lines/s each": (100, 10.0)}


def run_lines(copy: int, count: int) -> list[bytes]:
    """`count` lines of a Codex run: its head, the full run's items repeated with fresh ids, and
    the turn's end as the last line."""
    lines = [line for line in LONG_RUN_SOURCE.read_bytes().splitlines() if line]
    lines = [re.sub(rb'("thread_id":"[^"]+)"', rb'\1-live' + str(copy).encode() + b'"', line) for line in lines]
    head, items, tail = lines[:2], lines[2:-1], lines[-1:]
    body: list[bytes] = []
    round_ = 0
    while len(body) < count - len(head) - len(tail):
        body += [re.sub(rb'"id":"(item_\d+)"', rb'"id":"\1_r' + str(round_).encode() + b'"', line) for line in items]
        round_ += 1
    return head + body[:max(0, count - len(head) - len(tail))] + tail


def completion_seqs(run_id: str, lines: list[bytes]) -> dict[str, int]:
    """Observation id -> the seq of the entry after which the pure mapping emits it, for a run of
    these lines (start, lines, end)."""
    data = [("start", json.dumps(meta_for(LONG_RUN_SOURCE)))] + [("line", line.decode()) for line in lines]
    data.append(("end", json.dumps({"exit_code": 0, "signal": None, "reason": "exited"})))
    folder = Folder(new_state(run_id), FoldContext(prices=PriceTable.load()))
    emitted: dict[str, int] = {}
    for seq, (kind, payload) in enumerate(data):
        before = len(folder.result.observations)
        folder.apply(Entry(run=run_id, seq=seq, ts=1_790_000_000_000_000 + seq, kind=kind, data=payload))
        emitted.update((o.id, seq) for o in folder.result.observations[before:])
    return emitted


def completes(line: bytes) -> bool:
    return b'"type":"item.completed"' in line or b'"type":"turn.completed"' in line


class Pacer:
    """Calls `write(batch)` every TICK_S with the (run index, line index) due since the last tick."""

    def __init__(self, runs: int, per_run_rate: float, seconds: float):
        self.runs, self.rate, self.seconds = runs, per_run_rate, seconds
        self.lines_per_run = int(per_run_rate * seconds)

    def due(self, elapsed: float) -> list[tuple[int, int]]:
        """Every (run, line) whose time is <= elapsed: run r writes line i at (i + r / runs) / rate."""
        out = []
        for run in range(self.runs):
            offset = run / self.runs / self.rate
            upto = min(self.lines_per_run, int((elapsed - offset) * self.rate) + 1 if elapsed >= offset else 0)
            out.append((run, upto))
        return out

    def drive(self, write) -> None:
        sent = [0] * self.runs
        started = time.perf_counter()
        while True:
            elapsed = time.perf_counter() - started
            batch = []
            for run, upto in self.due(elapsed):
                batch += [(run, i) for i in range(sent[run], upto)]
                sent[run] = max(sent[run], upto)
            if batch:
                write(batch)
            if all(s >= self.lines_per_run for s in sent):
                return
            time.sleep(max(0.0, TICK_S - (time.perf_counter() - started - elapsed)))


def pipeline_scenario(stack: Stack, tag: str, runs: int, rate: float, seconds: float, worker_pid: int) -> dict:
    settings = stack.settings()
    client = stack.redis
    pacer = Pacer(runs, rate, seconds)
    run_ids = [f"live-{tag}-{r}" for r in range(runs)]
    lines = [run_lines(r, pacer.lines_per_run) for r in range(runs)]
    written: dict[tuple[str, int], float] = {}  # (trace id, seq) -> when the entry was written
    for r, run_id in enumerate(run_ids):  # the start entries, before the clock
        written[(trace_id(run_id), 0)] = time.time()
        client.xadd(settings.stream, {"v": "1", "run": run_id, "seq": "0", "ts": str(int(time.time() * 1e6)),
                                      "kind": "start", "data": json.dumps(meta_for(LONG_RUN_SOURCE))})

    def write(batch: list[tuple[int, int]]) -> None:
        now = time.time()
        ts = str(int(now * 1e6))
        with client.pipeline(transaction=False) as pipe:
            for run, i in batch:
                written[(trace_id(run_ids[run]), i + 1)] = now
                pipe.xadd(settings.stream, {"v": "1", "run": run_ids[run], "seq": str(i + 1), "ts": ts, "kind": "line",
                                            "data": lines[run][i]})
            pipe.execute()

    cpu = group_cpu_seconds(worker_pid)
    started = time.time()
    pacer.drive(write)
    ended = time.time()
    for r, run_id in enumerate(run_ids):
        written[(trace_id(run_id), pacer.lines_per_run + 1)] = time.time()
        client.xadd(settings.stream, {"v": "1", "run": run_id, "seq": str(pacer.lines_per_run + 1),
                                      "ts": str(int(time.time() * 1e6)), "kind": "end",
                                      "data": json.dumps({"exit_code": 0, "signal": None, "reason": "exited"})})
    wait_for(lambda: pipeline_drained(stack, settings), f"the {tag} runs to reach the receiver", 300)
    cpu = group_cpu_seconds(worker_pid) - cpu
    traces = {trace_id(run_id) for run_id in run_ids}
    spans = [s for s in stack.receiver.spans() if s.trace_id in traces]
    completed_by = {(trace_id(run_id), span_id): seq for run_id, run in zip(run_ids, lines)
                    for span_id, seq in completion_seqs(run_id, run).items()}
    latencies = [(s.received_at - written[(s.trace_id, completed_by[(s.trace_id, s.span_id)])]) * 1000
                 for s in spans if (s.trace_id, s.span_id) in completed_by]
    want = len(completed_by)
    client.close()
    return {"lines": runs * pacer.lines_per_run, "lines_per_s": runs * pacer.lines_per_run / (ended - started),
            "spans": len(spans), "want_spans": want,
            "duplicates": sum(n - 1 for n in Counter(s.span_id for s in spans).values() if n > 1),
            "latency_ms": summary(latencies), "worker_cpu_share": cpu / (time.time() - started)}


def sdk_scenario(receiver, tag: str, runs: int, rate: float, seconds: float) -> dict:
    """The same pace through the Langfuse SDK in this process: one observation per completion line."""
    from langfuse import Langfuse

    langfuse = Langfuse(public_key=receiver.public_key, secret_key=receiver.secret_key, base_url=receiver.base_url)
    pacer = Pacer(runs, rate, seconds)
    lines = [run_lines(r, pacer.lines_per_run) for r in range(runs)]
    ids: set[str] = set()
    lock = threading.Lock()

    def write(batch: list[tuple[int, int]]) -> None:
        for run, i in batch:
            if completes(lines[run][i]):
                observation = langfuse.start_observation(name=f"sdk-{tag}-{run}", as_type="tool")
                observation.end()
                with lock:
                    ids.add(observation.id)

    started = time.time()
    pacer.drive(write)
    ended = time.time()
    wait_for(lambda: len({s.span_id for s in receiver.spans()} & ids) == len(ids), "the SDK's spans", 120)
    spans = [s for s in receiver.spans() if s.span_id in ids]
    langfuse.shutdown()
    latencies = [(s.received_at - s.end_time_unix_nano / 1e9) * 1000 for s in spans]
    return {"lines": runs * pacer.lines_per_run, "lines_per_s": runs * pacer.lines_per_run / (ended - started),
            "spans": len(spans), "latency_ms": summary(latencies)}


def main() -> int:
    args_parser = _common.parser(__doc__.splitlines()[0])
    args_parser.add_argument("--seconds", type=float, help="seconds of writing per scenario (default 20; 4 with --quick)")
    args = args_parser.parse_args()
    _common.require_redis_server()
    seconds = args.seconds or (4.0 if args.quick else 20.0)
    report = Report("live_latency", _common.command_line())
    workdir = Path(tempfile.mkdtemp(prefix="bench-live-"))
    receiver = NoDelayReceiverProcess().start()
    stack = Stack(workdir, receiver=receiver, **PRODUCTION)
    results: dict[str, dict] = {}
    try:
        client = stack.redis
        stack.start("dispatch", "dispatcher")
        worker = stack.start("worker", "worker")
        wait_for(lambda: client.scard("rq:workers") == 1, "the worker to register", 60)
        wait_for(lambda: client.exists(stack.settings().stream), "the dispatcher's consumer group", 60)
        time.sleep(0.5)
        for name, (runs, rate) in SCENARIOS.items():
            tag = "one" if runs == 1 else "many"
            results[name] = {"pipeline": pipeline_scenario(stack, tag, runs, rate, seconds, worker.pid)}
            results[name]["sdk"] = sdk_scenario(receiver, tag, runs, rate, seconds)
            p, s = results[name]["pipeline"], results[name]["sdk"]
            print(f"  {name}: pipeline p50 {p['latency_ms']['p50']:.0f} ms p99 {p['latency_ms']['p99']:.0f} ms; "
                  f"SDK p50 {s['latency_ms']['p50']:.0f} ms p99 {s['latency_ms']['p99']:.0f} ms", flush=True)
        client.close()
    finally:
        stack.close()
        shutil.rmtree(workdir, ignore_errors=True)

    rows = []
    for name, r in results.items():
        for who, label in (("pipeline", "codex-langfuse (stream -> dispatcher -> worker)"),
                           ("sdk", "Langfuse SDK in-process (baseline)")):
            m = r[who]
            rows.append((name, label, m["lines_per_s"], m["spans"], m["latency_ms"]["p50"], m["latency_ms"]["p99"],
                         m["latency_ms"]["max"], f"{m['worker_cpu_share']:.0%}" if "worker_cpu_share" in m else "-"))
    report.table("completion line -> observation at the receiver (ms)",
                 ("scenario", "path", "lines/s written", "spans", "p50", "p99", "max", "worker CPU"), rows)
    for name, r in results.items():
        p, s = r["pipeline"], r["sdk"]
        complete = p["duplicates"] == 0 and p["spans"] == p["want_spans"]
        report.check(f"every span once ({name})", float(complete), "all, once", complete)
        for q, target in (("p50", P50_TARGET_MS), ("p99", P99_TARGET_MS)):
            value, base = p["latency_ms"][q], s["latency_ms"][q]
            report.check(f"{q} ms, {name}", value, f"<= {target:,.0f}", value <= target,
                         baseline=f"Langfuse SDK {base:,.0f}", ratio=f"{value / base:.2f}")
    return report.finish(args.json)


if __name__ == "__main__":
    sys.exit(main())
