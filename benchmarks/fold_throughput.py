"""The pure mapping on one core: Codex events -> observations (ingest.fold.fold) -> OTLP spans
(ingest.otlp.encode_span, with the worker's default content policy: redaction on), against the
baseline of only `json.loads` of the same lines, in the same run.

Workloads: the `codex exec --json` fixtures, each a run of its own (start, lines, end); and a long
run (the 0.169.0 full run's items repeated 16 times in one turn, as pipeline_throughput uses).
Each run is folded from a new state in one call, as a worker does with a whole backlog. Events =
entries of a run (start, lines, end). The Entry objects are built before the clock starts; the
table also shows the rate with `Entry.unpack` (what a worker does on reading the run log) and
with `Span.encode` of the spans (encoded once: what it stores in the outbox and sends), for
information.

Rates are per CPU second of this process (time.process_time: what one core does, whatever else
runs on a shared machine), with the wall-clock rate beside them.

Target: fold + encode_span >= 20,000 events/s.

    .venv/bin/python benchmarks/fold_throughput.py [--quick] [--seconds S] [--json PATH]
    .venv/bin/python benchmarks/fold_throughput.py --profile    # cProfile of fold + encode_span
"""

from __future__ import annotations

import cProfile
import gc
import json
import pstats
import statistics
import sys
import time

import _common
from _common import EXEC_FIXTURES, Report

from codex_langfuse.ingest.content import ContentPolicy
from codex_langfuse.ingest.entries import Entry
from codex_langfuse.ingest.fold import FoldContext, fold, new_state
from codex_langfuse.ingest.items import Span
from codex_langfuse.ingest.otlp import encode_span
from codex_langfuse.ingest.pricing import PriceTable
from pipeline_throughput import LONG_RUN_SOURCE, long_run_entries, run_entries

EVENTS_PER_SECOND_TARGET = 20_000.0
TS0 = 1_790_000_000_000_000


def build_runs(workload: str, copies: int) -> list[list[Entry]]:
    runs = []
    for copy in range(copies):
        sources = EXEC_FIXTURES if workload == "fixture runs" else [LONG_RUN_SOURCE]
        make = run_entries if workload == "fixture runs" else long_run_entries
        for path in sources:
            run_id = f"bench-fold-{path.stem}-{copy}"
            runs.append([Entry(run=run_id, seq=seq, ts=TS0 + seq * 1000, kind=kind, data=data.decode())
                         for seq, (kind, data) in enumerate(make(run_id, path, copy))])
    return runs


def rate(work, runs: list[list[Entry]], seconds: float) -> tuple[float, float]:
    """Events/s of `work(run)` over all runs, passes repeated for about `seconds`: (median per
    CPU second of this process, median per wall-clock second). CPU time is the figure "on one
    core" that other processes on a shared machine cannot lower; wall time shows their effect."""
    events = sum(len(run) for run in runs)
    cpu_rates, wall_rates = [], []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(cpu_rates) < 3:
        wall, cpu = time.perf_counter(), time.process_time()
        for run in runs:
            work(run)
        cpu_rates.append(events / max(time.process_time() - cpu, 1e-9))
        wall_rates.append(events / (time.perf_counter() - wall))
    return statistics.median(cpu_rates), statistics.median(wall_rates)


def main() -> int:
    args_parser = _common.parser(__doc__.splitlines()[0])
    args_parser.add_argument("--seconds", type=float, help="seconds per measurement (default 5; 1 with --quick)")
    args_parser.add_argument("--profile", action="store_true", help="print a cProfile of fold + encode_span and exit")
    args = args_parser.parse_args()
    seconds = args.seconds or (1.0 if args.quick else 5.0)
    context = FoldContext(prices=PriceTable.load())
    policy = ContentPolicy()  # the worker's default: capture on, redaction on, 32k chars per field

    def json_only(run: list[Entry]) -> None:
        for entry in run:
            json.loads(entry.data)

    def fold_encode(run: list[Entry]) -> None:
        result = fold(new_state(run[0].run), run, context)
        for observation in result.observations:
            encode_span(observation, policy)

    def fold_only(run: list[Entry]) -> None:
        fold(new_state(run[0].run), run, context)

    def worker_path(run: list[Entry]) -> None:
        packed = [(entry.seq, entry.pack()) for entry in run]
        entries = [Entry.unpack(run[0].run, seq, value) for seq, value in packed]
        result = fold(new_state(run[0].run), entries, context)
        for observation in result.observations:
            Span.encode(encode_span(observation, policy))

    workloads = {"fixture runs": build_runs("fixture runs", 5), "long runs": build_runs("long runs", 5)}
    if args.profile:
        profile = cProfile.Profile()
        for _ in range(3):
            for runs in workloads.values():
                profile.runcall(lambda: [fold_encode(run) for run in runs])
        pstats.Stats(profile).sort_stats("tottime").print_stats(30)
        return 0

    report = Report("fold_throughput", _common.command_line())
    gc.collect()
    results = {}
    for workload, runs in workloads.items():
        events = sum(len(r) for r in runs)
        spans = sum(len(fold(new_state(r[0].run), r, context).observations) for r in runs)
        measured = {name: rate(work, runs, seconds) for name, work in (
            ("json.loads", json_only), ("fold", fold_only), ("fold + encode_span", fold_encode),
            ("Entry.unpack + fold + encode_span + Span.encode", worker_path))}
        results[workload] = {"events": events, "runs": len(runs), "spans": spans, "rates": measured}
        print(f"  {workload}: " + ", ".join(f"{k} {v[0]:,.0f}/s" for k, v in measured.items()), flush=True)

    rows = []
    for workload, r in results.items():
        base = r["rates"]["json.loads"][0]
        for name, (per_cpu, per_wall) in r["rates"].items():
            rows.append((workload, name, per_cpu, 1e6 / per_cpu, per_wall, f"{per_cpu / base:.3f}"))
    report.table(f"events/s on one core (medians of repeated passes over {seconds:.0f} s)",
                 ("workload", "work", "events per CPU second", "CPU us/event", "events per wall second",
                  "ratio to json.loads"), rows)
    report.table("workloads", ("workload", "runs", "events", "spans", "events per run", "spans per event"),
                 [(w, r["runs"], r["events"], r["spans"], r["events"] / r["runs"], r["spans"] / r["events"])
                  for w, r in results.items()])
    for workload, r in results.items():
        value = r["rates"]["fold + encode_span"][0]
        base = r["rates"]["json.loads"][0]
        report.check(f"fold + encode_span events/s, {workload}", value, f">= {EVENTS_PER_SECOND_TARGET:,.0f}",
                     value >= EVENTS_PER_SECOND_TARGET, baseline=f"json.loads {base:,.0f}/s",
                     ratio=f"{value / base:.3f}")
    return report.finish(args.json)


if __name__ == "__main__":
    sys.exit(main())
