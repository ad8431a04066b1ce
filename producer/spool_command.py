"""`codex-langfuse spool`: the spool files on this machine, and sending what dead producers left.

    codex-langfuse spool [list] [--json]
    codex-langfuse spool flush [--all] [--timeout SECONDS] [--json]

`list` shows every spool file in the spool directory (CODEX_LANGFUSE_SPOOL_DIR): its owner
(running, or gone), the destination its entries were written for (this configuration's REDIS_URL
and CODEX_LANGFUSE_STREAM, or another), entries and bytes not yet sent, and age. `flush` sends the
files of dead owners written for this configuration's destination, and deletes each once it is
sent; `--all` also sends files written for another destination (or none, from an earlier version)
to this one - for a Redis that moved, never done without being asked. Files of running producers
are theirs. Exit codes: 0 done (nothing left to send for the chosen destinations), 1 something
is left (Redis did not answer, or the timeout came first), 2 a usage or configuration error.
Standard library and redis only, like the rest of the producer.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from codex_langfuse.producer.config import ProducerSettings, default_spool_dir
from codex_langfuse.producer.destination import destination_id, redact_url
from codex_langfuse.producer.sender import Sender
from codex_langfuse.producer.spool import SpoolFile, orphan_candidates

DEFAULT_FLUSH_TIMEOUT = 60.0


def add_arguments(parser: argparse.ArgumentParser, seconds) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    listing = actions.add_parser("list", help="the spool files and what they hold (the default)")
    listing.add_argument("--json", action="store_true", help="one JSON object per file, for machines")
    flush = actions.add_parser("flush", help="send the files dead producers left for this destination")
    flush.add_argument("--all", action="store_true",
                       help="also send files written for another destination (or none) to this one")
    flush.add_argument("--timeout", type=seconds, default=DEFAULT_FLUSH_TIMEOUT, metavar="SECONDS",
                       help="stop after this long (default: %(default)s)")
    flush.add_argument("--json", action="store_true", help="the outcome as JSON")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)


def run(args: argparse.Namespace, settings: ProducerSettings) -> int:
    directory = Path(settings.spool_dir or default_spool_dir())
    ours = destination_id(settings.redis_url, settings.stream)
    if args.action == "flush":
        return _flush(settings, directory, ours, args)
    files = survey(directory, ours)
    if args.json:
        for found in files:
            print(json.dumps(found))
        return 0
    print(f"spool directory {directory}; this configuration writes to {ours} "
          f"({redact_url(settings.redis_url)}, stream {settings.stream})")
    if not files:
        print("no spool files")
        return 0
    rows = [("file", "owner", "destination", "entries", "bytes", "age")]
    for found in files:
        rows.append((found["file"], found["owner"], _destination_label(found, ours), str(found["entries"]),
                     _size(found["bytes"]), _age(found["age_seconds"])))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(widths[column]) if column < 3 else cell.rjust(widths[column])
                        for column, cell in enumerate(row)).rstrip())
    return 0


def survey(directory: Path, ours: str) -> list[dict]:
    """One dict per spool file: file, path, owner ("running" or "gone"), destinations {dest: entries},
    destination (the one dest, or None when there are several or none), entries, bytes, age."""
    found = []
    for path in orphan_candidates(directory):
        opened = SpoolFile.inspect(path)
        if opened is None:
            continue
        spool, held = opened
        try:
            summary = spool.survey()
            age = time.time() - os.stat(path).st_mtime
        except OSError:
            continue
        finally:
            spool.release(delete=False)
        destinations = summary["destinations"]
        only = next(iter(destinations)) if len(destinations) == 1 else None
        found.append({
            "file": path.name, "path": str(path), "owner": "running" if held else "gone",
            "destination": only, "destinations": destinations, "this_destination": only == ours,
            "entries": summary["entries"], "bytes": summary["bytes"], "unreadable": summary["unreadable"],
            "age_seconds": round(age, 1),
        })
    return found


def _flush(settings: ProducerSettings, directory: Path, ours: str, args: argparse.Namespace) -> int:
    before = survey(directory, ours)
    chosen = [f for f in before if f["owner"] == "gone" and f["entries"] and (args.all or f["this_destination"])]
    sender = Sender(settings, threaded=False)
    try:
        sender.deliver_leftovers(time.monotonic() + args.timeout, any_destination=args.all)
    finally:
        sender.release()
    counts = sender.counts()
    after = {f["path"]: f for f in survey(directory, ours)}
    left = [f for f in chosen if f["path"] in after and after[f["path"]]["entries"]]
    outcome = {
        "files": len(chosen), "sent_files": len(chosen) - len(left), "sent_entries": counts["spool_replayed"],
        "left_files": [f["file"] for f in left], "redis_errors": counts["redis_errors"],
        "other_destinations": [f["file"] for f in before if f["owner"] == "gone" and f["entries"]
                               and not f["this_destination"] and not args.all],
        "running": [f["file"] for f in before if f["owner"] == "running"],
    }
    if args.json:
        print(json.dumps(outcome))
    else:
        print(f"sent {outcome['sent_entries']} entries from {outcome['sent_files']} of {outcome['files']} "
              f"spool file(s) to {redact_url(settings.redis_url)} (stream {settings.stream})")
        if left:
            why = "Redis did not answer" if counts["redis_errors"] else "the timeout came first"
            print(f"left: {', '.join(outcome['left_files'])} ({why}; run it again)")
        if outcome["other_destinations"]:
            print(f"not sent, written for another destination: {', '.join(outcome['other_destinations'])} "
                  "(--all sends them here)")
        if outcome["running"]:
            print(f"not touched, their producers are running: {', '.join(outcome['running'])}")
    return 1 if left else 0


def _destination_label(found: dict, ours: str) -> str:
    if found["destination"] is not None:
        return f"{found['destination']} ({'this' if found['this_destination'] else 'other'})"
    if not found["destinations"]:
        return "-"
    return "several" if len(found["destinations"]) > 1 else "none recorded"


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return str(count)


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"
