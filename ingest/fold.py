"""Folding a run's entries into Langfuse observations: pure, no I/O.

`fold(state, entries, context)` applies entries (in sequence order) to a `RunState` and returns
the new state with every observation and score that became complete. A worker persists the
state between calls, so a run can be folded in any number of steps by any number of workers
and yields the same observations as folding it at once.

The run's root `agent` observation and the derived scores complete when the run closes: on
its `end` entry, or through `close()` when the producer stopped reporting.
"""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from codex_langfuse.ingest import current_format, legacy_format, rollout_format
from codex_langfuse.ingest.entries import KIND_INVALID, EndData, Entry, RunMeta, ScoreData, split_run_key
from codex_langfuse.ingest.events import Format, Usage, first_line, parse_line
from codex_langfuse.ingest.observations import Observation, Score, TraceAttributes, observation_id, root_id, score_id
from codex_langfuse.ingest.pricing import usage_buckets
from codex_langfuse.ingest.state import Counters, FoldContext, HeldError, OpenItem, RunState, Suppressed
from codex_langfuse.producer.entries import normalize_environment, parse_traceparent

__all__ = ["Counters", "FoldContext", "FoldResult", "Folder", "OpenItem", "RunState", "abandon", "close", "fold",
           "new_state", "set_aside", "skip_gap"]

MAX_TRACKED_PATHS = 1000
MAX_STDERR_CHARS = 8000  # the tail of Codex's stderr kept on the root observation
LATE_CONTENT_CHARS = 32_000
MAX_SKIPPED_RANGES = 100
# What a summary of things past a cap keeps: the first few, each cut, counted by at most this many kinds.
MAX_SAMPLES = 5
MAX_SAMPLE_CHARS = 500
MAX_KINDS = 50
PROBLEMS_SUMMARY = "summary/problems"
OBSERVATIONS_SUMMARY = "summary/observations"
UNCAPPED = frozenset({"root", PROBLEMS_SUMMARY, OBSERVATIONS_SUMMARY})
# Formats whose stream just ends (no turn.completed/turn.failed): ending is not aborting there.
NO_TERMINAL_EVENT = (Format.LEGACY, Format.EXPERIMENTAL)
# The head of an `item.completed` line cut by the producer: enough to close the item it completes.
_CUT_COMPLETION = re.compile(r'^\s*\{\s*"type"\s*:\s*"item\.completed"\s*,\s*"item"\s*:\s*\{\s*"id"\s*:\s*"([^"]+)"')


@dataclass
class FoldResult:
    state: RunState
    observations: list[Observation] = field(default_factory=list)
    scores: list[Score] = field(default_factory=list)
    # thread id -> cumulative usage to remember for later resumes of that thread
    thread_totals: dict[str, Usage] = field(default_factory=dict)


def new_state(run_key: str) -> RunState:
    """The state of a run not folded yet; `run_key` as filed (`entries.run_key`)."""
    run_id, instance = split_run_key(run_key)
    return RunState(run_id=run_id, instance=instance)


class Folder:
    """One fold step: the state being advanced and what became complete."""

    def __init__(self, state: RunState, context: FoldContext):
        self.state = state
        self.ctx = context
        self.result = FoldResult(state=state)
        self._traces: dict[str, TraceAttributes] = {}
        if state.environment is None:
            # the worker's default, fixed when the run is first folded: the run keeps it
            state.environment = context.environment

    # ---- identity and trace attributes ----

    def oid(self, key: str) -> str:
        return observation_id(self.state.seed, key)

    @property
    def root_id(self) -> str:
        return root_id(self.state.seed)

    @property
    def prompt(self) -> Any:
        """The run's input: the prompt, with what was piped on stdin after a prompt argument."""
        meta = self.state.meta
        if meta.get("stdin"):
            return {"prompt": meta.get("prompt"), "stdin": meta["stdin"]}
        return meta.get("prompt")

    @property
    def model(self) -> str | None:
        return self.state.meta.get("model") or self.state.stream_model

    @property
    def model_parameters(self) -> dict[str, Any]:
        """Reasoning effort and summary, service tier, sandbox and approval policy: what the
        producer read from Codex's arguments and config, then what the stream itself says."""
        given = self.state.meta.get("model_parameters")
        return {**(given if isinstance(given, dict) else {}), **self.state.stream_parameters}

    @property
    def joined(self) -> bool:
        """The run joined a caller's trace (a `parent` in its start entry)."""
        return self.state.parent is not None

    @property
    def sets_trace(self) -> bool:
        """Whether the run sets its trace's name, metadata, input and output: always in a trace of
        its own; in a caller's trace only when asked (they are the caller's)."""
        return not self.joined or bool(self.state.meta.get("set_trace_attributes"))

    @property
    def run_name(self) -> str:
        return str(self.state.meta.get("name") or self.ctx.trace_name)

    def run_metadata(self) -> dict[str, Any]:
        """The trace's metadata (the run's root's own, in a caller's trace)."""
        meta = self.state.meta
        metadata: dict[str, Any] = {"run_id": self.state.run_id}
        if self.state.instance is not None:
            metadata["run_instance"] = self.state.instance
        for key in ("codex_version", "cwd", "repository", "branch", "commit", "producer"):
            if meta.get(key):
                metadata[key] = meta[key]
        if self.model:
            metadata["model"] = self.model
        if self.state.thread_id:
            metadata["thread_id"] = self.state.thread_id
        if isinstance(meta.get("metadata"), dict):
            metadata.update(meta["metadata"])
        if self.state.end is not None:
            metadata["exit_code"] = self.state.end.get("exit_code")
            if self.state.end.get("signal") is not None:
                metadata["signal"] = self.state.end.get("signal")
        return metadata

    def trace(self, root: bool = False) -> TraceAttributes:
        """The trace attributes of a span; `root`: of the run's root, which alone carries the
        trace's metadata (and, when a joined run sets them, its input and output). Those of the
        other spans are made once per distinct value (every span of a run repeats them)."""
        meta = self.state.meta
        tags = meta.get("tags") or ()
        own = self.sets_trace
        if not root:
            key = repr((own, self.run_name if own else None, meta.get("user_id"), meta.get("session_id"),
                        self.state.thread_id, tags, self.state.environment, meta.get("release"),
                        meta.get("codex_version")))
            made = self._traces.get(key)
            if made is None:
                made = self._traces[key] = self._trace(meta, tags, own, root)
            return made
        return self._trace(meta, tags, own, root)

    def _trace(self, meta: dict[str, Any], tags: Any, own: bool, root: bool) -> TraceAttributes:
        return TraceAttributes(
            name=self.run_name if own else None,
            user_id=meta.get("user_id"),
            session_id=meta.get("session_id") or self.state.thread_id,
            tags=tuple(str(t) for t in tags) if isinstance(tags, (list, tuple)) else (),
            environment=self.state.environment,
            release=meta.get("release") or self.ctx.release or meta.get("codex_version"),
            metadata=self.run_metadata() if root and own else {},
            input=self.prompt if root and own and self.joined else None,
            output=self.state.final_message if root and own and self.joined else None,
        )

    # ---- emitting ----

    def emit(self, key: str, type_: str, name: str, start_us: int, end_us: int, **fields: Any) -> None:
        state = self.state
        if key not in UNCAPPED:
            if state.observations >= self.ctx.max_observations:
                _suppress(state.hidden_observations, f"{type_}:{name}", {"type": type_, "name": name})
                return
            state.observations += 1
        self.result.observations.append(
            Observation(
                id=self.oid(key),
                trace_id=self.state.trace_id,
                parent_id=fields.pop("parent_id", self.root_id),
                type=type_,
                name=name,
                start_us=start_us,
                end_us=max(end_us, start_us),
                trace=fields.pop("trace", None) or self.trace(),
                **fields,
            )
        )

    def event(self, key: str, name: str, at_us: int, **fields: Any) -> None:
        self.emit(key, "event", name, at_us, at_us, **fields)

    def warning(self, key: str, name: str, at_us: int, message: str, **fields: Any) -> None:
        self.state.counters.warnings += 1
        self.event(key, name, at_us, level="WARNING", status_message=message, **fields)

    def problem(self, key: str, kind: str, at_us: int, message: str, output: Any = None,
                metadata: dict[str, Any] | None = None, level: str | None = "WARNING", show: bool = True) -> None:
        """An entry that is invalid, unknown or conflicting: an event (WARNING unless `level` is
        None) while fewer than `max_problem_events` were shown, else (or when not to `show`: one of
        many alike) counted and sampled for the summary at the close."""
        state = self.state
        if not show or state.problem_events >= self.ctx.max_problem_events:
            _suppress(state.hidden_problems, kind, {"kind": kind, "message": message[:MAX_SAMPLE_CHARS],
                                                    "output": _sample(output), **(metadata or {})})
            return
        state.problem_events += 1
        if level == "WARNING":
            self.warning(key, kind, at_us, message, output=output, metadata=metadata or {})
        else:
            self.event(key, kind, at_us, output=output, metadata=metadata or {})

    def invalid_entry(self, entry: Entry, problems: list[str]) -> None:
        """A start/meta/score/end whose data did not fit: what was usable was used; this says what was not."""
        if not problems:
            return
        self.state.counters.invalid_entries += 1
        message = f"{entry.kind} entry: " + "; ".join(problems)
        self.problem(f"entry/{entry.seq}", "invalid_entry", entry.ts, message[:1000], output=entry.data[:2000],
                     metadata={"seq": entry.seq, "kind": entry.kind, "problems": problems[:20]})

    def duplicate(self, conflict: dict[str, Any]) -> None:
        """An entry that came under a sequence number already filed, with other data (the first
        was the one folded). Read after a closed run ended, it is a reuse of the run id by a
        producer that sends no `inst`: a late entry. Otherwise it is shown as a duplicate."""
        entry = Entry.model_validate({"run": self.state.run_id, "kind": "line",
                                      **{k: v for k, v in conflict.items() if k in Entry.model_fields}})
        if self.state.closed and entry.ts > (self.state.last_us or 0):
            self.late(entry)
            return
        self.state.counters.duplicate_entries += 1
        self.problem(f"duplicate/{entry.seq}/{conflict.get('digest')}", "duplicate_entry", entry.ts,
                     f"seq {entry.seq} arrived again with different data; the first one was used",
                     output=entry.data[:2000] or None,
                     metadata={"seq": entry.seq, "kind": entry.kind, "ts": entry.ts, "inst": entry.inst,
                               "digest": conflict.get("digest"), "first_digest": conflict.get("first_digest")})

    def score(self, name: str, value: float | str, data_type: str, at_us: int, comment: str | None = None,
              metadata: dict[str, Any] | None = None) -> None:
        # A run that shares its trace (a caller's, or its run id's with an earlier run) scores its root.
        on_root = self.root_id if self.joined or self.state.instance is not None else None
        self.result.scores.append(
            Score(
                id=score_id(self.state.trace_id, name, on_root),
                trace_id=self.state.trace_id,
                observation_id=on_root,
                name=name,
                value=value,
                data_type=data_type,
                timestamp_us=at_us,
                comment=comment,
                environment=self.state.environment,
                metadata=metadata or {},
            )
        )

    def capped(self, text: str) -> str:
        """Head and tail of a long output: the end of a command's output is where errors are."""
        limit = self.ctx.max_output_chars
        if limit <= 0 or len(text) <= limit:
            return text
        head = limit * 2 // 3
        tail = limit - head
        return f"{text[:head]}\n…[{len(text) - limit} characters cut]…\n{text[-tail:]}"

    def remember_thread_total(self, thread: str, usage: Usage) -> None:
        self.result.thread_totals[thread] = usage

    def claim_turn(self, start_us: int, end_us: int) -> str | None:
        """The run that counts this turn of the thread (this one, unless another claimed it first)."""
        if not self.state.thread_id:
            return None
        return self.ctx.claim_turn(self.state.thread_id, self.state.run_id, start_us, end_us)

    def track_files(self, paths: Iterable[str]) -> None:
        known = set(self.state.files)
        for path in paths:
            if path and path not in known and len(self.state.files) < MAX_TRACKED_PATHS:
                self.state.files.append(path)
                known.add(path)

    # ---- errors are held until the next line tells whether the turn failed ----

    def hold_error(self, at_us: int, seq: int, message: str) -> None:
        self.release_error()
        self.state.held_error = HeldError(at_us=at_us, seq=seq, message=message)

    def release_error(self, fatal: bool = False) -> None:
        held = self.state.held_error
        if held is None:
            return
        self.state.held_error = None
        level = "ERROR" if fatal else "WARNING"
        if fatal:
            self.state.counters.errors += 1
        else:
            self.state.counters.warnings += 1
        self.event(f"error/{held.seq}", "error", held.at_us, output=held.message, level=level,
                   status_message=first_line(held.message))

    # ---- generations ----

    def generation(self, key: str, name: str, start_us: int, end_us: int, usage: Usage | None,
                   request_input_tokens: int | None = None, **fields: Any) -> None:
        """`request_input_tokens`: input of the largest single model request, when known; it
        decides a long-context price tier. A turn's usage sums many requests, so None there."""
        metadata = dict(fields.pop("metadata", {}) or {})
        usage_details = cost_details = None
        model = self.model
        if usage is not None:
            usage_details = usage_buckets(
                input_tokens=usage.input_tokens,
                cached_input_tokens=usage.cached_input_tokens,
                output_tokens=usage.output_tokens,
                reasoning_output_tokens=usage.reasoning_output_tokens,
                cache_write_input_tokens=usage.cache_write_input_tokens,
            )
            self.state.usage = self.state.usage.plus(usage)
            price = None
            if self.ctx.prices is not None and model:
                price = self.ctx.prices.price(
                    model, usage_details,
                    service_tier=self.state.meta.get("service_tier") or self.model_parameters.get("service_tier"),
                    # Unknown request sizes: price at the standard tier rather than take a turn's
                    # sum of many requests for one long-context request.
                    request_input_tokens=request_input_tokens if request_input_tokens is not None else 0,
                    # the prices in force when the tokens were used: a live line's read time, a
                    # rollout record's own time
                    on=datetime.datetime.fromtimestamp(end_us / 1e6, datetime.timezone.utc).date(),
                )
            if price is not None:
                cost_details = price.cost_details
                self.state.cost += float(cost_details.get("total") or 0.0)
                metadata.update(pricing_source=price.source, pricing_model=price.model,
                                pricing_tier=price.tier, pricing_version=price.table_version)
                if price.effective_from is not None:
                    metadata["pricing_effective_from"] = price.effective_from.isoformat()
            else:
                metadata["pricing_source"] = "none: model unknown or not priced; Langfuse may infer"
        if model is None:
            metadata["model_note"] = "Codex does not print the model; pass --model to price this run"
        self.emit(key, "generation", name, start_us, end_us, model=model, usage_details=usage_details,
                  cost_details=cost_details, metadata=metadata, model_parameters=self.model_parameters or None,
                  **fields)

    # ---- entries ----

    def apply(self, entry: Entry) -> None:
        state = self.state
        if entry.seq < state.next_seq:
            self.stale(entry)
            return
        state.next_seq = entry.seq + 1
        if state.closed:
            self.late(entry)
            return
        if entry.kind == KIND_INVALID:  # its time is the dispatcher's, not the run's: shown at the run's last moment
            state.counters.invalid_entries += 1
            self.problem(f"entry/{entry.seq}", "invalid_entry", state.last_us or entry.ts, entry.data[:1000],
                         metadata={"seq": entry.seq, "poisoned": True})
            return
        if state.started_us is None:
            state.started_us = entry.ts
        state.last_us = max(state.last_us or entry.ts, entry.ts)
        if entry.kind in ("start", "meta"):
            payload, problem = entry.data_object()
            meta, problems = RunMeta.read(payload)
            if entry.kind == "start" and parse_traceparent(meta.get("parent")):
                # only the start entry places the run: its spans must not change trace midway
                state.parent = meta["parent"].strip()
            self.apply_meta(meta)
            self.invalid_entry(entry, [problem] if problem else problems)
        elif entry.kind == "line":
            self.apply_line(entry)
        elif entry.kind == "score":
            self.apply_score(entry)
        elif entry.kind == "end":
            payload, problem = entry.data_object()
            end, problems = EndData.read(payload)
            state.end = {"exit_code": end.exit_code, "signal": end.signal, "reason": end.reason or "exited"}
            if end.stderr and end.stderr.strip():
                state.end["stderr"] = end.stderr[-MAX_STDERR_CHARS:]
            self.invalid_entry(entry, [problem] if problem else problems)
            self.close(entry.ts)
        else:
            state.counters.unknown_events += 1
            self.problem(f"entry/{entry.seq}", "unknown_entry", entry.ts, f"unknown entry kind {entry.kind!r}",
                         output=entry.data[:2000], metadata={"seq": entry.seq})

    # ---- entries that come after their time ----

    def stale(self, entry: Entry) -> None:
        """An entry below the next sequence number: a copy of one folded already (a spool sent
        again), unless its number was given up as lost, or it was read after a closed run ended
        (a producer that sends no `inst` reused the run id): then it is late, not a copy."""
        state = self.state
        skipped = any(first <= entry.seq <= last for first, last in state.skipped)
        if skipped or (state.closed and entry.ts > (state.last_us or 0)):
            self.late(entry)

    def late(self, entry: Entry) -> None:
        """An entry for a run already closed, or after its gap was given up: it never re-opens
        the run. A score is still applied; content is kept as a `late_entry` event."""
        if entry.kind == "score":
            self.apply_score(entry)
            return
        self.state.counters.late_entries += 1
        if entry.kind == "line":
            content: Any = entry.data or None
        else:
            content = entry.data_object()[0] or None  # an empty `meta` is a heartbeat: nothing to keep
        if content is None:
            return
        when = "after the run was closed" if self.state.closed else "after it was given up as lost"
        self.event(f"late/{entry.seq}/{entry.ts}", "late_entry", entry.ts, level="WARNING",
                   output=content if not isinstance(content, str) else content[:LATE_CONTENT_CHARS],
                   status_message=f"{entry.kind} entry #{entry.seq} arrived {when}",
                   metadata={"seq": entry.seq, "kind": entry.kind})

    def apply_meta(self, payload: dict[str, Any]) -> None:
        meta = self.state.meta
        for key, value in payload.items():
            if value is None:
                continue
            if key == "parent":
                continue
            if key == "environment":
                # Langfuse's rule, for producers that did not apply it (another language's); one it
                # would turn into `default` leaves the run in the worker's environment
                try:
                    self.state.environment = meta["environment"] = normalize_environment(value)
                except ValueError:
                    pass
            elif key == "metadata" and isinstance(value, dict):
                meta["metadata"] = {**(meta.get("metadata") or {}), **value}
            elif key == "tags" and isinstance(value, list):
                meta["tags"] = list(dict.fromkeys([*(meta.get("tags") or []), *map(str, value)]))
            else:
                meta[key] = value

    def apply_score(self, entry: Entry) -> None:
        payload, problem = entry.data_object()
        score, problems = ScoreData.read(payload) if problem is None else (None, [problem])
        if score is not None:
            try:
                value, data_type = score.typed()
            except ValueError as exc:
                problems.append(str(exc))
                score = None
        self.invalid_entry(entry, problems)
        if score is not None:
            self.score(score.name, value, data_type, entry.ts, comment=score.comment, metadata={"source": "producer"})

    def apply_line(self, entry: Entry) -> None:
        state = self.state
        if entry.trunc is not None:
            state.counters.truncated_lines += 1
        line = parse_line(entry.data)
        if line.obj is None or entry.binary:
            if entry.trunc is not None:
                problem = f"line cut by the producer at {len(entry.data.encode())} of {entry.trunc} bytes"
            elif entry.binary:
                problem = "not valid UTF-8"
            else:
                problem = line.problem or "unreadable"
            state.counters.invalid_lines += 1
            self.release_error()
            self.problem(f"line/{entry.seq}", "invalid_line", entry.ts, problem, output=entry.data[:2000],
                         metadata={"seq": entry.seq, "bytes": entry.trunc or len(entry.data.encode())})
            cut = _CUT_COMPLETION.match(entry.data) if entry.trunc is not None else None
            if cut and cut.group(1) in state.open_items:
                opened = state.open_items.pop(cut.group(1))
                current_format.finish_incomplete(self, cut.group(1), opened, entry.ts, reason=problem)
            return
        if state.meta.get("format") == Format.ROLLOUT.value:
            rollout_format.apply(self, line, entry)
            return
        if state.format is None and line.format in (Format.CURRENT, Format.LEGACY, Format.EXPERIMENTAL):
            state.format = line.format
        if line.format is Format.CURRENT or line.format is Format.EXPERIMENTAL:
            current_format.apply(self, line, entry)
        elif line.format in (Format.LEGACY, Format.LEGACY_HEADER):
            legacy_format.apply(self, line, entry)
        else:
            self.unknown(entry, line.obj or {}, str((line.obj or {}).get("type") or "unknown"))

    def unknown(self, entry: Entry, obj: dict[str, Any], name: str) -> None:
        """A type this version does not know: kept as an event, never fatal."""
        self.release_error()
        self.state.counters.unknown_events += 1
        self.problem(f"line/{entry.seq}", name, entry.ts, f"unknown event type {name!r}", output=obj,
                     metadata={"unknown_type": True, "seq": entry.seq}, level=None)

    # ---- closing ----

    def close(self, at_us: int, reason: str | None = None) -> None:
        """The run is over: settle what is open, then the root observation and the scores."""
        state = self.state
        if state.closed:
            return
        if state.superseded_by:
            # Another run (a live capture of the same turn) counts it: this one sends nothing.
            state.closed = True
            state.end = state.end or {"exit_code": None, "signal": None, "reason": reason or "superseded"}
            return
        self.release_error()
        if state.format is Format.ROLLOUT:
            rollout_format.before_close(self, at_us)
        for item_id, open_item in list(state.open_items.items()):
            kind = open_item.format or state.format
            module = {Format.LEGACY: legacy_format, Format.ROLLOUT: rollout_format}.get(kind, current_format)
            module.finish_incomplete(self, item_id, open_item, at_us)
        state.open_items = {}
        if state.turn_open:
            state.turn_open = False
            if state.outcome is None and state.format not in NO_TERMINAL_EVENT:
                state.outcome = "aborted"
            self.generation(f"turn/{state.turns}", f"turn {state.turns}", state.turn_started_us or at_us, at_us,
                            None, input=self.prompt if state.turns == 1 else None,
                            output=state.turn_message, level="ERROR",
                            status_message="turn did not complete: the stream ended without turn.completed")
        if state.end is None:
            state.end = {"exit_code": None, "signal": None, "reason": reason or "idle"}
        self.summaries(at_us)
        level, status = self.root_level()
        trace = self.trace(root=True)
        metadata: dict[str, Any] = {} if self.sets_trace else self.run_metadata()
        metadata |= {
            "format": state.format.value if state.format else None,
            "outcome": state.outcome,
            "end_reason": state.end.get("reason"),
            "exit_code": state.end.get("exit_code"),
            "turns": state.turns,
            "usage": state.usage.model_dump(),
            "counters": state.counters.model_dump(),
        }
        if state.files:
            metadata["files_changed"] = state.files
        stderr = state.end.get("stderr")
        if stderr:
            metadata["stderr"] = stderr
            if level == "ERROR":
                # Codex says why it did not run on stderr ("Not inside a trusted directory …")
                status = f"{status}; codex stderr: {last_line(stderr)}"
        state.closed = True
        self.emit("root", "agent", self.run_name, state.started_us or at_us, at_us, parent_id=state.parent_span_id,
                  trace=trace, input=self.prompt, output=state.final_message, level=level, status_message=status,
                  metadata=metadata)
        self.derived_scores(at_us)

    def summaries(self, at_us: int) -> None:
        """One event for everything past a cap: how many, of which kinds, and the first few."""
        # copies: the state goes on counting (late entries) after these are sent
        hidden = self.state.hidden_problems.model_copy(deep=True)
        if hidden.count:
            self.warning(PROBLEMS_SUMMARY, "problems_not_shown", at_us,
                         f"{hidden.count} more invalid, unknown or conflicting entries than the "
                         f"{self.ctx.max_problem_events} shown one by one",
                         output=hidden.samples, metadata={"count": hidden.count, "by_kind": hidden.by_kind})
        hidden = self.state.hidden_observations.model_copy(deep=True)
        if hidden.count:
            self.warning(OBSERVATIONS_SUMMARY, "observations_not_sent", at_us,
                         f"{hidden.count} observations past the cap of {self.ctx.max_observations} per run "
                         "were not sent", output=hidden.samples,
                         metadata={"count": hidden.count, "by_kind": hidden.by_kind})

    def root_level(self) -> tuple[str, str | None]:
        state = self.state
        end = state.end or {}
        exit_code, signal = end.get("exit_code"), end.get("signal")
        if state.outcome == "failed":
            return "ERROR", first_line(state.failure or "turn failed")
        if signal is not None:
            return "ERROR", f"codex was killed by signal {signal}"
        if state.outcome == "aborted" and state.failure:
            return "ERROR", first_line(state.failure)
        if state.outcome in (None, "aborted"):
            if state.format not in NO_TERMINAL_EVENT:
                why = "no output from codex" if state.format is None else \
                    "the stream ended without turn.completed or turn.failed"
                how = f"exit code {exit_code}" if exit_code not in (None, 0) else end.get("reason")
                state.outcome = "aborted"
                return "ERROR", f"aborted: {why} ({how})"
            if end.get("reason") not in ("exited", "eof", "closed"):
                state.outcome = "aborted"
                return "ERROR", f"aborted: the producer stopped reporting ({end.get('reason')})"
        if exit_code not in (None, 0):
            return "ERROR", f"codex exited with code {exit_code}"
        return "DEFAULT", None

    def derived_scores(self, at_us: int) -> None:
        state = self.state
        end = state.end or {}
        # Streams without a terminal event: there a run succeeded unless it says otherwise.
        succeeded = state.outcome == "completed" or (state.format in NO_TERMINAL_EVENT and state.outcome is None)
        succeeded = succeeded and end.get("exit_code") in (0, None) and end.get("signal") is None
        at = state.started_us or at_us
        derived = {"source": "codex-langfuse"}
        self.score("success", 1.0 if succeeded else 0.0, "BOOLEAN", at, metadata=derived)
        self.score("failed_commands", float(state.counters.failed_commands), "NUMERIC", at, metadata=derived)
        self.score("files_changed", float(len(state.files)), "NUMERIC", at, metadata=derived)
        self.score("errors", float(state.counters.errors), "NUMERIC", at, metadata=derived)


def _sample(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= MAX_SAMPLE_CHARS else f"{text[:MAX_SAMPLE_CHARS]}…"


def _suppress(hidden: Suppressed, kind: str, sample: dict[str, Any]) -> None:
    hidden.count += 1
    if kind not in hidden.by_kind and len(hidden.by_kind) >= MAX_KINDS:
        kind = "other"
    hidden.by_kind[kind] = hidden.by_kind.get(kind, 0) + 1
    if len(hidden.samples) < MAX_SAMPLES:
        hidden.samples.append(sample)


def fold(state: RunState, entries: Iterable[Entry], context: FoldContext,
         conflicts: Iterable[dict[str, Any]] = ()) -> FoldResult:
    """Apply `entries` (ascending seq, no gaps from `state.next_seq`) to a copy of `state`, then
    show `conflicts` (entries filed again under a sequence number with different data)."""
    folder = Folder(state.model_copy(deep=True), context)
    for entry in entries:
        folder.apply(entry)
    for conflict in conflicts:
        folder.duplicate(conflict)
    return folder.result


def set_aside(state: RunState, entry: Entry) -> RunState:
    """Go on past an entry whose folding raised (it is kept as a `fold_failed` dead letter)."""
    state = state.model_copy(deep=True)
    state.next_seq = max(state.next_seq, entry.seq + 1)
    state.counters.unfoldable_entries += 1
    return state


def abandon(state: RunState, why: str) -> RunState:
    """Close a run whose closing raised: nothing more is folded for it; its root is not sent."""
    state = state.model_copy(deep=True)
    state.closed = True
    state.outcome = "aborted"
    state.failure = why
    state.end = {**(state.end or {"exit_code": None, "signal": None}), "reason": "fold_failed"}
    return state


def close(state: RunState, at_us: int, reason: str, context: FoldContext) -> FoldResult:
    """Close a run the producer stopped reporting on (idle timeout): it is marked aborted."""
    folder = Folder(state.model_copy(deep=True), context)
    folder.close(at_us, reason)
    return folder.result


def skip_gap(state: RunState, to_seq: int, at_us: int, context: FoldContext) -> FoldResult:
    """Give up waiting for entries `state.next_seq`..`to_seq - 1`: they are counted as lost."""
    folder = Folder(state.model_copy(deep=True), context)
    lost = to_seq - state.next_seq
    folder.state.counters.lost_entries += lost
    if not folder.state.closed:
        folder.warning(f"gap/{state.next_seq}", "lost_entries", at_us,
                       f"{lost} entries never arrived (seq {state.next_seq}..{to_seq - 1})",
                       metadata={"first_seq": state.next_seq, "count": lost})
    folder.state.next_seq = to_seq
    folder.state.gap_since = None
    if len(folder.state.skipped) < MAX_SKIPPED_RANGES:
        folder.state.skipped.append((state.next_seq, to_seq - 1))
    return folder.result


def last_line(text: str) -> str:
    """The last line with something on it."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:500] if lines else ""
