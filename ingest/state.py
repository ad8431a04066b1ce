"""What a fold step starts from: a run's state between steps, the context it is folded in, and
the interface the format modules fold through.

Kept apart from `fold` so the format modules (`current_format`, `legacy_format`) depend on these
types and the `Folder` protocol only, and `fold` depends on them: no import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

from pydantic import BaseModel

from codex_langfuse.ingest.entries import Entry
from codex_langfuse.ingest.events import Format, Usage
from codex_langfuse.ingest.observations import trace_id
from codex_langfuse.ingest.pricing import PriceTable
from codex_langfuse.producer.entries import parse_traceparent


@dataclass(frozen=True)
class FoldContext:
    """What folding needs from outside, passed in so folding stays pure."""

    prices: PriceTable | None = None
    # Thread-cumulative usage recorded by earlier runs of a thread (Codex >= 0.98 reports
    # usage cumulated over the whole thread, so a resumed run must subtract it).
    thread_baseline: Callable[[str], Usage | None] = lambda thread_id: None
    # (thread id, run id, start µs, end µs) -> the run that counts this turn of the thread: the
    # first to claim it, a live capture or an import of the same turn (`ingest.turn_claims`).
    claim_turn: Callable[[str, str, int, int], str | None] = lambda thread_id, run_id, start_us, end_us: None
    trace_name: str = "codex exec"
    environment: str | None = None
    release: str | None = None  # the worker's LANGFUSE_RELEASE: a run's own release wins, then this
    max_output_chars: int = 8000
    # Caps per run: invalid or unknown entries shown one by one, observations sent; past them a
    # count and samples in one summary event at the close.
    max_problem_events: int = 100
    max_observations: int = 10_000


class OpenItem(BaseModel):
    started_us: int
    item: dict[str, Any]
    format: Format | None = None  # the format of the line that opened it (streams can mix)


class HeldError(BaseModel):
    at_us: int
    seq: int
    message: str


class Counters(BaseModel):
    commands: int = 0
    failed_commands: int = 0
    file_changes: int = 0
    mcp_calls: int = 0
    web_searches: int = 0
    subagent_calls: int = 0
    agent_messages: int = 0
    errors: int = 0
    warnings: int = 0
    invalid_lines: int = 0
    unknown_events: int = 0
    truncated_lines: int = 0
    late_entries: int = 0
    lost_entries: int = 0
    invalid_entries: int = 0  # start/meta/score/end whose data did not fit (fields dropped or entry unused)
    duplicate_entries: int = 0  # a sequence number that arrived again with different data
    unfoldable_entries: int = 0  # folding raised: set aside as a `fold_failed` dead letter


class Suppressed(BaseModel):
    """What went past a cap: how many, by kind, and the first few."""

    count: int = 0
    by_kind: dict[str, int] = {}
    samples: list[Any] = []


class RunState(BaseModel):
    """Everything a later fold step needs; stored as JSON between steps."""

    run_id: str
    instance: str | None = None  # set when this run reused a run id another run had used first
    next_seq: int = 0
    meta: dict[str, Any] = {}
    started_us: int | None = None
    last_us: int | None = None
    format: Format | None = None
    stream_model: str | None = None  # the model named by the stream itself (legacy header)
    thread_id: str | None = None
    turns: int = 0
    turn_started_us: int | None = None
    turn_open: bool = False
    turn_message: str | None = None
    final_message: str | None = None
    open_items: dict[str, OpenItem] = {}
    plans: dict[str, list[dict[str, Any]]] = {}
    held_error: HeldError | None = None
    outcome: str | None = None  # completed | failed | aborted
    failure: str | None = None
    usage: Usage = Usage()
    thread_seen: Usage | None = None  # last cumulative thread usage this run knows of
    baseline_loaded: bool = False
    requests: int = 0  # legacy: model requests seen
    request_started_us: int | None = None
    legacy_total: dict[str, int] | None = None
    counters: Counters = Counters()
    files: list[str] = []
    end: dict[str, Any] | None = None
    closed: bool = False
    problem_events: int = 0  # invalid or unknown entries shown as events so far
    hidden_problems: Suppressed = Suppressed()
    observations: int = 0  # sent so far (the root and the summaries not counted)
    hidden_observations: Suppressed = Suppressed()
    gap_since: float | None = None  # worker clock: when the next entry was first found missing
    skipped: list[tuple[int, int]] = []  # seq ranges given up as lost: if they come, they are late
    spans: int = 0  # spans the run made so far (for the line logged when it is delivered)
    cost: float = 0.0  # USD of its priced generations
    superseded_by: str | None = None  # another run counts this turn (see `FoldContext.claim_turn`)
    rollout: dict[str, Any] = {}  # what `rollout_format` keeps between records

    # The caller's W3C traceparent, from the start entry only: the run joins that trace, its root a
    # child of that span. None: the run has a trace of its own.
    parent: str | None = None
    # The run's environment as sent (normalised): the producer's, else the worker's when the run was
    # first folded. A score attached later lands in it too.
    environment: str | None = None
    stream_parameters: dict[str, str] = {}  # model parameters the stream itself names (legacy header)

    @property
    def trace_id(self) -> str:
        joined = parse_traceparent(self.parent)
        return joined[0] if joined else trace_id(self.run_id)

    @property
    def parent_span_id(self) -> str | None:
        """The caller's span the run's root hangs under, when it joined a trace."""
        joined = parse_traceparent(self.parent)
        return joined[1] if joined else None

    @property
    def seed(self) -> str:
        """What observation and score ids are derived from: the run id, and for a later run that
        reused it, `<run id>/<instance>` (so both runs' observations live side by side)."""
        return self.run_id if self.instance is None else f"{self.run_id}/{self.instance}"


class Folder(Protocol):
    """What a format module may do while folding one line (implemented by `fold.Folder`)."""

    state: RunState
    ctx: FoldContext

    @property
    def prompt(self) -> Any: ...

    def emit(self, key: str, type_: str, name: str, start_us: int, end_us: int, **fields: Any) -> None: ...

    def event(self, key: str, name: str, at_us: int, **fields: Any) -> None: ...

    def warning(self, key: str, name: str, at_us: int, message: str, **fields: Any) -> None: ...

    def generation(self, key: str, name: str, start_us: int, end_us: int, usage: Usage | None,
                   request_input_tokens: int | None = None, **fields: Any) -> None: ...

    def capped(self, text: str) -> str: ...

    def track_files(self, paths: Any) -> None: ...

    def hold_error(self, at_us: int, seq: int, message: str) -> None: ...

    def release_error(self, fatal: bool = False) -> None: ...

    def unknown(self, entry: Entry, obj: dict[str, Any], name: str) -> None: ...

    def problem(self, key: str, kind: str, at_us: int, message: str, output: Any = None,
                metadata: dict[str, Any] | None = None, level: str | None = "WARNING", show: bool = True) -> None: ...

    def remember_thread_total(self, thread: str, usage: Usage) -> None: ...

    def claim_turn(self, start_us: int, end_us: int) -> str | None: ...
