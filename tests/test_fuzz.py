"""Property-based tests (hypothesis): random and mutated stream entries and Codex lines through the
dispatcher's validation and filing (fakeredis) and through the fold.

What must hold for any input: no exception escapes; every entry is accounted for (filed or
poisoned with a reason; folded into an observation, an event, a counter or the run's state); the
output is deterministic, however the run is cut into fold steps; what the fold returns can be
encoded for Langfuse and its state stored and read back.

Run time is kept to a few tens of seconds (profile "suite"); `HYPOTHESIS_PROFILE=deep` runs
many more examples.
"""

from __future__ import annotations

import json
import os

import fakeredis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codex_langfuse.ingest.content import ContentPolicy
from codex_langfuse.ingest.delivery import score_payload
from codex_langfuse.ingest.dispatcher import Dispatcher
from codex_langfuse.ingest.entries import Entry, InvalidEntry, run_key
from codex_langfuse.ingest.events import Usage, parse_line
from codex_langfuse.ingest.fold import UNCAPPED, FoldContext, RunState, fold, new_state
from codex_langfuse.ingest.otlp import encode_span
from codex_langfuse.ingest.pricing import PriceTable
from codex_langfuse.ingest.settings import Settings
from tests.conftest import CODEX_FIXTURES

settings.register_profile("suite", max_examples=250, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("deep", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))

RUN = "fuzz-run"
T0 = 1_795_624_547_000_000
PRICES = PriceTable.load()
REAL_LINES = sorted({line for path in sorted(CODEX_FIXTURES.glob("*.jsonl"))
                     for line in path.read_text(encoding="utf-8").splitlines() if line.strip()})
# Codex's session files (what `import` and `follow` ship, folded when the start says "rollout")
ROLLOUT_LINES = sorted({line for path in sorted((CODEX_FIXTURES.parent / "rollouts").rglob("*.jsonl"))
                        for line in path.read_text(encoding="utf-8").splitlines() if line.strip()})
FIELDS = ("v", "run", "seq", "ts", "kind", "data", "trunc")

# ---- values ----------------------------------------------------------------------------------------

leaves = (st.none() | st.booleans() | st.integers(min_value=-(10**40), max_value=10**40)
          | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
json_values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=16)
KNOWN_TYPES = ["thread.started", "turn.started", "turn.completed", "turn.failed", "error", "item.started",
               "item.updated", "item.completed", "session.created", "mystery.event"]
ITEM_TYPES = ["agent_message", "reasoning", "command_execution", "file_change", "mcp_tool_call",
              "collab_tool_call", "web_search", "todo_list", "error", "unknown_item"]
LEGACY_TYPES = ["task_started", "task_complete", "turn_aborted", "token_count", "agent_reasoning",
                "agent_message", "plan_update", "error", "exec_command_begin", "exec_command_end",
                "patch_apply_begin", "patch_apply_end", "web_search_begin", "web_search_end",
                "mcp_tool_call_begin", "mcp_tool_call_end", "brand_new"]


def nested(depth: int, leaf: str = "1") -> str:
    return '{"a":' * depth + leaf + "}" * depth


@st.composite
def current_lines(draw) -> str:
    obj = {"type": draw(st.sampled_from(KNOWN_TYPES))}
    if draw(st.booleans()):
        item = draw(st.dictionaries(st.sampled_from(["id", "type", "text", "command", "aggregated_output",
                                                     "exit_code", "status", "changes", "server", "tool",
                                                     "arguments", "result", "error", "query", "action",
                                                     "items", "item_type"]), json_values, max_size=6))
        if draw(st.booleans()):
            item["type"] = draw(st.sampled_from(ITEM_TYPES))
            item["id"] = draw(st.sampled_from(["item_0", "item_1", "item_2"]))
        obj["item"] = item
    for key in draw(st.lists(st.sampled_from(["usage", "thread_id", "message", "error"]), max_size=3)):
        if key == "usage" and draw(st.booleans()):
            obj[key] = draw(st.dictionaries(st.sampled_from(["input_tokens", "cached_input_tokens", "output_tokens",
                                                             "reasoning_output_tokens"]), json_values, max_size=4))
        else:
            obj[key] = draw(json_values)
    return json.dumps(obj)


@st.composite
def legacy_lines(draw) -> str:
    msg = {"type": draw(st.sampled_from(LEGACY_TYPES))}
    msg.update(draw(st.dictionaries(st.sampled_from(["call_id", "command", "duration", "info", "invocation",
                                                     "result", "changes", "plan", "message", "success",
                                                     "exit_code", "input_tokens", "last_agent_message"]),
                                    json_values, max_size=5)))
    return json.dumps({"id": draw(st.sampled_from(["0", "1"])), "msg": msg})


@st.composite
def mutated_real_lines(draw) -> str:
    line = draw(st.sampled_from(REAL_LINES + ROLLOUT_LINES))
    how = draw(st.sampled_from(["cut", "insert", "replace_value", "deepen", "as_is"]))
    if how == "cut":
        return line[:draw(st.integers(0, len(line)))]
    if how == "insert":
        at = draw(st.integers(0, len(line)))
        return line[:at] + draw(st.text(max_size=6)) + line[at:]
    if how == "deepen":
        at = draw(st.integers(0, len(line)))
        depth = draw(st.integers(1, 1200))
        return line[:at] + "[" * depth + line[at:]
    obj = json.loads(line)
    if how == "replace_value" and isinstance(obj, dict) and obj:
        target = obj
        while True:  # walk down a random path, then replace what is there
            key = draw(st.sampled_from(sorted(target, key=str)))
            if isinstance(target[key], dict) and target[key] and draw(st.booleans()):
                target = target[key]
                continue
            target[key] = draw(json_values | st.just(nested(draw(st.integers(50, 900))))
                               | st.integers(min_value=10**17, max_value=10**400))
            break
    return json.dumps(obj)


line_data = st.one_of(
    mutated_real_lines(), current_lines(), legacy_lines(),
    st.text(max_size=60), st.binary(max_size=60).map(lambda b: b.decode("utf-8", "replace")),
    st.integers(1, 3000).map(lambda n: "[" * n), st.integers(50, 1500).map(nested),
    st.sampled_from(REAL_LINES), st.sampled_from(ROLLOUT_LINES),
)
object_data = st.one_of(
    st.dictionaries(st.sampled_from(["name", "model", "user_id", "session_id", "tags", "metadata", "environment",
                                     "prompt", "codex_version", "service_tier", "value", "data_type", "comment",
                                     "exit_code", "signal", "reason", "extra"]), json_values, max_size=6)
    .map(json.dumps),
    json_values.map(json.dumps), st.text(max_size=30), st.integers(1, 5000).map(lambda n: "[" * n),
    st.integers(100, 500).map(lambda n: '{"name": "n", "value": ' + "9" * n + "}"),
)


ROLLOUT_START = json.dumps({"name": "codex", "format": "rollout", "codex_version": "0.169.0",
                            "rollout": {"thread_id": "t", "turn_id": "u", "turn_number": 1, "started_us": T0,
                                        "ended_us": T0 + 10**7, "status": "completed", "prior_token_total": None}})


@st.composite
def runs(draw) -> list[Entry]:
    """A run's entries: seq 0.. in order, each a start/line/meta/score/end or an unknown kind; a
    run of Codex's session file records (import) when it starts as one."""
    count = draw(st.integers(1, 25))
    entries = []
    ts = T0
    rollout = draw(st.booleans())
    for seq in range(count):
        kind = draw(st.sampled_from(["line"] * 6 + ["start", "meta", "score", "end", "odd_kind", "_invalid"]))
        if seq == 0 and rollout:
            kind, data = "start", draw(st.just(ROLLOUT_START)
                                       | json_values.map(lambda v: json.dumps({"format": "rollout", "rollout": v})))
        else:
            data = draw(line_data if kind == "line" else object_data)
        ts += draw(st.integers(0, 5_000_000))
        entries.append(Entry(run=RUN, seq=seq, ts=ts, kind=kind, data=data, binary=draw(st.booleans()) and kind == "line",
                             trunc=draw(st.none() | st.integers(0, 10**6)) if kind == "line" else None))
    return entries


contexts = st.builds(
    FoldContext, prices=st.just(PRICES), max_problem_events=st.integers(0, 6), max_observations=st.integers(0, 40),
    max_output_chars=st.integers(0, 100),
    thread_baseline=st.sampled_from([lambda thread: None,
                                     lambda thread: Usage(input_tokens=10, output_tokens=5, cached_input_tokens=2)]),
)


# ---- the fold --------------------------------------------------------------------------------------


def fold_and_check(state: RunState, entries: list[Entry], ctx: FoldContext):
    result = fold(state, entries, ctx)
    json.dumps([encode_span(o, ContentPolicy()) for o in result.observations])  # what a worker sends
    json.dumps([score_payload(s) for s in result.scores])
    assert RunState.model_validate_json(result.state.model_dump_json()) == result.state  # stored and read back
    return result


@given(entries=runs(), ctx=contexts, cuts=st.lists(st.integers(1, 24), max_size=3))
def test_the_fold_never_raises_accounts_for_every_entry_and_is_deterministic(entries, ctx, cuts):
    result = fold_and_check(new_state(RUN), entries, ctx)
    state, counters = result.state, result.state.counters
    assert state.next_seq == len(entries)

    # accounted for: each invalid, unknown or poisoned entry is an event or counted in the summary
    assert state.problem_events + state.hidden_problems.count == (
        counters.invalid_lines + counters.unknown_events + counters.invalid_entries + counters.duplicate_entries)
    assert state.problem_events <= ctx.max_problem_events
    # ... each line that is not a JSON object (or not UTF-8) while the run is open is counted invalid
    closed_at = next((i for i, e in enumerate(entries) if e.kind == "end"), len(entries))
    open_lines = [e for e in entries[:closed_at] if e.kind == "line"]
    assert counters.invalid_lines == sum(1 for e in open_lines if e.binary or parse_line(e.data).obj is None)
    # ... each entry after the end is a late entry, or a score (still sent)
    assert counters.late_entries == sum(1 for e in entries[closed_at + 1:] if e.kind != "score")
    # ... each observation past the cap is counted in the summary
    capped = [o for o in result.observations if o.id not in {_oid(key) for key in UNCAPPED}]
    assert len(capped) == state.observations <= ctx.max_observations
    if state.closed:  # the summaries are made at the close, of what went past the caps until then
        assert sum(1 for o in result.observations if o.type == "agent") == 1
        at_close = fold(new_state(RUN), entries[:closed_at + 1], ctx).state
        assert any(o.name == "observations_not_sent" for o in result.observations) == \
            bool(at_close.hidden_observations.count)
        assert any(o.name == "problems_not_shown" for o in result.observations) == bool(at_close.hidden_problems.count)

    # deterministic: the same again, and the same however the run is cut into fold steps
    again = fold(new_state(RUN), entries, ctx)
    assert (again.observations, again.scores, again.state) == (result.observations, result.scores, result.state)
    stepped, state, start = [], new_state(RUN), 0
    for cut in sorted(set(cuts)) + [len(entries)]:
        if cut <= start:
            continue
        step = fold_and_check(state, entries[start:cut], ctx)
        stepped += step.observations
        state, start = step.state, cut
    assert stepped == result.observations


def _oid(key: str) -> str:
    from codex_langfuse.ingest.observations import observation_id

    return observation_id(RUN, key)


@given(line=line_data)
def test_any_line_parses_to_an_object_or_a_reason(line):
    parsed = parse_line(line)
    assert (parsed.obj is None) == (parsed.problem is not None or parsed.format.value == "invalid")
    if parsed.obj is not None:
        json.dumps(parsed.obj)


# ---- the dispatcher ----------------------------------------------------------------------------------


field_values = st.one_of(
    st.binary(max_size=20), st.text(max_size=20).map(str.encode),
    st.sampled_from([b"1", b"2", b"", b"0", b"-1", b"inf", b"nan", b"1e308", b"9" * 400, b"line", b"start",
                     b"end", b"score", b"_invalid", b"../x", b"run-1", b"run-2", str(T0).encode(),
                     str(T0 // 10**6).encode()]),
)


@st.composite
def stream_entries(draw) -> dict[bytes, bytes]:
    fields = {b"v": b"1", b"run": draw(st.sampled_from([b"run-1", b"run-2"])),
              b"seq": str(draw(st.integers(0, 6))).encode(), b"ts": str(T0 + draw(st.integers(0, 10**6))).encode(),
              b"kind": draw(st.sampled_from([b"start", b"line", b"meta", b"score", b"end"])),
              b"data": draw(line_data).encode("utf-8", "surrogatepass")}
    for name in draw(st.lists(st.sampled_from(FIELDS + ("inst",)), max_size=3, unique=True)):
        if draw(st.booleans()):
            fields.pop(name.encode(), None)
        else:
            fields[name.encode()] = draw(field_values)
    return fields


@given(batch=st.lists(stream_entries(), min_size=1, max_size=12))
def test_the_dispatcher_files_or_poisons_every_entry_with_a_reason(batch):
    server = fakeredis.FakeServer()
    client = fakeredis.FakeRedis(server=server)
    dispatcher = Dispatcher(Settings(), connection=client, name="fuzz")
    dispatcher.ensure_group()
    for fields in batch:
        client.xadd(dispatcher.stream, fields)
    assert dispatcher.run_once(block_ms=1) == len(batch)

    keys = dispatcher.keys

    def kept(entry: Entry) -> bool:
        """Filed in its run instance's log, or kept aside as a conflict with what was filed first."""
        key = run_key(entry.run, entry.inst, client.get(keys.first_instance(entry.run)).decode())
        return bool(client.hget(keys.log(key), str(entry.seq)) == entry.pack()
                    or client.hexists(keys.conflicts(key), f"{entry.seq}:{entry.digest()}"))

    poison = {fields[b"_id"]: fields[b"_reason"].decode() for _, fields in client.xrange(keys.poison)}
    filed = 0
    for (entry_id, fields) in client.xrange(dispatcher.stream):
        try:
            entry = Entry.from_stream(fields)
        except InvalidEntry as exc:
            reason = poison[entry_id]
            assert reason == f"invalid entry: {exc}"
            assert reason.removeprefix("invalid entry: ").split(":")[0] in FIELDS + ("inst",)  # names the field
            placeholder = exc.placeholder(int(entry_id.split(b"-")[0]) * 1000)
            if placeholder is not None:  # its run shows it, without waiting for it
                assert kept(placeholder)
            continue
        assert entry_id not in poison
        assert kept(entry)
        filed += 1
    assert filed + len(poison) == len(batch)
    assert client.xpending(dispatcher.stream, keys.group)["pending"] == 0  # nothing left hanging
    # the same entries filed again (a redelivery) change nothing
    def books() -> dict:
        return {key: client.hgetall(key) for key in client.scan_iter(f"{keys.prefix}:run:*")
                if key.endswith((b":log", b":conflicts", b":seqs"))}

    before = books()
    dispatcher._dispatch(list(client.xrange(dispatcher.stream)))
    assert books() == before


@pytest.mark.parametrize("seed_line", REAL_LINES[:3])
def test_the_real_lines_themselves_fold_cleanly(seed_line):
    entries = [Entry(run=RUN, seq=0, ts=T0, kind="start", data="{}"),
               Entry(run=RUN, seq=1, ts=T0 + 1, kind="line", data=seed_line)]
    result = fold_and_check(new_state(RUN), entries, FoldContext(prices=PRICES))
    assert result.state.counters.invalid_lines == 0
