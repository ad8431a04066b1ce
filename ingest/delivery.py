"""Sending a trace's spans and scores exactly once.

`Delivery.send` consults the ledger before sending, asks Langfuse what it already has when an
earlier attempt ended in doubt, sends in batches bounded by count and size, records each
accepted batch in the ledger at once, splits a batch Langfuse refuses as a whole (400, 413) to
keep the good spans and isolate the bad ones, and stops at the first transient failure so the
caller can retry later. The callers (a run's outbox, a replay of dead letters) keep their own
books with the `SendReport`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from codex_langfuse.ingest.items import ledger_key
from codex_langfuse.ingest.ledger import Ledger
from codex_langfuse.ingest.observations import Score
from codex_langfuse.ingest.otlp import span_size
from codex_langfuse.ingest.transport import FORBIDDEN, NOT_FOUND, REJECTED, TOO_LARGE, UNAUTHORIZED, DeliveryError, Transport

# Failures that say nothing about the data, everything about the credentials or the address:
# every further request would fail the same way.
ACCOUNT_WIDE = (UNAUTHORIZED, FORBIDDEN, NOT_FOUND)
SHRUNK_FIELD_CHARS = 4000


@dataclass
class SendReport:
    accepted: list[str] = field(default_factory=list)  # keys newly accepted by Langfuse
    skipped: list[str] = field(default_factory=list)  # keys Langfuse already had
    rejected: list[tuple[list[dict[str, Any]], DeliveryError]] = field(default_factory=list)
    transient: DeliveryError | None = None  # why sending stopped early
    unsent: list[dict[str, Any]] = field(default_factory=list)  # not sent because of `transient`


class _Stop(Exception):
    def __init__(self, error: DeliveryError):
        self.error = error


def score_payload(score: Score) -> dict[str, Any]:
    """A score as the scores API takes it (the form kept in the outbox and dead letters)."""
    timestamp = dt.datetime.fromtimestamp(score.timestamp_us / 1e6, tz=dt.timezone.utc)
    payload: dict[str, Any] = {
        "id": score.id,
        "traceId": score.trace_id,
        "name": score.name,
        "value": score.value,
        "dataType": score.data_type,
        "timestamp": timestamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    if score.comment:
        payload["comment"] = score.comment
    if score.environment:
        payload["environment"] = score.environment
    if score.metadata:
        payload["metadata"] = score.metadata
    return payload


def shrink_span(span: dict[str, Any], max_chars: int = SHRUNK_FIELD_CHARS) -> dict[str, Any] | None:
    """The span with every long string attribute cut, or None when nothing could be cut."""
    changed = False
    attributes = []
    for attribute in span.get("attributes", []):
        value = attribute.get("value", {})
        text = value.get("stringValue")
        if isinstance(text, str) and len(text) > max_chars:
            text = f"{text[:max_chars]}…[{len(text) - max_chars} characters cut: too large for Langfuse]"
            attribute = {"key": attribute["key"], "value": {"stringValue": text}}
            changed = True
        attributes.append(attribute)
    return {**span, "attributes": attributes} if changed else None


class Delivery:
    def __init__(self, transport: Transport, ledger: Ledger, max_spans: int = 200, max_bytes: int = 3_000_000):
        self.transport = transport
        self.ledger = ledger
        self.max_spans = max_spans
        self.max_bytes = max_bytes

    # ---- spans ----

    def send_spans(self, trace_id: str, spans: list[dict[str, Any]], in_doubt: bool = False,
                   keep_alive: Callable[[], None] = lambda: None) -> SendReport:
        """`keep_alive` runs before each request: a worker renews its lease on the run there (and
        stops, raising, if it lost it — another worker then delivers)."""
        report = SendReport()
        done = self.ledger.accepted(trace_id, (ledger_key(s) for s in spans))
        if in_doubt and len(done) < len(spans):
            try:
                keep_alive()
                present = self.transport.existing_span_ids(trace_id) & {ledger_key(s) for s in spans}
            except DeliveryError as error:
                if not error.transient:
                    raise
                report.transient, report.unsent = error, [s for s in spans if ledger_key(s) not in done]
                report.skipped = sorted(done)
                return report
            self.ledger.record(trace_id, present - done)
            done |= present
        report.skipped = sorted(done)
        pending = [s for s in spans if ledger_key(s) not in done]
        batches = list(self._batches(pending))
        for index, batch in enumerate(batches):
            try:
                self._send_span_batch(trace_id, batch, report, keep_alive)
            except _Stop as stop:
                report.transient = stop.error
                accepted = set(report.accepted)
                report.unsent = [s for b in batches[index:] for s in b if ledger_key(s) not in accepted]
                break
            if report.rejected and report.rejected[-1][1].reason in ACCOUNT_WIDE:
                error = report.rejected[-1][1]
                for rest in batches[index + 1:]:
                    report.rejected.append((rest, error))
                break
        return report

    def _batches(self, spans: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
        batch: list[dict[str, Any]] = []
        size = 0
        for span in spans:
            span_bytes = span_size(span)
            if batch and (len(batch) >= self.max_spans or size + span_bytes > self.max_bytes):
                yield batch
                batch, size = [], 0
            batch.append(span)
            size += span_bytes
        if batch:
            yield batch

    def _send_span_batch(self, trace_id: str, batch: list[dict[str, Any]], report: SendReport,
                         keep_alive: Callable[[], None]) -> None:
        keep_alive()
        try:
            self.transport.export(batch)
        except DeliveryError as error:
            if error.transient:
                raise _Stop(error) from error
            if error.reason in (REJECTED, TOO_LARGE) and len(batch) > 1:
                middle = len(batch) // 2
                self._send_span_batch(trace_id, batch[:middle], report, keep_alive)
                self._send_span_batch(trace_id, batch[middle:], report, keep_alive)
                return
            if error.reason == TOO_LARGE:
                smaller = shrink_span(batch[0])
                if smaller is not None:
                    self._send_span_batch(trace_id, [smaller], report, keep_alive)
                    return
            report.rejected.append((batch, error))
            return
        keys = [ledger_key(s) for s in batch]
        self.ledger.record(trace_id, keys)
        report.accepted.extend(keys)

    # ---- scores ----

    def send_scores(self, trace_id: str, scores: list[dict[str, Any]],
                    keep_alive: Callable[[], None] = lambda: None) -> SendReport:
        report = SendReport()
        done = self.ledger.accepted(trace_id, (ledger_key(s) for s in scores))
        report.skipped = sorted(done)
        pending = [s for s in scores if ledger_key(s) not in done]
        try:
            if pending:
                self._send_score_batch(trace_id, pending, report, keep_alive)
        except _Stop as stop:
            report.transient = stop.error
            accepted = set(report.accepted)
            report.unsent = [s for s in pending if ledger_key(s) not in accepted]
        return report

    def _send_score_batch(self, trace_id: str, batch: list[dict[str, Any]], report: SendReport,
                          keep_alive: Callable[[], None]) -> None:
        keep_alive()
        try:
            outcome = self.transport.post_scores(batch)
        except DeliveryError as error:
            if error.transient:
                raise _Stop(error) from error
            if error.reason == REJECTED and len(batch) > 1:
                for score in batch:
                    self._send_score_batch(trace_id, [score], report, keep_alive)
                return
            report.rejected.append((batch, error))
            return
        if outcome.errors:
            if len(batch) > 1:
                # 207 does not say which scores failed; a score with the same id overwrites, so
                # sending them one by one is harmless and tells.
                for score in batch:
                    self._send_score_batch(trace_id, [score], report, keep_alive)
                return
            report.rejected.append((batch, DeliveryError("; ".join(outcome.errors)[:2000], transient=False)))
            return
        keys = [ledger_key(s) for s in batch]
        self.ledger.record(trace_id, keys)
        report.accepted.extend(keys)
