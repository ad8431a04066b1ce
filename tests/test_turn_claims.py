"""Who counts a turn of a thread (ingest/turn_claims.py): the first claim of a window wins,
atomically; claims are idempotent per run; the live side's generation then carries no usage."""

from __future__ import annotations

import threading

import fakeredis
import pytest

from codex_langfuse.ingest.fold import FoldContext, fold, new_state
from codex_langfuse.ingest.keys import Keys
from codex_langfuse.ingest.turn_claims import TurnClaims
from tests.support.runs import fixture_entries


@pytest.fixture
def claims():
    return TurnClaims(fakeredis.FakeRedis(), Keys(), ttl=3600)


def test_the_first_claim_of_a_window_wins(claims):
    assert claims.claim("t", "live", 100, 200) == "live"
    assert claims.claim("t", "import", 150, 250) == "live"  # overlaps: counted already
    assert claims.claim("t", "import", 190, 190) == "live"
    assert claims.claim("t", "next-turn", 201, 300) == "next-turn"  # after it: another turn
    assert claims.claim("other-thread", "import", 150, 250) == "import"
    assert claims.owner("t", 120, 130) == "live" and claims.owner("t", 400, 500) is None


def test_claiming_again_is_idempotent_and_widens_the_window(claims):
    assert claims.claim("t", "run", 100, 200) == "run"
    assert claims.claim("t", "run", 100, 200) == "run"
    assert claims.claim("t", "run", 150, 300) == "run"
    assert claims.claim("t", "late", 250, 260) == "run"
    assert claims.redis.ttl(Keys().thread_claims("t")) > 0


def test_concurrent_claims_have_one_winner(claims):
    winners = []

    def take(name):
        winners.append(claims.claim("t", name, 100, 200))

    threads = [threading.Thread(target=take, args=(f"run-{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(winners)) == 1


def test_a_live_turn_already_counted_by_an_import_is_sent_without_usage(claims):
    entries = fixture_entries("real_run_0.169.0_full.jsonl", run_id="live-1")
    thread = "01a21390-6edf-7eb3-9199-ed2d883b1952"
    claims.claim(thread, "codex:imported", entries[0].ts, entries[-1].ts)
    result = fold(new_state("live-1"), entries, FoldContext(claim_turn=claims.claim))
    generation = [o for o in result.observations if o.type == "generation"][0]
    assert generation.usage_details is None and generation.cost_details is None
    assert generation.metadata["usage_counted_by"]["run_id"] == "codex:imported"
    assert generation.metadata["usage_not_counted"]["input_tokens"] > 0
    root = [o for o in result.observations if o.type == "agent"][0]
    assert root.trace_id == result.state.trace_id  # the live trace still exists under its promised id
    assert root.metadata["usage"]["input_tokens"] == 0


def test_a_live_turn_nobody_counted_keeps_its_usage_and_claims_the_window(claims):
    entries = fixture_entries("real_run_0.169.0_full.jsonl", run_id="live-2")
    result = fold(new_state("live-2"), entries, FoldContext(claim_turn=claims.claim))
    generation = [o for o in result.observations if o.type == "generation"][0]
    assert generation.usage_details["input"] > 0
    thread = "01a21390-6edf-7eb3-9199-ed2d883b1952"
    assert claims.owner(thread, entries[1].ts, entries[-1].ts) == "live-2"
