"""`codex-langfuse import` and `codex-langfuse follow`: Codex's session history to the stream.

Both run where Codex ran (a laptop, a CI runner) with only Redis to talk to, like `run`; the
back end turns each shipped turn into a trace. See `importer` and `follow`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import re
import signal
import sys
import threading
from pathlib import Path
from typing import Sequence

from codex_langfuse.producer.importer import (
    DEFAULT_IDLE_SECONDS, ImportReport, ShipError, TerminalProgress, TurnShipper, import_files,
)
from codex_langfuse.producer.rollout_state import RolloutState, default_state_path
from codex_langfuse.producer.rollouts import default_roots, find_rollouts

COMMANDS = {
    "import": "send Codex's session history (rollout files) to Langfuse, one trace per turn",
    "follow": "follow Codex's sessions directory and send each turn when it completes",
}
CLOSE_TIMEOUT = 10.0


def _moment(text: str) -> int:
    """A date, a time (ISO 8601, UTC unless it says otherwise) or an age (90m, 36h, 7d) -> µs."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    now = datetime.datetime.now(datetime.timezone.utc)
    if match:
        seconds = float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[match.group(2)]
        return int((now.timestamp() - seconds) * 1e6)
    try:
        moment = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date, time or age: {text!r} (e.g. 2026-07-30, 2026-07-30T12:00, 7d)")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return int(moment.timestamp() * 1e6)


def _idle(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def build_parser(name: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"codex-langfuse {name}", description=COMMANDS[name])
    default_idle = float(os.environ.get("CODEX_LANGFUSE_IDLE_TIMEOUT") or DEFAULT_IDLE_SECONDS)
    parser.add_argument("--idle-timeout", type=_idle, default=default_idle, metavar="SECONDS",
                        help="a turn silent this long is over: sent as given up (default: %(default)s)")
    parser.add_argument("--state", type=Path, default=None, metavar="FILE",
                        help=f"what was sent and how far each file was read (default: {default_state_path()})")
    if name == "import":
        parser.add_argument("paths", nargs="*", type=Path, metavar="PATH",
                            help="rollout files or directories (default: $CODEX_HOME/sessions and archived_sessions)")
        parser.add_argument("--since", type=_moment, help="only turns started at or after (date, time or age: 7d)")
        parser.add_argument("--until", type=_moment, help="only turns started before")
        parser.add_argument("--dry-run", action="store_true", help="count what would be sent; send nothing")
        parser.add_argument("--json", action="store_true", help="print the counts as JSON")
    else:
        parser.add_argument("paths", nargs="*", type=Path, metavar="DIR",
                            help="directories to follow (default: $CODEX_HOME/sessions and archived_sessions)")
        parser.add_argument("--poll-interval", type=_idle, default=2.0, metavar="SECONDS",
                            help="longest wait between passes (default: %(default)s)")
        parser.add_argument("--polling", action="store_true", help="poll even where inotify is available")
        parser.add_argument("--once", action="store_true", help="one pass over the directories, then exit")
    return parser


def main(argv: Sequence[str]) -> int:
    name, rest = argv[0], list(argv[1:])
    args = build_parser(name).parse_args(rest)
    logging.basicConfig(level=os.environ.get("CODEX_LANGFUSE_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return cmd_import(args) if name == "import" else cmd_follow(args)


def cmd_import(args: argparse.Namespace) -> int:
    files = find_rollouts(args.paths or default_roots())
    state = RolloutState(args.state or default_state_path())
    progress = None if args.json else TerminalProgress()
    producer = None
    try:
        if args.dry_run:
            report = import_files(files, None, state, since_us=args.since, until_us=args.until,
                                  idle_seconds=args.idle_timeout, progress=progress)
        else:
            from codex_langfuse.producer import Producer

            producer = Producer()
            shipper = TurnShipper(producer, state)
            try:
                report = import_files(files, shipper, state, since_us=args.since, until_us=args.until,
                                      idle_seconds=args.idle_timeout, progress=progress)
            except ShipError as exc:
                print(f"codex-langfuse import: {exc}", file=sys.stderr)
                return 1
    finally:
        if producer is not None:
            producer.close(CLOSE_TIMEOUT)
        state.close()
    _print_report(report, args)
    return 1 if report.errors else 0


def _print_report(report: ImportReport, args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps({"dry_run": bool(args.dry_run), **report.as_dict()}, sort_keys=True))
        return
    verb = "would send" if args.dry_run else "sent"
    print(f"{report.files} files ({report.bytes / 1e6:,.1f} MB), {report.turns} complete turns: {verb} {report.sent}"
          f" ({report.abandoned} given up), {report.already_sent} sent before, {report.outside_dates} outside the"
          f" dates; {report.in_progress} turns still in progress")
    for error in report.errors:
        print(f"error: {error}", file=sys.stderr)


def cmd_follow(args: argparse.Namespace) -> int:
    from codex_langfuse.producer import Producer
    from codex_langfuse.producer.follow import Follower
    from codex_langfuse.producer.watch import Changes

    state = RolloutState(args.state or default_state_path())
    producer = Producer()
    follower = Follower(args.paths or default_roots(), TurnShipper(producer, state), state,
                        idle_seconds=args.idle_timeout, poll_interval=args.poll_interval,
                        prefer_inotify=not args.polling)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop.set())
    try:
        if args.once:
            follower.step(Changes(rescan=True))
        else:
            follower.run(stop)
    except ShipError as exc:
        print(f"codex-langfuse follow: {exc}", file=sys.stderr)
        return 1
    finally:
        producer.close(CLOSE_TIMEOUT)
        state.close()
    stats = follower.stats
    logging.getLogger("codex_langfuse.follow").info(
        "stopped: %d turns sent (%d given up), %d files read again", stats.turns_sent, stats.turns_abandoned,
        stats.files_restarted)
    return 0
