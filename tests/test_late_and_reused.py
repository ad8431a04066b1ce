"""The pure side of reused run ids, late entries and Codex's stderr (ingest/fold.py).

A run filed under `<run id>/<inst>` (a later run that reused the id) goes to the same trace with
observation and score ids of its own; entries for a closed run never re-open it; copies of
folded entries change nothing; Codex's stderr lands on the root observation.
"""

from __future__ import annotations

import json

from codex_langfuse.ingest.fold import FoldContext, close, fold, new_state, skip_gap
from codex_langfuse.ingest.observations import trace_id
from codex_langfuse.ingest.pricing import PriceTable
from tests.support.runs import fixture_entries, json_entry, line_entry, ts_of

CTX = FoldContext(prices=PriceTable.load())
FULL = "real_run_0.169.0_full.jsonl"
RUN = "ci-job-42"


def test_a_later_run_of_a_reused_id_has_its_own_observations_in_the_same_trace():
    first = fold(new_state(RUN), fixture_entries(FULL, run_id=RUN, meta={"model": "gpt-5-codex"}), CTX)
    second = fold(new_state(f"{RUN}/0123456789abcdef"),
                  fixture_entries(FULL, run_id=RUN, meta={"model": "gpt-5-codex"}), CTX)
    assert {o.trace_id for o in first.observations} == {o.trace_id for o in second.observations} == {trace_id(RUN)}
    assert not {o.id for o in first.observations} & {o.id for o in second.observations}
    assert len(first.observations) == len(second.observations)
    assert not {s.id for s in first.scores} & {s.id for s in second.scores}
    assert sorted(s.name for s in first.scores) == sorted(s.name for s in second.scores)
    [root] = [o for o in second.observations if o.type == "agent"]
    assert root.trace.metadata["run_id"] == RUN and root.trace.metadata["run_instance"] == "0123456789abcdef"
    assert second.state.seed == f"{RUN}/0123456789abcdef" and first.state.seed == RUN


def closed_run():
    entries = fixture_entries(FULL, run_id=RUN, meta={"model": "gpt-5-codex"})
    return entries, fold(new_state(RUN), entries, CTX)


def test_copies_of_folded_entries_change_nothing_once_closed():
    entries, done = closed_run()
    again = fold(done.state, entries, CTX)
    assert (again.observations, again.scores) == ([], [])
    assert again.state == done.state


def test_an_entry_for_a_closed_run_is_a_late_event_and_never_reopens_it():
    entries, done = closed_run()
    last = entries[-1]
    late_line = line_entry(RUN, last.seq + 1, '{"type":"item.completed","item":{"id":"x","type":"agent_message",'
                                               '"text":"printed after the end"}}', last.ts + 5_000_000)
    heartbeat = json_entry(RUN, last.seq + 2, "meta", {}, last.ts + 6_000_000)
    score = json_entry(RUN, last.seq + 3, "score", {"name": "reviewed", "value": 1, "data_type": "BOOLEAN"},
                       last.ts + 7_000_000)
    after = fold(done.state, [late_line, heartbeat, score], CTX)
    assert after.state.closed and after.state.counters.late_entries == 2
    [event] = after.observations
    assert (event.type, event.name, event.level) == ("event", "late_entry", "WARNING")
    assert "printed after the end" in event.output
    assert event.status_message == f"line entry #{late_line.seq} arrived after the run was closed"
    assert [s.name for s in after.scores] == ["reviewed"]
    # the same late entry again (a spool sent twice): the same event id, so it is sent once
    again = fold(after.state, [late_line], CTX)
    assert [o.id for o in again.observations] in ([], [event.id])


def test_a_reuse_without_inst_arrives_as_late_events_not_lost():
    """A producer that sends no `inst` reuses the run id after the first run closed: its entries
    have sequence numbers already folded, but were read after the run ended."""
    entries, done = closed_run()
    later = [e.model_copy(update={"ts": e.ts + 10_000_000_000}) for e in entries[:3]]
    after = fold(done.state, later, CTX)
    assert len(after.observations) == 3 and {o.name for o in after.observations} == {"late_entry"}
    assert after.state.counters.late_entries == 3


def test_entries_given_up_as_lost_are_kept_when_they_come():
    entries = fixture_entries(FULL, run_id=RUN, meta={"model": "gpt-5-codex"})
    head = fold(new_state(RUN), entries[:3], CTX)
    skipped = skip_gap(head.state, 5, ts_of(6), CTX)
    arrived = fold(skipped.state, entries[3:5], CTX)
    assert [o.name for o in arrived.observations] == ["late_entry", "late_entry"]
    assert "after it was given up as lost" in arrived.observations[0].status_message


def test_codex_stderr_is_on_the_root_observation():
    stderr = "Not inside a trusted directory and --skip-git-repo-check was not specified.\n"
    entries = [json_entry(RUN, 0, "start", {"prompt": "hi"}, ts_of(0)),
               json_entry(RUN, 1, "end", {"exit_code": 1, "signal": None, "reason": "exited", "stderr": stderr},
                          ts_of(1))]
    result = fold(new_state(RUN), entries, CTX)
    [root] = [o for o in result.observations if o.type == "agent"]
    assert root.level == "ERROR"
    assert root.status_message == ("aborted: no output from codex (exit code 1); codex stderr: Not inside a trusted "
                                   "directory and --skip-git-repo-check was not specified.")
    assert root.metadata["stderr"] == stderr


def test_the_worker_release_is_a_default_a_run_can_override():
    entries = fixture_entries(FULL, run_id=RUN, meta={"model": "gpt-5-codex", "codex_version": "0.169.0"})
    ctx = FoldContext(prices=CTX.prices, release="deploy-7")
    assert {o.trace.release for o in fold(new_state(RUN), entries, ctx).observations} == {"deploy-7"}
    own = [entries[0].model_copy(update={"data": json.dumps({"release": "mine"})}), *entries[1:]]
    assert {o.trace.release for o in fold(new_state(RUN), own, ctx).observations} == {"mine"}
    assert {o.trace.release for o in fold(new_state(RUN), entries, CTX).observations} == {"0.169.0"}


def test_closing_an_idle_run_twice_makes_one_root():
    entries = fixture_entries(FULL, run_id=RUN, end=False)
    open_run = fold(new_state(RUN), entries, CTX)
    closed = close(open_run.state, ts_of(99), "idle", CTX)
    assert [o.type for o in closed.observations].count("agent") == 1
    assert close(closed.state, ts_of(100), "idle", CTX).observations == []
