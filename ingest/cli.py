"""The back-end commands of `codex-langfuse` (`run` and `tee` live in `producer.cli`)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from typing import Any

COMMANDS = ("dispatch", "worker", "replay", "status", "score", "show", "demo", "verify")


def _duration(text: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90, 90s, 15m, 2h, 7d)")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="codex-langfuse")
    sub = parser.add_subparsers(dest="command", required=True)

    dispatch = sub.add_parser("dispatch", help="read the event stream and queue jobs (run one or more)")
    dispatch.add_argument("--once", action="store_true", help="one read and one sweep, then exit")

    worker = sub.add_parser("worker", help="an RQ worker that folds runs and sends them (run any number)")
    worker.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    worker.add_argument("--name", help="worker name (default: RQ's)")

    replay = sub.add_parser("replay", help="send dead letters again (never twice)")
    replay.add_argument("--run-id")
    replay.add_argument("--reason", help="only letters of this reason class (see `status`)")
    replay.add_argument("--older-than", type=_duration, help="last failure older than (e.g. 1h)")
    replay.add_argument("--newer-than", type=_duration, help="last failure newer than (e.g. 1d)")
    replay.add_argument("--limit", type=int, help="at most this many letters")
    replay.add_argument("--dry-run", action="store_true", help="count what would be sent; send nothing")
    replay.add_argument("--json", action="store_true", help="print the counts as JSON")

    status = sub.add_parser("status", help="stream, queue, workers, retries and dead letters")
    status.add_argument("--json", action="store_true")

    score = sub.add_parser("score", help="attach a score to a run's trace (CI result, review)")
    score.add_argument("run_id")
    score.add_argument("name")
    score.add_argument("value")
    score.add_argument("--comment")
    score.add_argument("--data-type", choices=["NUMERIC", "BOOLEAN", "CATEGORICAL", "TEXT"])

    show = sub.add_parser("show", help="print a run's trace from the local sink")
    show.add_argument("run_id", help="run id or trace id")
    show.add_argument("--json", action="store_true", help="the spans as stored")

    demo = sub.add_parser("demo", help="end to end on a recorded Codex run, with a Redis of its own")
    demo.add_argument("--fixture", help="a Codex JSONL file to feed (default: a recorded 0.169.0 run)")
    demo.add_argument("--model", default="gpt-5-codex", help="model to price the recorded run with")

    verify = sub.add_parser("verify", help="compare Codex's session history with what Langfuse holds, turn by "
                                           "turn; re-send what is missing with the same ids")
    verify.add_argument("paths", nargs="*", metavar="PATH",
                        help="rollout files or directories (default: $CODEX_HOME/sessions and archived_sessions)")
    verify.add_argument("--dry-run", action="store_true", help="report only; re-send nothing")
    verify.add_argument("--ledger-only", action="store_true", help="ask the ledger only, not Langfuse's API")
    verify.add_argument("--idle-timeout", type=_duration, default=None, metavar="SECONDS",
                        help="a turn silent this long is over (default: CODEX_LANGFUSE_IDLE_TIMEOUT)")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.add_argument("--state", default=None, metavar="FILE",
                        help="the rollout state of `import` (default: CODEX_LANGFUSE_ROLLOUT_STATE or "
                             "$XDG_STATE_HOME/codex-langfuse/rollouts.sqlite3)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=os.environ.get("CODEX_LANGFUSE_LOG_LEVEL", "INFO").upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from codex_langfuse.ingest.settings import get_settings

    settings = get_settings()
    handler = globals()[f"cmd_{args.command}"]
    return int(handler(settings, args) or 0)


def cmd_dispatch(settings: Any, args: argparse.Namespace) -> int:
    from codex_langfuse.ingest.dispatcher import Dispatcher

    dispatcher = Dispatcher(settings)
    if args.once:
        dispatcher.ensure_group()
        dispatcher.sweep()
        dispatcher.run_once(block_ms=100)
        return 0
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    dispatcher.run(stop)
    return 0


def cmd_worker(settings: Any, args: argparse.Namespace) -> int:
    from codex_langfuse.ingest.worker import run_worker

    run_worker(settings, burst=args.burst, name=args.name)
    return 0


def cmd_replay(settings: Any, args: argparse.Namespace) -> int:
    from codex_langfuse.ingest.context import WorkerContext
    from codex_langfuse.ingest.replay import replay, terminal_progress

    from codex_langfuse.ingest.replay import ReplayBusy

    now = time.time()
    try:
        report = replay(
            WorkerContext.build(settings),
            run_id=args.run_id, reason=args.reason, limit=args.limit, dry_run=args.dry_run,
            older_than=now - args.older_than if args.older_than is not None else None,
            newer_than=now - args.newer_than if args.newer_than is not None else None,
            progress=None if args.json else terminal_progress,
        )
    except ReplayBusy as exc:
        print(f"codex-langfuse replay: {exc}", file=sys.stderr)
        return 3
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        verb = "would replay" if report.dry_run else "replayed"
        print(f"{report.letters} dead letters: {verb} {report.replayed}, skipped {report.skipped} already "
              f"accepted, failed {report.failed}, not attempted {report.not_attempted}")
        for error in report.errors:
            print(f"  {error}", file=sys.stderr)
    return 1 if report.failed or report.not_attempted else 0


def cmd_status(settings: Any, args: argparse.Namespace) -> int:
    from codex_langfuse.ingest.status import collect, render

    report = collect(settings)
    print(json.dumps(report, indent=2, default=str) if args.json else render(report))
    return 0


def parse_score_value(value: str, data_type: str | None) -> tuple[float | str, str]:
    lowered = value.strip().lower()
    if data_type is None:
        if lowered in ("true", "false", "yes", "no", "pass", "fail", "passed", "failed"):
            data_type = "BOOLEAN"
        else:
            try:
                float(value)
                data_type = "NUMERIC"
            except ValueError:
                data_type = "CATEGORICAL"
    if data_type == "BOOLEAN":
        truthy = {"true": 1.0, "yes": 1.0, "pass": 1.0, "passed": 1.0, "1": 1.0, "1.0": 1.0}
        falsy = {"false": 0.0, "no": 0.0, "fail": 0.0, "failed": 0.0, "0": 0.0, "0.0": 0.0}
        if lowered not in truthy and lowered not in falsy:
            raise ValueError(f"not a boolean: {value!r}")
        return truthy.get(lowered, 0.0), data_type
    if data_type == "NUMERIC":
        return float(value), data_type
    return value, data_type


def cmd_score(settings: Any, args: argparse.Namespace) -> int:
    from codex_langfuse.ingest.scores import attach_score

    try:
        value, data_type = parse_score_value(args.value, args.data_type)
    except ValueError as exc:
        print(f"codex-langfuse score: {exc}", file=sys.stderr)
        return 2
    score = attach_score(settings, args.run_id, args.name, value, data_type, args.comment)
    print(f"score {score['name']}={score['value']} queued for trace {score['traceId']} (id {score['id']})")
    return 0


def cmd_show(settings: Any, args: argparse.Namespace) -> int:
    from codex_langfuse.ingest.show import render_trace

    text = render_trace(settings.sink_dir, args.run_id, as_json=args.json)
    if text is None:
        print(f"no trace for {args.run_id} in {settings.sink_dir}", file=sys.stderr)
        return 1
    print(text)
    return 0


def cmd_demo(settings: Any, args: argparse.Namespace) -> int:
    from codex_langfuse.ingest.demo import run_demo

    return run_demo(settings, fixture=args.fixture, model=args.model)


def cmd_verify(settings: Any, args: argparse.Namespace) -> int:
    from codex_langfuse.ingest.context import WorkerContext
    from codex_langfuse.ingest.verify import Verifier
    from codex_langfuse.producer import Producer
    from codex_langfuse.producer.importer import TurnShipper
    from codex_langfuse.producer.rollout_state import RolloutState, default_state_path
    from codex_langfuse.producer.rollouts import default_roots, find_rollouts

    ctx = WorkerContext.build(settings)
    files = find_rollouts(args.paths or default_roots())
    producer = state = shipper = None
    if not args.dry_run:
        producer = Producer(redis_url=settings.redis_url, stream=settings.stream)
        state = RolloutState(args.state or default_state_path())
        shipper = TurnShipper(producer, state)
    verifier = Verifier(ctx.store, ctx.ledger, ctx.claims, None if args.ledger_only else ctx.transport,
                        ctx.fold_context(), shipper.ship if shipper else None,
                        shipper.settle if shipper else lambda: None)
    try:
        report = verifier.verify(files, args.idle_timeout or settings.idle_timeout)
    finally:
        if producer is not None:
            producer.close(10)
        if state is not None:
            state.close()
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        counts = report.counts
        print(f"{report.files} files, {report.turns} turns: {counts['complete']} complete, {counts['missing']} "
              f"missing observations, {counts['not_sent']} not sent, {counts['in_progress']} in progress, "
              f"{counts['live']} counted by a live capture; re-sent {report.healed}")
        for check in report.checks:
            if check.status in ("missing", "not_sent"):
                print(f"  {check.status:8} {check.run_id} ({len(check.missing)} of {check.expected} observations)"
                      f"{' re-sent' if check.healed else ''}")
        for error in report.errors:
            print(f"error: {error}", file=sys.stderr)
    unhealed = sum(1 for c in report.checks if c.status in ("missing", "not_sent") and not c.healed)
    return 1 if report.errors or unhealed else 0
