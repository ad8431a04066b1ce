"""Delivery against each server profile, in one process: the receiver in a thread, the ledger in
fakeredis, the clock in the test's hands (so in-doubt waits pass without sleeping).

What differs between Langfuse servers (tests/support/langfuse_receiver.py PROFILES): the shape the
scores route takes, whether a real-time observations listing exists, and how far the v1 one lags.
"""

from __future__ import annotations

import fakeredis
import pytest

from codex_langfuse.ingest.delivery import Delivery
from codex_langfuse.ingest.items import Span
from codex_langfuse.ingest.keys import Keys
from codex_langfuse.ingest.ledger import Ledger
from codex_langfuse.ingest.transport import LangfuseTransport
from tests.support.langfuse_receiver import LangfuseReceiver

TRACE = "0af7651916cd43dd8448eb211c80319c"
T0 = 1_790_000_000_000_000_000
WAIT = 600.0


def span(span_id: str) -> Span:
    return Span.encode({"traceId": TRACE, "spanId": span_id, "name": "step", "kind": 1, "startTimeUnixNano": str(T0),
            "endTimeUnixNano": str(T0 + 1000),
            "attributes": [{"key": "langfuse.observation.type", "value": {"stringValue": "span"}}]})


def score(name: str, value: float = 1.0) -> dict:
    return {"id": f"{TRACE}-{name}", "traceId": TRACE, "name": name, "value": value, "dataType": "NUMERIC",
            "timestamp": "2026-09-21T10:00:00.000Z"}


SPANS = [span(f"{i:016x}") for i in range(1, 6)]
KEYS = [(TRACE, s.span_id) for s in SPANS]


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def make():
    made = []

    def build(profile: str, **receiver_options):
        receiver = LangfuseReceiver(profile=profile, **receiver_options).start()
        made.append(receiver)
        transport = LangfuseTransport(receiver.base_url, receiver.public_key, receiver.secret_key, timeout=1.0)
        clock = Clock()
        ledger = Ledger(fakeredis.FakeRedis(), Keys(), ttl=3600, destination="test")
        return receiver, Delivery(transport, ledger, max_spans=2, in_doubt_wait=WAIT, clock=clock), clock

    yield build
    for receiver in made:
        receiver.close()


# ---- scores ----

@pytest.mark.parametrize("profile", ["v4.16", "v3"])
def test_scores_reach_a_server_that_takes_one_per_request_and_the_process_remembers(make, profile):
    receiver, delivery, _ = make(profile)
    report = delivery.send_scores([score("success"), score("errors", 0.0)])
    assert report.rejected == [] and report.transient is None and len(report.accepted) == 2
    first = [r.status for r in receiver.requests("scores")]
    assert first == [400, 200, 200]  # the list refused for its shape, then one object per request
    assert "Invalid request data" in receiver.requests("scores")[0].error
    delivery.send_scores([score("files_changed", 3.0), score("failed_commands", 1.0)])
    assert [r.status for r in receiver.requests("scores")][len(first):] == [200, 200]  # no list again
    assert sorted(s.name for s in receiver.scores()) == ["errors", "failed_commands", "files_changed", "success"]
    # sent again: the ledger has them
    assert delivery.send_scores([score("success")]).skipped and len(receiver.requests("scores")) == 5


def test_scores_go_as_one_list_to_the_latest_server(make):
    receiver, delivery, _ = make("latest")
    report = delivery.send_scores([score("success"), score("errors", 0.0)])
    assert len(report.accepted) == 2
    assert [r.status for r in receiver.requests("scores")] == [202]


@pytest.mark.parametrize("profile", ["v4.16", "v3"])
def test_a_score_the_server_refuses_is_rejected_alone(make, profile):
    receiver, delivery, _ = make(profile)
    bad = score("success") | {"dataType": "BOOLEAN", "value": 7}
    report = delivery.send_scores([bad, score("errors", 0.0)])
    assert [item["name"] for batch, _ in report.rejected for item in batch] == ["success"]
    assert "0 or 1" in report.rejected[0][1].message
    assert [s.name for s in receiver.scores()] == ["errors"]


# ---- several traces at once ----

def test_the_spans_of_two_traces_share_a_request_and_each_trace_keeps_its_own_ledger(make):
    receiver, delivery, _ = make("latest")
    other = "1" * 32
    theirs = Span.encode({**SPANS[0].decode(), "traceId": other})  # the same span id in another trace
    report = delivery.send_spans([SPANS[0], theirs])
    assert report.transient is None and sorted(report.accepted) == sorted([(TRACE, SPANS[0].span_id),
                                                                          (other, theirs.span_id)])
    assert len(receiver.requests("traces")) == 1
    assert {(s.trace_id, s.span_id) for s in receiver.spans()} == set(report.accepted)
    assert delivery.ledger.accepted([(TRACE, SPANS[0].span_id), (other, theirs.span_id), (other, SPANS[1].span_id)]) \
        == set(report.accepted)
    again = delivery.send_spans([SPANS[0], theirs])
    assert again.accepted == [] and len(again.skipped) == 2 and len(receiver.requests("traces")) == 1


def test_what_the_last_request_accepted_is_left_for_the_caller_to_record_with_its_books(make):
    receiver, delivery, _ = make("latest")
    report = delivery.send_spans(SPANS, record_later=True)  # 3 requests of at most 2 spans
    assert len(receiver.requests("traces")) == 3 and len(report.accepted) == 5
    assert report.unrecorded == KEYS[4:]  # the earlier requests' spans were recorded before the next went out
    assert delivery.ledger.accepted(KEYS) == set(KEYS[:4])
    assert set(delivery.ledger.doubtful(KEYS)) == set(KEYS[4:])  # until recorded, in doubt
    delivery.ledger.record(report.unrecorded)
    assert delivery.ledger.accepted(KEYS) == set(KEYS) and delivery.ledger.doubtful(KEYS) == {}


# ---- spans whose send ended in doubt ----

@pytest.mark.parametrize("profile", ["latest", "v4.16", "v3"])
def test_a_timed_out_send_that_was_stored_is_found_and_not_sent_again(make, profile):
    receiver, delivery, clock = make(profile, v1_lag=0.0)
    receiver.delay("traces", 3.0, times=1, store=True)  # stored at once, answered after the client gave up
    first = delivery.send_spans(SPANS)
    assert first.transient is not None and first.transient.in_doubt
    clock.now += 5
    second = delivery.send_spans(SPANS)
    assert second.transient is None and second.rejected == []
    assert receiver.duplicates() == {}
    assert {s.span_id for s in receiver.spans()} == {s.span_id for s in SPANS}
    paths = {r.path for r in receiver.requests("observations")}
    assert paths == ({"/api/public/v2/observations", "/api/public/observations"} if profile == "v3"
                     else {"/api/public/v2/observations"})


def test_a_lagging_v1_listing_holds_the_in_doubt_spans_back_and_lets_the_rest_go(make):
    receiver, delivery, clock = make("v3", v1_lag=3600.0)
    receiver.reset_connection("traces", times=1, store=True)  # the first batch (2 spans) stored, no answer
    first = delivery.send_spans(SPANS)
    assert first.transient is not None and first.transient.in_doubt
    clock.now += 10
    second = delivery.send_spans(SPANS)
    # the 3 spans never sent go out; the 2 in doubt are not visible yet and are held back
    assert len(second.accepted) == 3 and len(second.unsent) == 2
    assert second.transient is not None and "may lag" in second.transient.message
    assert receiver.duplicates() == {}
    receiver.set_v1_lag(0.0)  # the listing caught up
    clock.now += 10
    third = delivery.send_spans(SPANS)
    assert third.transient is None and len(third.skipped) == 5
    assert receiver.duplicates() == {}


@pytest.mark.parametrize("profile", ["latest", "v4.16", "v3"])
def test_when_no_listing_answers_in_doubt_spans_are_sent_again_after_the_wait(make, profile):
    receiver, delivery, clock = make(profile)
    receiver.reset_connection("traces", times=1, store=False)  # nothing stored, but the client cannot know
    delivery.send_spans(SPANS)
    receiver.delay("observations", 3.0, times=100, store=True)  # slower than the client's 1 s timeout
    clock.now += 10
    held = delivery.send_spans(SPANS)
    assert len(held.unsent) == 2 and "did not answer" in held.transient.message
    assert len(receiver.spans()) == 3
    clock.now += WAIT
    last = delivery.send_spans(SPANS)
    assert last.transient is None and len(last.accepted) == 2
    assert {s.span_id for s in receiver.spans()} == {s.span_id for s in SPANS}
    assert receiver.duplicates() == {}


def test_a_real_time_listing_that_lacks_an_in_doubt_span_sends_it_again_at_once(make):
    receiver, delivery, clock = make("v4.16")
    receiver.reset_connection("traces", times=1, store=False)
    delivery.send_spans(SPANS)
    clock.now += 1
    report = delivery.send_spans(SPANS)
    assert report.transient is None and len(report.accepted) == 5
    assert receiver.duplicates() == {}


def test_a_refused_or_unreached_send_leaves_no_doubt(make):
    receiver, delivery, clock = make("v4.16")
    receiver.fail("traces", 503, times=1)   # answered: not stored
    delivery.send_spans(SPANS)
    assert delivery.ledger.doubtful(KEYS) == {}
    receiver.reset_connection("traces", times=1)
    delivery.send_spans(SPANS)
    assert set(delivery.ledger.doubtful(KEYS)) == set(KEYS[:2])
    clock.now += 1
    delivery.send_spans(SPANS)
    assert delivery.ledger.doubtful(KEYS) == {}
