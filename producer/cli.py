"""The `codex-langfuse` command. `run` and `tee` live here (standard library + producer only);
every other subcommand is handed to `ingest.cli`, imported only when asked for.

`run [OPTIONS] -- codex exec --json ...`
    Starts Codex with stdout and stderr piped. Every chunk Codex writes is copied to our stdout or
    stderr as soon as it is read (os.read/os.write, byte-identical; passthrough.py); each complete
    stdout line goes to the stream, stamped when read, and the last 8 KiB of stderr go into the
    `end` entry when Codex fails or prints no line. Warns (stderr) when `codex exec` lacks --json.
    Exits with Codex's exit code, or dies of the same
    signal. SIGTERM, SIGHUP are forwarded; SIGINT and SIGQUIT are forwarded unless they came from
    the terminal (then Codex, in the same foreground process group, got them already). If Codex
    takes its prompt from stdin, stdin is copied to it and the first 64 KiB are kept as the prompt.
    If our stdout goes away (reader closed the pipe), Codex's output keeps being read and captured
    and the exit code is still Codex's.
`tee [OPTIONS]`
    The same for a stream on stdin: copies stdin to stdout byte-identically and captures its lines;
    ends the run with reason "eof" and exits 0. If stdout goes away it keeps reading stdin (so the
    run is complete) and exits 141 at the end, like a pipeline member killed by SIGPIPE.
    SIGINT/SIGTERM/SIGHUP end the run with reason "closed" and then kill us with that signal.
Both wait at most --flush-timeout seconds at the end for the entries to reach Redis or the spool.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Sequence

from codex_langfuse.producer import Producer, Run, __version__
from codex_langfuse.producer.capture import CaptureProcess, Copier, run_child
from codex_langfuse.producer.codex_args import (
    CodexCommand, codex_version, git_repository, parse_codex_command, resolve_model, resolve_model_parameters,
)
from codex_langfuse.producer.entries import (
    END_REASON_CLOSED,
    END_REASON_EOF,
    SHRINKABLE_FACTOR,
    is_valid_run_id,
    new_run_id,
    normalize_environment,
    parse_traceparent,
    trace_id,
)
from codex_langfuse.producer.config import ProducerSettings, SettingError, default_spool_dir
from codex_langfuse.producer.passthrough import READ_SIZE, Output, Tail, enlarge_pipe, pass_stdin_through, pass_through

PRODUCER_COMMANDS = {
    "run": "run Codex (`run [OPTIONS] -- codex exec --json ...`), passing its output through, and capture it",
    "tee": "capture a Codex JSONL stream from stdin (`codex exec --json ... | codex-langfuse tee`)",
    "spool": "list this machine's spool files; `spool flush` sends what dead producers left",
}
# served by producer.rollout_cli (runner side too: only Redis is needed)
ROLLOUT_COMMANDS = {
    "import": "send Codex's session history (rollout files) to Langfuse, one trace per turn",
    "follow": "follow Codex's sessions directory and send each turn when it completes",
}
# served by ingest.cli; listed here so `--help` shows the whole command
INGEST_COMMANDS = {
    "dispatch": "read the event stream and queue jobs (run one or more)",
    "worker": "an RQ worker that folds runs and sends them (run any number)",
    "replay": "send dead letters again (never twice)",
    "status": "stream, queue, workers, retries and dead letters",
    "score": "attach a score to a run's trace (CI result, review)",
    "show": "print a run's trace from the local sink",
    "demo": "end to end on a recorded Codex run, with a Redis of its own",
    "doctor": "check Redis, Langfuse, the spool and the clock; say what to fix",
    "verify": "compare Codex's session history with what Langfuse holds; re-send what is missing",
    "acl": "the Redis users: runners may only append to the stream (ACL SETUSER rules)",
}

STDIN_PROMPT_LIMIT = 64 * 1024
DEFAULT_FLUSH_TIMEOUT = 5.0
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT)
# delivered by the terminal to its whole foreground process group (which includes Codex)
KEYBOARD_SIGNALS = (signal.SIGINT, signal.SIGQUIT)
TEE_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PRODUCER_COMMANDS:
        return _producer_command(argv)
    if argv and argv[0] in ROLLOUT_COMMANDS:
        from codex_langfuse.producer.rollout_cli import main as rollout_main

        return rollout_main(argv)
    if not argv or argv[0] in ("-h", "--help", "--version"):
        parser = build_parser()
        parser.parse_args(argv or ["--help"])  # prints help or version and exits
        return 0
    try:
        from codex_langfuse.ingest.cli import main as ingest_main
    except ModuleNotFoundError as exc:
        if exc.name not in ("codex_langfuse.ingest", "codex_langfuse.ingest.cli"):
            raise
        print(f"codex-langfuse: {argv[0]!r} is served by ingest.cli, which is not installed", file=sys.stderr)
        return 2
    return ingest_main(argv)


# ---- arguments ----

class _Parser(argparse.ArgumentParser):
    """A usage mistake is one line on stderr (what is wrong, where help is) and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="codex-langfuse",
        description="Every Codex CLI run as a complete Langfuse trace, through Redis and RQ workers.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="subcommand", metavar="COMMAND")
    for name, help_text in PRODUCER_COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if name == "spool":
            from codex_langfuse.producer import spool_command

            spool_command.add_arguments(sub, _seconds)
            continue
        _add_run_options(sub)
        if name == "run":
            sub.add_argument("command", nargs=argparse.REMAINDER, metavar="-- codex exec ...",
                             help="the Codex command line to run")
    for name, help_text in {**ROLLOUT_COMMANDS, **INGEST_COMMANDS}.items():
        commands.add_parser(name, help=help_text, add_help=False)
    return parser


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-id", type=_run_id, help="run id (default: a new UUID4, printed to stderr)")
    parser.add_argument("--model", help="model name (default: from Codex's arguments and config)")
    parser.add_argument("--user-id")
    parser.add_argument("--session-id", help="Langfuse session id (default: Codex's thread id)")
    parser.add_argument("--tag", action="append", default=[], help="trace tag (repeatable)")
    parser.add_argument("--metadata", action="append", default=[], type=_key_value, metavar="KEY=VALUE",
                        help="trace metadata (repeatable)")
    parser.add_argument("--name", help="trace name (default: codex exec)")
    parser.add_argument("--environment", type=_environment,
                        help="Langfuse environment (sent as Langfuse stores it: lowercased, a leading "
                             "'langfuse' removed; an error when it cannot be kept)")
    parser.add_argument("--parent", metavar="TRACEPARENT", default=os.environ.get("TRACEPARENT"),
                        help="join the caller's trace: a W3C traceparent (default: $TRACEPARENT); the run's "
                             "root becomes a child of that span")
    parser.add_argument("--set-trace-attributes", action="store_true",
                        help="with --parent: also set the trace's name, metadata, input and output "
                             "(default: leave them to the caller)")
    parser.add_argument("--prompt", help="the prompt, as the trace's input (default for run: from Codex's "
                                         "arguments or stdin)")
    parser.add_argument("--flush-timeout", type=_seconds, default=DEFAULT_FLUSH_TIMEOUT, metavar="SECONDS",
                        help="longest wait at exit for delivery to Redis or the spool (default: %(default)s)")


def _run_id(value: str) -> str:
    if not is_valid_run_id(value):
        raise argparse.ArgumentTypeError("must be 1-128 characters of [A-Za-z0-9._:-]")
    return value


def _environment(value: str) -> str:
    try:
        normalized = normalize_environment(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if normalized != value:
        _say(f"environment {value!r} is sent as {normalized!r}, as Langfuse stores it")
    return normalized


def _parent(value: str | None) -> str | None:
    """A usable traceparent, or None (with a warning): a bad one never stops the run."""
    if not value:
        return None
    if parse_traceparent(value) is None:
        _say(f"ignoring the parent {value!r}: not a W3C traceparent; the run gets a trace of its own")
        return None
    return value.strip()


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds (0 or more), got {value!r}")
    return seconds


def _key_value(value: str) -> tuple[str, str]:
    key, equals, rest = value.partition("=")
    if not equals or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    return key, rest


def _producer_command(argv: list[str]) -> int:
    parser = build_parser()
    command: list[str] = []
    if argv[0] == "run" and "--" in argv:
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1:]
    args, unknown = parser.parse_known_args(argv)
    subparser = f"{parser.prog} {args.subcommand}"
    if unknown:
        return _usage_error(subparser, f"unrecognized arguments: {' '.join(unknown)} (see {subparser} --help)")
    try:
        settings = ProducerSettings.from_env(strict=True)
    except SettingError as exc:
        return _usage_error(subparser, str(exc))
    if args.subcommand == "spool":
        from codex_langfuse.producer import spool_command

        try:
            return spool_command.run(args, settings)
        except KeyboardInterrupt:
            return 130
        except BrokenPipeError:  # `spool | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            return 0
    if args.subcommand == "run":
        command = command or args.command
        if not command:
            return _usage_error(subparser, "give the Codex command after --, e.g. `codex-langfuse run -- codex exec --json 'hi'`")
        if command[0].startswith("-"):
            return _usage_error(subparser, f"unrecognized option {command[0]!r} (options go before --, the Codex command after it)")
        return _run(args, command, settings)
    return _tee(args, settings)


def _usage_error(prog: str, message: str) -> int:
    _say_raw(f"{prog}: error: {message}")
    return 2


# ---- shared pieces ----

def _reserve_standard_fds() -> set[int]:
    """Put /dev/null (close-on-exec) on closed fds 0-2, so no file we open lands there, while Codex
    still inherits them closed. Returns the fds that were closed."""
    closed = set()
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.add(fd)
            placeholder = os.open(os.devnull, os.O_RDWR)  # lowest free fd: this one
            if placeholder != fd:
                os.close(placeholder)
    return closed


def _start(args: argparse.Namespace, settings: ProducerSettings, after_start: Callable[[], dict] | None = None,
           **start_data) -> CaptureProcess | None:
    """Fork the capture process, which starts the run (its `start` entry) and then `after_start()`'s
    `meta` entry; None when capture is impossible (Codex's output is then only passed through)."""
    run_id = args.run_id or new_run_id()
    metadata = dict(args.metadata) or None
    if args.prompt is not None:
        start_data["prompt"] = args.prompt
    found_model = start_data.pop("model", None)
    parent = _parent(args.parent)
    start = dict(
        run_id=run_id, model=args.model or found_model, name=args.name,
        user_id=args.user_id, session_id=args.session_id, tags=args.tag, metadata=metadata,
        environment=args.environment, parent=parent, set_trace_attributes=args.set_trace_attributes,
        # now, before the first read: the capture process may start the run after lines were read
        ts=time.time_ns() // 1000,
        **start_data,
    )

    def start_run() -> tuple[Producer, Run]:
        producer = Producer(threaded=False)
        return producer, producer.start_run(**start)

    capture = CaptureProcess.start(
        settings.spool_dir or default_spool_dir(),
        lambda journal, notices: run_child(journal, notices, start_run, after_start,
                                           settings.max_line_bytes * SHRINKABLE_FACTOR),
    )
    if args.run_id is None:
        _say(f"run {run_id} trace {parse_traceparent(parent)[0] if parent else trace_id(run_id)}")
    return capture


def _say(message: str) -> None:
    _say_raw(f"codex-langfuse: {message}")


def _say_raw(line: str) -> None:
    try:
        sys.stderr.write(f"{line}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


class _Signals:
    """Signal handlers that only record the signal; the main loop, woken through a wakeup fd, acts."""

    def __init__(self, signals: Sequence[int]):
        self.signals = tuple(signals)
        self.pending: list[int] = []
        self._previous: dict[int, object] = {}
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._previous_wakeup = -1

    @property
    def wakeup_fd(self) -> int:
        return self._read_fd

    def install(self) -> None:
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._record)
        self._previous_wakeup = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)

    def _record(self, signum, frame) -> None:
        self.pending.append(signum)

    def take(self) -> list[int]:
        try:
            while os.read(self._read_fd, 512):
                pass
        except BlockingIOError:
            pass
        taken, self.pending[:] = list(self.pending), []
        return taken

    def restore(self) -> None:
        signal.set_wakeup_fd(self._previous_wakeup)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        os.close(self._read_fd)
        os.close(self._write_fd)


def _sent_by_terminal() -> bool:
    """True when we are in the terminal's foreground process group: a keyboard signal then went to
    the whole group, Codex included."""
    try:
        tty = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
    except OSError:
        return False  # no controlling terminal: someone sent it to us alone
    try:
        return os.tcgetpgrp(tty) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(tty)


def _die_by_signal(signum: int) -> int:
    """Terminate with `signum` so our parent sees the same wait status as Codex's; if its default
    action does not terminate, fall back to the shell's 128+N exit code."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    except (ImportError, OSError, ValueError):
        pass
    for step in (
        lambda: signal.signal(signum, signal.SIG_DFL),  # refused for SIGKILL/SIGSTOP, which need no reset
        lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum}),
        lambda: os.kill(os.getpid(), signum),
    ):
        try:
            step()
        except (OSError, ValueError):
            pass
    return 128 + signum


# ---- run ----

def _run(args: argparse.Namespace, command: list[str], settings: ProducerSettings) -> int:
    closed_fds = _reserve_standard_fds()
    codex = parse_codex_command(command)
    try:
        cwd = os.path.abspath(codex.cwd) if codex.cwd else os.getcwd()
    except OSError:
        cwd = None
    start: dict = {"model": codex.model or codex.config_model, "prompt": codex.prompt, "cwd": cwd,
                   "model_parameters": codex.model_parameters or None}
    if codex.resume_session_id:
        start["resume_session_id"] = codex.resume_session_id
    if codex.is_exec and codex.subcommand != "help" and not _asks_for_json(command):
        _say("warning: `codex exec` without --json prints no JSON events, so the trace will be empty; add --json")
    capture = _start(args, settings, after_start=lambda: _metadata_after_start(codex, args, cwd), **start)
    out, err = Output(1, closed=1 in closed_fds), Output(2, closed=2 in closed_fds)
    # Codex reads a piped stdin: as the prompt when none is given, and (0.169) as more input after
    # a prompt argument. Either way it is copied through and recorded.
    stdin_piped = codex.is_exec and 0 not in closed_fds and not os.isatty(0)
    capture_stdin = stdin_piped and (codex.prompt_from_stdin or bool(codex.prompt))
    stdin_role = "prompt" if codex.prompt_from_stdin else "stdin"

    # installed before Codex starts (a signal in between is forwarded once it runs) and kept until
    # we exit: a signal during the final flush is then ignored instead of cutting it short
    signals = _Signals(FORWARDED_SIGNALS)
    signals.install()
    try:
        try:
            # stderr is piped too: copied through as it comes, its last KiB kept for the trace
            child = subprocess.Popen(
                command, stdin=subprocess.PIPE if capture_stdin else None, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, bufsize=0,
            )
        except OSError as exc:
            code = 127 if isinstance(exc, FileNotFoundError) else 126
            _say(f"cannot run {command[0]!r}: {exc.strerror or exc}")
            if capture is not None:
                capture.finish({"exit_code": code, "signal": None, "reason": "exited"}, args.flush_timeout)
            return code
        enlarge_pipe(child.stdout.fileno())
        if not out.broken:
            enlarge_pipe(1)  # tee(2) moves at most a pipe's worth per call
        if capture_stdin:
            threading.Thread(target=_copy_stdin, args=(child.stdin, capture, stdin_role), name="codex-langfuse-stdin",
                             daemon=True).start()
        stderr_tail = Tail()
        returncode = pass_through(child, Copier(child.stdout.fileno(), out, capture, READ_SIZE), err, stderr_tail,
                                  signals.wakeup_fd, lambda: _forward(signals.take(), child))
        if capture is not None:
            # Codex's own words on a failure go with the end (the capture process drops them when
            # Codex succeeded and printed lines)
            capture.finish({"exit_code": None if returncode < 0 else returncode,
                            "signal": -returncode if returncode < 0 else None, "reason": "exited",
                            "stderr": stderr_tail.text() or None}, args.flush_timeout)
    finally:
        signals.restore()
    if returncode < 0:
        return _die_by_signal(-returncode)
    return returncode


def _metadata_after_start(codex: CodexCommand, args: argparse.Namespace, cwd: str | None) -> dict:
    """What takes file reads to learn: read once Codex is running, sent as a `meta` entry."""
    meta: dict = {}
    try:
        if not (args.model or codex.model or codex.config_model):
            meta["model"] = resolve_model(codex)
        parameters = resolve_model_parameters(codex)
        if parameters != codex.model_parameters:  # the config files add some: the whole set again
            meta["model_parameters"] = parameters
        meta["codex_version"] = codex_version(codex.executable)
        repository = git_repository(cwd) if cwd else None
        if repository:
            # flat keys, as the ingest side reads them: repository (remote URL), branch, commit
            meta["repository"] = repository.get("url")
            meta["branch"] = repository.get("branch")
            meta["commit"] = repository.get("commit")
    except Exception:  # metadata is a nicety; the run goes on without it
        pass
    return {key: value for key, value in meta.items() if value is not None}


def _asks_for_json(command: list[str]) -> bool:
    """Whether Codex's arguments ask for its JSONL output (before a `--` that ends its options)."""
    for arg in command[1:]:
        if arg == "--":
            return False
        if arg in ("--json", "--experimental-json"):
            return True
    return False


def _forward(signums: list[int], child: subprocess.Popen) -> None:
    for signum in signums:
        if signum in KEYBOARD_SIGNALS and _sent_by_terminal():
            continue
        try:
            child.send_signal(signum)  # a no-op once Codex has been reaped
        except OSError:
            pass


def _copy_stdin(destination, capture: CaptureProcess | None, role: str) -> None:
    """Copy our stdin to Codex's; its first 64 KiB are recorded as `role` (the prompt, or the
    `stdin` that follows a prompt argument), sent before Codex sees EOF."""
    captured = bytearray()
    target = destination.fileno()
    try:
        while True:
            try:
                chunk = os.read(0, READ_SIZE)
            except OSError:
                break
            if not chunk:
                break
            if len(captured) < STDIN_PROMPT_LIMIT:
                captured += chunk[:STDIN_PROMPT_LIMIT - len(captured)]
            try:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(target, view):]
            except OSError:
                break  # Codex closed its stdin: it has read what it wanted
    finally:
        if captured and capture is not None:
            capture.meta({role: captured.decode("utf-8", "replace")})
        try:
            destination.close()
        except OSError:
            pass


# ---- tee ----

def _tee(args: argparse.Namespace, settings: ProducerSettings) -> int:
    closed_fds = _reserve_standard_fds()
    capture = _start(args, settings)
    out = Output(1, closed=1 in closed_fds)
    if 0 not in closed_fds:
        enlarge_pipe(0)
    if not out.broken:
        enlarge_pipe(1)  # tee(2) moves at most a pipe's worth per call
    signals = _Signals(TEE_STOP_SIGNALS)
    signals.install()
    stopped_by: list[int] = []
    try:
        def stop_requested() -> bool:
            stopped_by.extend(signals.take())
            return bool(stopped_by)

        pass_stdin_through(Copier(0, out, capture, READ_SIZE), signals.wakeup_fd, stop_requested)
        if capture is not None:
            end = {"exit_code": None, "signal": stopped_by[0] if stopped_by else None,
                   "reason": END_REASON_CLOSED if stopped_by else END_REASON_EOF}
            capture.finish(end, args.flush_timeout)
    finally:
        signals.restore()
    if stopped_by:
        return _die_by_signal(stopped_by[0])
    return 141 if out.broken else 0


if __name__ == "__main__":
    sys.exit(main())
