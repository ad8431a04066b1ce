"""`codex-langfuse verify`: Codex's session history on disk against what Langfuse holds, turn by
turn, and what is missing sent again with the same ids.

For each complete turn of the rollout files, the observations its trace must hold are computed
by folding the turn here exactly as a worker would (the ids are a pure function of the data).
The ledger is asked first: a turn whose observations are all there was accepted by Langfuse.
Then Langfuse's own observations API (unless `--ledger-only`): an observation the ledger has
and Langfuse lacks was lost after acceptance. A turn is then `complete`, `missing` (some
observations absent), `not_sent` (none), `in_progress` (its run is still being folded or
delivered), or `live` (a live capture of the same turn counts it: see `turn_claims`).

Healing (without `--dry-run`) a `missing` or `not_sent` turn: the ids Langfuse lacks leave the
ledger, the run's books are reset, and the turn is shipped again through the stream under the
same run id. The worker folds it to the same ids; the ledger skips what Langfuse has and only
the missing observations are sent. Scores are re-sent with their stable ids (they overwrite).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from codex_langfuse.ingest.entries import Entry
from codex_langfuse.ingest.fold import FoldContext, fold, new_state
from codex_langfuse.ingest.ledger import Ledger
from codex_langfuse.ingest.runs import RunStore
from codex_langfuse.ingest.transport import DeliveryError, Transport
from codex_langfuse.ingest.turn_claims import TurnClaims
from codex_langfuse.producer.config import ProducerSettings
from codex_langfuse.producer.entries import END_REASON_EOF, SHRINKABLE_FACTOR, encode_json, now_us, shrink_json_line
from codex_langfuse.producer.rollouts import read_records
from codex_langfuse.producer.rollout_turns import Turn, split_file, start_data

STATUSES = ("complete", "missing", "not_sent", "in_progress", "live")


@dataclass
class TurnCheck:
    run_id: str
    trace_id: str
    file: str
    status: str
    expected: int = 0
    missing: list[str] = field(default_factory=list)
    owner: str | None = None
    healed: bool = False
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if value not in (None, [], False)}


@dataclass
class VerifyReport:
    files: int = 0
    turns: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {status: 0 for status in STATUSES})
    healed: int = 0
    errors: list[str] = field(default_factory=list)
    checks: list[TurnCheck] = field(default_factory=list)

    def as_dict(self, with_turns: bool = True) -> dict[str, Any]:
        report: dict[str, Any] = {"files": self.files, "turns": self.turns, **self.counts, "healed": self.healed,
                                  "errors": self.errors}
        if with_turns:
            report["problems"] = [check.as_dict() for check in self.checks if check.status != "complete"]
        return report


def turn_entries(path: Path, turn: Turn, header_us: int | None,
                 max_line_bytes: int = ProducerSettings.max_line_bytes) -> Iterator[Entry]:
    """The entries `import` ships for a turn, as the worker reads them back: lines over the size
    limit made smaller as the producer makes them (the producer's own `producer` key in the start
    entry aside, which no id depends on)."""
    yield Entry(run=turn.run_id, seq=0, ts=turn.started_us, kind="start", data=encode_json(start_data(turn, path)).decode())
    seq = 1
    for line, ts in read_records(path, turn.start, turn.end, header_us):
        trunc = None
        if len(line) > max_line_bytes:
            trunc = len(line)
            shrunk = shrink_json_line(line, max_line_bytes) if len(line) <= max_line_bytes * SHRINKABLE_FACTOR else None
            line = shrunk or line[:max_line_bytes]
        try:
            data, binary = line.decode("utf-8"), False
        except UnicodeDecodeError:
            data, binary = line.decode("utf-8", "replace"), True
        yield Entry(run=turn.run_id, seq=seq, ts=ts, kind="line", data=data, binary=binary, trunc=trunc)
        seq += 1
    end = {"exit_code": None, "signal": None, "reason": END_REASON_EOF}
    yield Entry(run=turn.run_id, seq=seq, ts=turn.ended_us, kind="end", data=encode_json(end).decode())


def expected_span_ids(path: Path, turn: Turn, header_us: int | None, context: FoldContext) -> list[str]:
    result = fold(new_state(turn.run_id), turn_entries(path, turn, header_us), context)
    return [observation.id for observation in result.observations]


class Verifier:
    def __init__(self, store: RunStore, ledger: Ledger, claims: TurnClaims, transport: Transport | None,
                 context: FoldContext, ship: Callable[[Path, Turn, int | None], Any] | None,
                 settle: Callable[[], Any] = lambda: None):
        """`transport` None: the ledger alone is asked. `ship` None: a dry run (nothing healed)."""
        self.store = store
        self.ledger = ledger
        self.claims = claims
        self.transport = transport
        # Folding here must not claim turns: only the worker's fold decides who counts a turn.
        self.context = FoldContext(prices=context.prices, trace_name=context.trace_name,
                                   environment=context.environment, max_output_chars=context.max_output_chars)
        self.ship = ship
        self.settle = settle

    def verify(self, files: list[Path], idle_seconds: float, report: VerifyReport | None = None) -> VerifyReport:
        report = report or VerifyReport()
        for path in files:
            report.files += 1
            try:
                turns, splitter = split_file(path, now_us(), int(idle_seconds * 1e6), final=True)
            except OSError as exc:
                report.errors.append(f"{path}: {exc}")
                continue
            for turn in turns:
                report.turns += 1
                check = self.check(path, turn, splitter.state.header_us)
                if check.status in ("missing", "not_sent") and self.ship is not None:
                    self.heal(path, turn, splitter.state.header_us, check)
                    report.healed += int(check.healed)
                report.counts[check.status] += 1
                if check.error:
                    report.errors.append(f"{check.run_id}: {check.error}")
                report.checks.append(check)
            self.settle()
        return report

    def check(self, path: Path, turn: Turn, header_us: int | None) -> TurnCheck:
        check = TurnCheck(run_id=turn.run_id, trace_id=turn.trace_id, file=path.name, status="complete")
        owner = self.claims.owner(turn.thread_id, turn.started_us, turn.ended_us) if turn.thread_id else None
        if owner is not None and owner != turn.run_id:
            check.status, check.owner = "live", owner
            return check
        if self.store.in_progress(turn.run_id):
            check.status = "in_progress"
            return check
        expected = expected_span_ids(path, turn, header_us, self.context)
        check.expected = len(expected)
        accepted = {i for _, i in self.ledger.accepted((turn.trace_id, i) for i in expected)}
        missing = [span for span in expected if span not in accepted]
        if not missing and self.transport is not None:
            try:
                # a lagging (v1) listing may not show a span stored moments ago: verify after the lag
                present = self.transport.existing_span_ids(turn.trace_id).span_ids
            except DeliveryError as exc:
                check.error = f"Langfuse could not be asked: {exc}"
                return check
            missing = [span for span in expected if span not in present]
        check.missing = missing
        if missing:
            check.status = "not_sent" if len(missing) == len(expected) else "missing"
        return check

    def heal(self, path: Path, turn: Turn, header_us: int | None, check: TurnCheck) -> None:
        assert self.ship is not None
        self.ledger.forget((turn.trace_id, i) for i in check.missing)
        self.store.forget_run(turn.run_id)
        try:
            self.ship(path, turn, header_us)
        except Exception as exc:  # noqa: BLE001 - reported per turn, the others still heal
            check.error = f"could not be sent again: {exc}"
            return
        check.healed = True


