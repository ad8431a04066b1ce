"""Sending spans and scores exactly once, those of several traces together.

`Delivery.send_spans` consults the ledger before sending, sends in batches bounded by count and
size (the spans of many runs share a request), records each accepted batch in the ledger at
once, splits a batch Langfuse refuses as a whole (400, 413) to keep the good spans and isolate
the bad ones, and stops at the first transient failure so the caller can retry later. The
callers (runs' outboxes, a replay of dead letters) keep their own books with the `SendReport`,
whose keys are (trace id, ledger key) pairs.

A span whose last send ended in doubt (the ledger's doubts) is first looked up in Langfuse's
observations listing; the check never blocks delivery: what the real-time v2 listing does not
show is sent again at once, what a lagging v1 listing does not show yet, or what nothing could
check, is held back and checked again on the next attempt, and sent again unasked once its
doubtful send is `in_doubt_wait` seconds old. Every other span goes out meanwhile.

Scores go as a list; to a server that takes one per request (up to v4.16), one by one.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from codex_langfuse.ingest.items import Item, Span, ledger_key
from codex_langfuse.ingest.ledger import Key, Ledger, by_trace
from codex_langfuse.ingest.observations import Score
from codex_langfuse.ingest.transport import (
    FORBIDDEN,
    NOT_FOUND,
    ONE_SCORE_PER_REQUEST,
    REJECTED,
    TOO_LARGE,
    UNAUTHORIZED,
    DeliveryError,
    Transport,
)

log = logging.getLogger("codex_langfuse.worker")

# Failures that say nothing about the data, everything about the credentials or the address:
# every further request would fail the same way.
ACCOUNT_WIDE = (UNAUTHORIZED, FORBIDDEN, NOT_FOUND)
SHRUNK_FIELD_CHARS = 4000
IN_DOUBT_WAIT = 600.0  # seconds an unconfirmed in-doubt span is held back before it is sent again


def key(item: Item) -> Key:
    """How the ledger knows an item: (its trace id, its ledger key)."""
    return (item.trace_id, item.span_id) if isinstance(item, Span) else (item["traceId"], ledger_key(item))


@dataclass
class SendReport:
    accepted: list[Key] = field(default_factory=list)  # newly accepted by Langfuse
    skipped: list[Key] = field(default_factory=list)  # Langfuse already had them
    rejected: list[tuple[list[Any], DeliveryError]] = field(default_factory=list)
    transient: DeliveryError | None = None  # why sending stopped early
    unsent: list[Any] = field(default_factory=list)  # not sent because of `transient`
    # Accepted, not yet in the ledger (`record_later`): the caller records them with its books.
    unrecorded: list[Key] | None = None


class _Stop(Exception):
    def __init__(self, error: DeliveryError):
        self.error = error


def score_payload(score: Score) -> dict[str, Any]:
    """A score as the scores API takes it (the form kept in the outbox and dead letters). Servers up
    to v4.16 drop `timestamp` and keep the time they received the score; newer ones keep it."""
    timestamp = dt.datetime.fromtimestamp(score.timestamp_us / 1e6, tz=dt.timezone.utc)
    payload: dict[str, Any] = {
        "id": score.id,
        "traceId": score.trace_id,
        "name": score.name,
        "value": score.value,
        "dataType": score.data_type,
        "timestamp": timestamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    if score.observation_id:
        payload["observationId"] = score.observation_id
    if score.comment:
        payload["comment"] = score.comment
    if score.environment:
        payload["environment"] = score.environment
    if score.metadata:
        payload["metadata"] = score.metadata
    return payload


def shrink_span(span: Span, max_chars: int = SHRUNK_FIELD_CHARS) -> Span | None:
    """The span with every long string attribute cut, or None when nothing could be cut."""
    decoded = span.decode()
    changed = False
    attributes = []
    for attribute in decoded.get("attributes", []):
        value = attribute.get("value", {})
        text = value.get("stringValue")
        if isinstance(text, str) and len(text) > max_chars:
            text = f"{text[:max_chars]}…[{len(text) - max_chars} characters cut: too large for Langfuse]"
            attribute = {"key": attribute["key"], "value": {"stringValue": text}}
            changed = True
        attributes.append(attribute)
    return Span.encode({**decoded, "attributes": attributes}) if changed else None


class Delivery:
    def __init__(self, transport: Transport, ledger: Ledger, max_spans: int = 200, max_bytes: int = 3_000_000,
                 in_doubt_wait: float = IN_DOUBT_WAIT, clock: Callable[[], float] = time.time):
        self.transport = transport
        self.ledger = ledger
        self.max_spans = max_spans
        self.max_bytes = max_bytes
        self.in_doubt_wait = in_doubt_wait
        self.clock = clock

    # ---- spans ----

    def send_spans(self, spans: list[Span], keep_alive: Callable[[], None] = lambda: None,
                   record_later: bool = False) -> SendReport:
        """Spans of any traces. `keep_alive` runs before each request: a worker renews its leases
        there (and stops, raising, if it lost one — another worker then delivers). `record_later`:
        what the last request had accepted is left in `unrecorded` (and in doubt) for the caller
        to record; what the earlier ones had is recorded before the next request goes out."""
        report = SendReport(unrecorded=[] if record_later else None)
        done, doubtful = self.ledger.lookup(key(s) for s in spans)
        held: dict[Key, float] = {}
        why = ""
        if doubtful:
            present, held, why = self._check(doubtful, keep_alive)
            self.ledger.record(present)
            done |= present
        report.skipped = sorted(done)
        pending = [s for s in spans if key(s) not in done and key(s) not in held]
        batches = list(self._batches(pending))
        for index, batch in enumerate(batches):
            try:
                self._send_span_batch(batch, report, keep_alive)
            except _Stop as stop:
                report.transient = stop.error
                accepted = set(report.accepted)
                report.unsent = [s for b in batches[index:] for s in b if key(s) not in accepted]
                break
            if report.rejected and report.rejected[-1][1].reason in ACCOUNT_WIDE:
                error = report.rejected[-1][1]
                for rest in batches[index + 1:]:
                    report.rejected.append((rest, error))
                break
        if held:
            report.unsent += [s for s in spans if key(s) in held]
            if report.transient is None:
                oldest = min(held.values())
                report.transient = DeliveryError(
                    f"{len(held)} span(s) sent {self.clock() - oldest:.0f} s ago may be stored: not confirmed by "
                    f"Langfuse ({why}); asking again before sending them again", transient=True)
        return report

    def _check(self, doubtful: dict[Key, float],
               keep_alive: Callable[[], None]) -> tuple[set[Key], dict[Key, float], str]:
        """Of spans whose last send ended in doubt: (those Langfuse has, those still to hold back,
        why they are held). The rest is to be sent again. Langfuse is asked once per trace."""
        present: set[Key] = set()
        held: dict[Key, float] = {}
        why = ""
        for trace_id, ids in by_trace(doubtful).items():
            try:
                keep_alive()
                presence = self.transport.existing_span_ids(trace_id)
            except DeliveryError as error:
                presence, why = None, f"its observations listing did not answer: {error.message[:200]}"
            else:
                why = "its v1 observations listing, which may lag, does not show them yet"
            now = self.clock()
            resend: list[str] = []
            for i in ids:
                sent_at = doubtful[(trace_id, i)]
                if presence is not None and i in presence.span_ids:
                    present.add((trace_id, i))
                elif (presence is not None and presence.realtime) or now - sent_at >= self.in_doubt_wait:
                    resend.append(i)
                else:
                    held[(trace_id, i)] = sent_at
            unconfirmed = [i for i in resend if presence is None or not presence.realtime]
            if unconfirmed:
                log.warning("trace %s: sending %d in-doubt span(s) again after %.0f s without a confirmation (%s); "
                            "if Langfuse stored the first send, it now has two copies", trace_id, len(unconfirmed),
                            self.in_doubt_wait, why)
        return present, held, why

    def _batches(self, spans: list[Span]) -> Iterator[list[Span]]:
        batch: list[Span] = []
        size = 0
        for span in spans:
            span_bytes = len(span.data)
            if batch and (len(batch) >= self.max_spans or size + span_bytes > self.max_bytes):
                yield batch
                batch, size = [], 0
            batch.append(span)
            size += span_bytes
        if batch:
            yield batch

    def _send_span_batch(self, batch: list[Span], report: SendReport, keep_alive: Callable[[], None]) -> None:
        keep_alive()
        keys = [key(s) for s in batch]
        # Unmarked once the answer says; what earlier requests had accepted is recorded at once.
        self.ledger.doubt(keys, self.clock(), record=self._recorded_now(report))
        try:
            self.transport.export(batch)
        except DeliveryError as error:
            if not error.in_doubt:
                self.ledger.settle(keys)
            if error.transient:
                raise _Stop(error) from error
            if error.reason in (REJECTED, TOO_LARGE) and len(batch) > 1:
                middle = len(batch) // 2
                self._send_span_batch(batch[:middle], report, keep_alive)
                self._send_span_batch(batch[middle:], report, keep_alive)
                return
            if error.reason == TOO_LARGE:
                smaller = shrink_span(batch[0])
                if smaller is not None:
                    self._send_span_batch([smaller], report, keep_alive)
                    return
            report.rejected.append((batch, error))
            return
        self._accepted(report, keys)

    def _accepted(self, report: SendReport, keys: list[Key]) -> None:
        report.accepted.extend(keys)
        if report.unrecorded is None:
            self.ledger.record(keys)
        else:
            report.unrecorded.extend(keys)

    @staticmethod
    def _recorded_now(report: SendReport) -> list[Key]:
        """What is left to record before another request goes out (taken out of the report)."""
        if not report.unrecorded:
            return []
        pending, report.unrecorded = report.unrecorded, []
        return pending

    # ---- scores ----

    def send_scores(self, scores: list[dict[str, Any]], keep_alive: Callable[[], None] = lambda: None,
                    record_later: bool = False) -> SendReport:
        """Scores of any traces, in one request where the server takes a list (split only when it
        refuses some). `record_later` as for spans."""
        report = SendReport(unrecorded=[] if record_later else None)
        done = self.ledger.accepted(key(s) for s in scores)
        report.skipped = sorted(done)
        pending = [s for s in scores if key(s) not in done]
        try:
            if pending:
                self._send_score_batch(pending, report, keep_alive)
        except _Stop as stop:
            report.transient = stop.error
            accepted = set(report.accepted)
            report.unsent = [s for s in pending if key(s) not in accepted]
        return report

    def _send_score_batch(self, batch: list[dict[str, Any]], report: SendReport,
                          keep_alive: Callable[[], None]) -> None:
        if len(batch) > 1 and self.transport.one_score_per_request:
            for score in batch:
                self._send_score_batch([score], report, keep_alive)
            return
        keep_alive()
        self.ledger.record(self._recorded_now(report))
        try:
            outcome = self.transport.post_scores(batch)
        except DeliveryError as error:
            if error.transient:
                raise _Stop(error) from error
            if error.reason == ONE_SCORE_PER_REQUEST:  # the transport switched: the same scores, one by one
                for score in batch:
                    self._send_score_batch([score], report, keep_alive)
                return
            if error.reason == REJECTED and len(batch) > 1:
                for score in batch:
                    self._send_score_batch([score], report, keep_alive)
                return
            report.rejected.append((batch, error))
            return
        if outcome.errors:
            if len(batch) > 1:
                # 207 does not say which scores failed; a score with the same id overwrites, so
                # sending them one by one is harmless and tells.
                for score in batch:
                    self._send_score_batch([score], report, keep_alive)
                return
            report.rejected.append((batch, DeliveryError("; ".join(outcome.errors)[:2000], transient=False)))
            return
        self._accepted(report, [key(s) for s in batch])
