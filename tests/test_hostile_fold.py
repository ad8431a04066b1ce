"""Folding never raises on content: the hostile runs of issue 8 fold into their root and their
valid observations, with the bad part as a WARNING event; caps per run; duplicate sequence
numbers shown (ingest/fold.py over ingest/entries.py)."""

from __future__ import annotations

import json

import pytest

from codex_langfuse.ingest.content import ContentPolicy
from codex_langfuse.ingest.delivery import score_payload
from codex_langfuse.ingest.entries import Entry
from codex_langfuse.ingest.fold import FoldContext, abandon, fold, new_state, set_aside
from codex_langfuse.ingest.otlp import encode_span
from tests.support.runs import DEFAULT_RUN_ID, fixture_lines, json_entry, run_entries, ts_of

RUN = DEFAULT_RUN_ID
FULL = "real_run_0.169.0_full.jsonl"
CTX = FoldContext()


def renumbered(entries: list[Entry]) -> list[Entry]:
    return [e.model_copy(update={"seq": i, "ts": ts_of(i), "run": RUN}) for i, e in enumerate(entries)]


def with_inserted(entry: Entry, at: int = 3, lines: list[str] | None = None) -> list[Entry]:
    entries = run_entries(fixture_lines(FULL) if lines is None else lines)
    entries.insert(at, entry)
    return renumbered(entries)


def folded_and_encoded(entries: list[Entry], ctx: FoldContext = CTX):
    result = fold(new_state(RUN), entries, ctx)
    spans = [encode_span(o, ContentPolicy()) for o in result.observations]  # what a worker does next
    scores = [score_payload(s) for s in result.scores]
    json.dumps(spans), json.dumps(scores), result.state.model_dump_json()
    return result


def clean_run_names() -> list[str]:
    return sorted(o.name for o in fold(new_state(RUN), run_entries(fixture_lines(FULL)), CTX).observations)


def deep_unknown_item(depth: int) -> str:
    return ('{"type":"item.completed","item":{"id":"deep","type":"mystery","v":' + '{"a":' * depth + "1"
            + "}" * depth + "}}")


HOSTILE = {
    "start with user_id 5": Entry(run=RUN, seq=0, ts=0, kind="meta", data=json.dumps({"user_id": 5, "model": "m"})),
    "score of a 400-digit integer": Entry(run=RUN, seq=0, ts=0, kind="score",
                                          data='{"name": "big", "value": ' + "7" * 400 + "}"),
    "start data of 100k [": Entry(run=RUN, seq=0, ts=0, kind="meta", data="[" * 100_000),
    "score data of 100k [": Entry(run=RUN, seq=0, ts=0, kind="score", data="[" * 100_000),
    "line of 100k [": Entry(run=RUN, seq=0, ts=0, kind="line", data="[" * 100_000),
    "unknown item nested 600 deep": Entry(run=RUN, seq=0, ts=0, kind="line", data=deep_unknown_item(600)),
    "invalid JSON in a meta": Entry(run=RUN, seq=0, ts=0, kind="meta", data='{"name": '),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_entry_becomes_an_event_and_the_run_goes_on(case):
    result = folded_and_encoded(with_inserted(HOSTILE[case]))
    names = sorted(o.name for o in result.observations)
    assert result.state.closed
    root = next(o for o in result.observations if o.type == "agent")
    assert root.level == "DEFAULT"  # the run itself succeeded
    bad = [o for o in result.observations if o.metadata.get("seq") == 3]
    assert len(bad) == 1, names
    assert bad[0].name in ("invalid_entry", "invalid_line", "item:mystery")
    # every observation the clean run has is there too, plus the one showing the bad entry
    assert sorted(n for n in names if n != bad[0].name) == clean_run_names()


def test_the_start_with_user_id_5_keeps_its_other_fields_and_names_the_bad_one():
    entries = run_entries(fixture_lines(FULL), meta={"user_id": 5, "name": "nightly", "model": "gpt-5-codex"})
    result = folded_and_encoded(entries)
    root = next(o for o in result.observations if o.type == "agent")
    assert (root.trace.name, root.trace.user_id, root.trace.metadata["model"]) == ("nightly", None, "gpt-5-codex")
    event = next(o for o in result.observations if o.name == "invalid_entry")
    assert (event.level, event.status_message) == ("WARNING", "start entry: user_id: Input should be a valid string")
    assert root.metadata["counters"]["invalid_entries"] == 1


def test_a_turn_failed_message_of_100k_brackets_is_the_failure_as_it_was():
    lines = fixture_lines(FULL)[:-1] + [json.dumps({"type": "turn.failed", "error": {"message": "[" * 100_000}})]
    result = folded_and_encoded(renumbered(run_entries(lines)))
    root = next(o for o in result.observations if o.type == "agent")
    assert root.level == "ERROR"
    assert root.status_message == "[" * 500  # first_line's cap: the message is not JSON, so it is shown as is


def test_an_unknown_item_nested_600_deep_is_kept_cut_at_the_depth_limit():
    result = folded_and_encoded(with_inserted(HOSTILE["unknown item nested 600 deep"]))
    event = next(o for o in result.observations if o.name == "item:mystery")
    text = json.dumps(event.output)
    assert "nested deeper than 64 levels" in text and text.count("{") <= 64


def test_invalid_json_in_start_score_and_end_becomes_an_event_each():
    entries = run_entries(fixture_lines(FULL))
    entries[0] = entries[0].model_copy(update={"data": "{oops"})
    entries.insert(4, json_entry(RUN, 0, "score", {}, 0).model_copy(update={"data": "not json"}))
    entries[-1] = entries[-1].model_copy(update={"data": "[1, 2"})
    result = folded_and_encoded(renumbered(entries))
    shown = sorted((o.metadata["kind"], o.status_message.split(":")[1].strip()) for o in result.observations
                   if o.name == "invalid_entry")
    assert shown == [("end", "data"), ("score", "data"), ("start", "data")]
    assert result.state.closed  # the end still ended the run


def test_after_the_first_k_invalid_lines_one_summary_with_a_count_and_samples():
    lines = fixture_lines(FULL)
    junk = [f"junk line {i} \x00 not json" for i in range(250)]
    result = folded_and_encoded(renumbered(run_entries(lines[:2] + junk + lines[2:])),
                                FoldContext(max_problem_events=20))
    shown = [o for o in result.observations if o.name == "invalid_line"]
    assert len(shown) == 20
    summary = [o for o in result.observations if o.name == "problems_not_shown"]
    assert len(summary) == 1
    assert summary[0].level == "WARNING"
    assert summary[0].metadata == {"count": 230, "by_kind": {"invalid_line": 230}}
    assert [s["output"] for s in summary[0].output] == [f"junk line {i} \x00 not json" for i in range(20, 25)]
    root = next(o for o in result.observations if o.type == "agent")
    assert root.metadata["counters"]["invalid_lines"] == 250
    assert sorted(o.name for o in result.observations if o.name not in ("invalid_line", "problems_not_shown")) \
        == clean_run_names()


def test_observations_past_the_cap_are_summarised_and_the_root_still_sent():
    lines = fixture_lines(FULL)
    result = folded_and_encoded(run_entries(lines), FoldContext(max_observations=3))
    sent = [o for o in result.observations if o.type != "agent" and o.name != "observations_not_sent"]
    assert len(sent) == 3
    summary = next(o for o in result.observations if o.name == "observations_not_sent")
    hidden = len(clean_run_names()) - 1 - 3  # all but the root and the three sent
    assert summary.metadata["count"] == hidden == sum(summary.metadata["by_kind"].values())
    assert sum(1 for o in result.observations if o.type == "agent") == 1


def test_the_caps_hold_across_fold_steps():
    lines = fixture_lines(FULL)
    entries = renumbered(run_entries(lines[:2] + [f"junk {i}" for i in range(30)] + lines[2:]))
    ctx = FoldContext(max_problem_events=10)
    at_once = fold(new_state(RUN), entries, ctx)
    state, stepped = new_state(RUN), []
    for start in range(0, len(entries), 7):
        step = fold(state, entries[start:start + 7], ctx)
        state, stepped = step.state, stepped + step.observations
    assert stepped == at_once.observations


def test_a_duplicate_seq_with_other_data_is_counted_and_shown():
    entries = run_entries(fixture_lines(FULL))
    conflict = {"seq": 2, "ts": ts_of(2), "kind": "line", "data": '{"type":"other"}', "digest": "ab12",
                "first_digest": "cd34", "inst": "0123456789abcdef"}
    result = fold(new_state(RUN), entries, CTX, [conflict])
    event = next(o for o in result.observations if o.name == "duplicate_entry")
    assert event.level == "WARNING"
    assert event.output == '{"type":"other"}'
    assert event.metadata["inst"] == "0123456789abcdef" and event.metadata["seq"] == 2
    assert result.state.counters.duplicate_entries == 1
    again = fold(new_state(RUN), entries, CTX, [conflict])
    assert [o.id for o in again.observations] == [o.id for o in result.observations]  # stable ids


def test_set_aside_and_abandon_move_a_run_past_what_cannot_be_folded():
    state = new_state(RUN)
    entry = Entry(run=RUN, seq=0, ts=ts_of(0), kind="line", data="{}")
    moved = set_aside(state, entry)
    assert (moved.next_seq, moved.counters.unfoldable_entries, state.next_seq) == (1, 1, 0)
    ended = abandon(moved, "fold failed: boom")
    assert ended.closed and ended.end["reason"] == "fold_failed" and not moved.closed


def test_a_conflict_read_after_the_run_ended_is_a_late_entry_of_it():
    """A producer that sends no `inst` reused the run id after it closed: its entries conflict with
    the folded ones and are later than the run's end, so they are late entries, not duplicates."""
    entries = run_entries(fixture_lines(FULL))
    done = fold(new_state(RUN), entries, CTX)
    later = {"seq": 1, "ts": entries[-1].ts + 10_000_000, "kind": "line", "data": '{"type":"thread.started"}',
             "digest": "ab12", "first_digest": "cd34"}
    after = fold(done.state, [], CTX, [later])
    [event] = after.observations
    assert (event.name, event.level) == ("late_entry", "WARNING")
    assert after.state.counters.late_entries == 1 and after.state.counters.duplicate_entries == 0
