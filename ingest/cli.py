"""The back-end commands of `codex-langfuse` (`run` and `tee` live in `producer.cli`).

Every mistake a user can make ends in one line on stderr and an exit code, never a traceback:
0 done; 1 failed or not found (an unknown run, an unhealthy `status --check`, a `doctor` finding);
2 wrong usage or settings (a bad value, no destination, Langfuse refusing the keys or not at its
URL); 3 unavailable (Redis unreachable, another replay running); 130 interrupted; 141 the
reader of stdout went away (`show … | head`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

COMMANDS = ("dispatch", "worker", "replay", "status", "score", "show", "demo", "doctor", "verify", "acl")

OK, FAILED, USAGE, UNAVAILABLE, INTERRUPTED, BROKEN_PIPE = 0, 1, 2, 3, 130, 141
# What the `backend` extra installs: a runner that installed the base package has none of them.
BACKEND_MODULES = ("rq", "langfuse", "pydantic", "pydantic_settings", "prometheus_client", "pythonjsonlogger")


def _duration(text: str) -> float:
    from codex_langfuse.ingest.settings import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


class Failure(Exception):
    """A command ends with one line and an exit code."""

    def __init__(self, message: str, code: int = FAILED):
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="codex-langfuse")
    sub = parser.add_subparsers(dest="command", required=True)

    dispatch = sub.add_parser("dispatch", help="read the event stream and queue jobs (run one or more)")
    dispatch.add_argument("--once", action="store_true", help="one read and one sweep, then exit")
    _metrics_options(dispatch)

    worker = sub.add_parser("worker", help="an RQ worker that folds runs and sends them (run any number)")
    worker.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    worker.add_argument("--name", help="worker name (default: host-pid-random)")
    worker.add_argument("--sink", metavar="DIR", help="write to this local sink instead of Langfuse")
    _metrics_options(worker)

    replay = sub.add_parser("replay", help="send dead letters again (never twice)")
    replay.add_argument("--run-id")
    replay.add_argument("--reason", help="only letters of this reason class (see `status`)")
    replay.add_argument("--older-than", type=_duration, help="last failure older than (e.g. 1h)")
    replay.add_argument("--newer-than", type=_duration, help="last failure newer than (e.g. 1d)")
    replay.add_argument("--limit", type=int, help="at most this many letters")
    replay.add_argument("--dry-run", action="store_true", help="count what would be sent; send nothing")
    replay.add_argument("--json", action="store_true", help="print the counts as JSON")
    replay.add_argument("--sink", metavar="DIR", help="replay into this local sink instead of Langfuse")

    status = sub.add_parser("status", help="stream, queue, workers, retries and dead letters")
    status.add_argument("--json", action="store_true")
    status.add_argument("--check", action="store_true",
                        help="health probe: exit 1 (saying why) without a live worker or dispatcher, with dead "
                             "letters added within --window, or with an event waiting longer than --max-age")
    status.add_argument("--max-age", type=_duration, default=900.0, metavar="DURATION",
                        help="oldest undelivered event allowed by --check (default 15m)")
    status.add_argument("--window", type=_duration, default=900.0, metavar="DURATION",
                        help="new dead letters within this are a failed --check (default 15m)")

    score = sub.add_parser("score", help="attach a score to a run's trace (CI result, review)")
    score.add_argument("run_id", help="run id, or the run's trace id")
    score.add_argument("name")
    score.add_argument("value")
    score.add_argument("--comment")
    score.add_argument("--data-type", choices=["NUMERIC", "BOOLEAN", "CATEGORICAL", "TEXT"])
    score.add_argument("--force", action="store_true", help="score a run id not seen yet (its entries come later)")

    show = sub.add_parser("show", help="print a run's trace from the local sink")
    show.add_argument("run_id", help="run id or trace id")
    show.add_argument("--json", action="store_true", help="the spans as stored")

    acl = sub.add_parser("acl", help="the Redis users: runners may only append to the stream (ACL SETUSER rules)")
    acl.add_argument("--runner-user", default="runner")
    acl.add_argument("--backend-user", default="backend")
    acl.add_argument("--runner-password", default=os.environ.get("CODEX_LANGFUSE_RUNNER_PASSWORD"),
                     help="default: $CODEX_LANGFUSE_RUNNER_PASSWORD, else a new random one")
    acl.add_argument("--backend-password", default=os.environ.get("CODEX_LANGFUSE_BACKEND_PASSWORD"),
                     help="default: $CODEX_LANGFUSE_BACKEND_PASSWORD, else a new random one")
    acl.add_argument("--apply", action="store_true", help="set the users on the Redis of REDIS_URL (an admin user)")

    demo = sub.add_parser("demo", help="end to end on a recorded Codex run, with a Redis of its own")
    demo.add_argument("--fixture", help="a Codex JSONL file to feed (default: a recorded 0.169.0 run)")
    demo.add_argument("--model", default="gpt-5-codex", help="model to price the recorded run with")

    sub.add_parser("doctor", help="check Redis, Langfuse, the spool and the clock; say what to fix")
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


def _metrics_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics-port", type=int, metavar="PORT", help="serve Prometheus metrics on this port")
    parser.add_argument("--metrics-addr", default="0.0.0.0", metavar="ADDRESS",
                        help="address of the metrics endpoint (default: all interfaces)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prog = f"codex-langfuse {args.command}"
    try:
        return _main(args)
    except Failure as failure:
        _say(prog, str(failure))
        return failure.code
    except KeyboardInterrupt:
        _say(prog, "interrupted")
        return INTERRUPTED
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in BACKEND_MODULES:
            raise
        _say(prog, f"needs the back end, which is not installed here (no module {exc.name!r}): "
                   f"pip install 'codex-langfuse[backend]'")
        return USAGE
    except BrokenPipeError:
        # The reader went away (`show … | head`): what it wanted was printed.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE
    except Exception as exc:  # noqa: BLE001 - the known mistakes, as one line each
        failure = _known_failure(exc)
        if failure is None:
            raise
        _say(prog, str(failure))
        return failure.code


def _main(args: argparse.Namespace) -> int:
    from codex_langfuse.ingest import logs
    from codex_langfuse.ingest.settings import get_settings

    settings = get_settings()
    logs.setup(settings.log_level, settings.log_format)
    handler = globals()[f"cmd_{args.command}"]
    return int(handler(settings, args) or 0)


def _known_failure(exc: Exception) -> Failure | None:
    import redis

    from codex_langfuse.ingest.settings import SettingsError, get_settings

    if isinstance(exc, SettingsError):
        return Failure("\n".join(exc.problems), USAGE)
    if isinstance(exc, redis.AuthenticationError) or (isinstance(exc, redis.ResponseError) and
                                                      str(exc).startswith(("NOAUTH", "WRONGPASS", "NOPERM"))):
        return Failure(f"Redis refused: {_first_line(exc)} (check the user and password in REDIS_URL)", USAGE)
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        from codex_langfuse.ingest.connections import safe_url

        return Failure(f"cannot reach Redis at {safe_url(get_settings().redis_url)}: {_first_line(exc)} "
                       f"(is it running? check REDIS_URL)", UNAVAILABLE)
    from codex_langfuse.ingest.worker import DestinationRefused

    if isinstance(exc, DestinationRefused):
        return Failure(str(exc), USAGE)
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _say(prog: str, message: str) -> None:
    try:
        for line in message.splitlines() or [""]:
            print(f"{prog}: {line}", file=sys.stderr)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _serve_metrics(args: argparse.Namespace) -> None:
    if args.metrics_port is None:
        return
    from codex_langfuse.ingest import metrics

    try:
        metrics.serve(args.metrics_port, args.metrics_addr)
    except OSError as exc:
        raise Failure(f"cannot serve metrics on {args.metrics_addr}:{args.metrics_port}: {exc.strerror or exc}",
                      USAGE) from None


def _with_sink(settings: Any, sink: str | None) -> Any:
    """`--sink DIR` chooses the local sink, over Langfuse keys too."""
    if sink is None:
        return settings
    return settings.model_copy(update={"sink_dir": Path(sink).expanduser(), "langfuse_public_key": None,
                                       "langfuse_secret_key": None})


def cmd_dispatch(settings: Any, args: argparse.Namespace) -> int:
    from codex_langfuse.ingest.dispatcher import Dispatcher

    dispatcher = Dispatcher(settings)
    if args.once:
        dispatcher.ensure_group()
        dispatcher.sweep()
        dispatcher.run_once(block_ms=100)
        return 0
    _serve_metrics(args)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    dispatcher.run(stop)
    return 0


def cmd_worker(settings: Any, args: argparse.Namespace) -> int:
    from codex_langfuse.ingest.worker import run_worker

    settings = _with_sink(settings, args.sink)
    settings.destination  # noqa: B018 - refuses to start without one, naming what is missing
    _serve_metrics(args)
    run_worker(settings, burst=args.burst, name=args.name)
    return 0


def cmd_replay(settings: Any, args: argparse.Namespace) -> int:
    from codex_langfuse.ingest.context import WorkerContext
    from codex_langfuse.ingest.replay import ReplayBusy, replay, terminal_progress
    from codex_langfuse.ingest.transport import make_transport
    from codex_langfuse.ingest.worker import check_destination

    settings = _with_sink(settings, args.sink)
    transport = make_transport(settings)
    if not args.dry_run:
        check_destination(transport)
    now = time.time()
    try:
        report = replay(
            WorkerContext.build(settings, transport),
            run_id=args.run_id, reason=args.reason, limit=args.limit, dry_run=args.dry_run,
            older_than=now - args.older_than if args.older_than is not None else None,
            newer_than=now - args.newer_than if args.newer_than is not None else None,
            progress=None if args.json else terminal_progress,
        )
    except ReplayBusy as exc:
        raise Failure(str(exc), UNAVAILABLE) from None
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        verb = "would replay" if report.dry_run else "replayed"
        print(f"{report.letters} dead letters: {verb} {report.replayed}, skipped {report.skipped} already "
              f"accepted, failed {report.failed}, not attempted {report.not_attempted}"
              + (f"; {report.unsendable} letters of unfoldable entries kept (see status)" if report.unsendable else ""))
        for error in report.errors:
            print(f"  {error}", file=sys.stderr)
    return 1 if report.failed or report.not_attempted else 0


def cmd_status(settings: Any, args: argparse.Namespace) -> int:
    from codex_langfuse.ingest.status import check, collect, render

    report = collect(settings)
    problems = check(report, max_age=args.max_age, window=args.window) if args.check else []
    if args.json:
        if args.check:
            report["check"] = {"healthy": not problems, "problems": problems}
        print(json.dumps(report, indent=2, default=str))
    else:
        print(render(report))
    for problem in problems:
        print(f"unhealthy: {problem}", file=sys.stderr)
    return FAILED if problems else OK


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
    from codex_langfuse.ingest.scores import UnknownRun, attach_score

    try:
        value, data_type = parse_score_value(args.value, args.data_type)
    except ValueError as exc:
        raise Failure(str(exc), USAGE) from None
    try:
        score, notes = attach_score(settings, args.run_id, args.name, value, data_type, args.comment, force=args.force)
    except UnknownRun as exc:
        raise Failure(str(exc), FAILED) from None
    for note in notes:
        print(f"codex-langfuse score: {note}", file=sys.stderr)
    print(f"score {score['name']}={score['value']} queued for trace {score['traceId']} (id {score['id']})")
    return OK


def cmd_show(settings: Any, args: argparse.Namespace) -> int:
    from codex_langfuse.ingest.show import render_trace

    sink = settings.shown_sink_dir()
    text = render_trace(sink, args.run_id, as_json=args.json)
    if text is None:
        raise Failure(f"no trace for {args.run_id} in {sink}", FAILED)
    print(text)
    sys.stdout.flush()  # a reader gone away shows here, inside main's handling
    return OK


def cmd_acl(settings: Any, args: argparse.Namespace) -> int:
    import secrets

    import redis

    from codex_langfuse.ingest import acl, connections

    runner_password = args.runner_password or secrets.token_urlsafe(24)
    backend_password = args.backend_password or secrets.token_urlsafe(24)
    users = [acl.runner(settings, args.runner_user, runner_password),
             acl.backend(settings, args.backend_user, backend_password)]
    for user in users:
        print(user.command())
    print(f"# runners (run, tee, the producer): REDIS_URL="
          f"{acl.url_for(settings.redis_url, args.runner_user, runner_password)}", file=sys.stderr)
    print(f"# back end (dispatch, worker, status, replay, score): REDIS_URL="
          f"{acl.url_for(settings.redis_url, args.backend_user, backend_password)}", file=sys.stderr)
    if not args.apply:
        return OK
    client = connections.redis_client(settings)
    try:
        for user in users:
            client.execute_command("ACL", "SETUSER", *user.setuser())
        default = client.execute_command("ACL", "GETUSER", "default")
    except redis.ResponseError as exc:  # not an admin user
        raise Failure(f"Redis refused to set the users: {_first_line(exc)} (REDIS_URL must be an admin user)",
                      USAGE) from None
    print(f"set users {args.runner_user} and {args.backend_user} on {acl.where(settings.redis_url)}",
          file=sys.stderr)
    flags = _flags(default)
    if "on" in flags and "nopass" in flags:
        print("WARNING: the default user needs no password: anyone who reaches Redis has every right. Give it "
              "one (ACL SETUSER default on >PASSWORD) rather than turning it off: Redis replays the AOF's "
              "transactions as the default user and, before the fix of redis/redis#14541, silently drops "
              "those it may not run.", file=sys.stderr)
    try:
        client.execute_command("ACL", "SAVE")
        print("saved to Redis's ACL file", file=sys.stderr)
    except redis.RedisError as exc:
        print(f"not saved ({_first_line(exc)}): add the lines above to Redis's ACL file or run CONFIG REWRITE, "
              "or a restart forgets them", file=sys.stderr)
    return OK


def _flags(getuser: Any) -> set[str]:
    """The flags of an `ACL GETUSER` answer (a dict with RESP3, a flat list with RESP2)."""
    if isinstance(getuser, dict):
        flags = getuser.get(b"flags") or getuser.get("flags") or []
    else:
        pairs = dict(zip(getuser[::2], getuser[1::2])) if getuser else {}
        flags = pairs.get(b"flags") or pairs.get("flags") or []
    return {f.decode() if isinstance(f, bytes) else str(f) for f in flags}


def cmd_demo(settings: Any, args: argparse.Namespace) -> int:
    from codex_langfuse.ingest.demo import run_demo

    return run_demo(settings, fixture=args.fixture, model=args.model)


def cmd_doctor(settings: Any, args: argparse.Namespace) -> int:
    from codex_langfuse.ingest.doctor import diagnose, render

    findings = diagnose(settings)
    print(render(findings))
    return FAILED if any(f.problem for f in findings) else OK


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
    return FAILED if report.errors or unhealed else OK
