"""Rollout turns folded into traces (ingest/rollout_format.py), checked against every fixture.

Each turn of each rollout fixture is shipped as `import` would ship it (`verify.turn_entries`)
and folded. What the trace must hold is read from the turn's own records here, independently of
the fold: one generation per model request with that request's usage, bucketed and priced to the
token; every tool call paired with its output; the times of the records; the user's prompt.
"""

from __future__ import annotations

import datetime
import json
import re
from decimal import Decimal
from pathlib import Path

import pytest

from codex_langfuse.ingest.fold import FoldContext, fold, new_state
from codex_langfuse.ingest.pricing import PriceTable
from codex_langfuse.ingest.verify import turn_entries
from codex_langfuse.producer.rollouts import classify, find_rollouts, read_lines
from codex_langfuse.producer.rollout_turns import split_file

FIXTURES = Path(__file__).parent / "fixtures"
ROLLOUTS = FIXTURES / "rollouts"
SHARED = FIXTURES / "codex"
PRICES = json.loads((Path(__file__).parents[1] / "ingest" / "prices.json").read_text())["models"]
NOW = 2 * 10 ** 15
IDLE = 10 ** 16
TABLE = PriceTable.load()
PLAN_TOOL = "update_plan"

FILES = sorted(find_rollouts([ROLLOUTS]) + find_rollouts([SHARED / name for name in (
    "rollout_0.169.0_full.jsonl", "rollout_0.169.0_resumed_two_turns.jsonl", "rollout_v0.98.0.jsonl")]))

PROMPTS = {
    "01a21390-6efc-7bf3-9118-055dbf095d38": "Run a command and create hello.txt",
    "01a213a0-5d5b-7373-b483-bc20efe5632f": "Do it again",
    "01a22e89-fa9b-7bb2-9153-6963a4248c06:": "Count the files in the workspace and report back.",
    "01a22e89-cf2c-7882-901b-1a2d6dad80da:n2": "Continue where you left off",
    "01a22e8c-1d7b-71d1-b094-0dbc85a57d11:": "Count the files in the workspace and report back.",
    "88cc976c-4c05-4dfa-98eb-20a8e3eaad7f:n1": "Run a command and create hello.txt",
}


def turns_with_records():
    for path in FILES:
        turns, splitter = split_file(path, NOW, IDLE, final=True)
        for turn in turns:
            records = [(classify(line), line) for _, _, line in read_lines(path, turn.start, turn.end)]
            yield pytest.param(path, turn, splitter.state.header_us, records,
                               id=f"{path.parent.name if path.parent != SHARED else 'codex'}/{path.name[-24:]}/{turn.key[-6:]}")


def folded(path, turn, header_us, context=None):
    return fold(new_state(turn.run_id), turn_entries(path, turn, header_us), context or FoldContext(prices=TABLE))


def by_type(result, kind):
    return [o for o in result.observations if o.type == kind]


def expected_requests(records, prior_total):
    """(usage, time) of each model request, read off the records: a token_usage_record per response,
    else each token_count whose thread total moved."""
    usage_records = [(r.payload["usage"], r.ts_us) for r, _ in records if r and r.kind == "token_usage_record"]
    if usage_records:
        return usage_records
    requests, previous = [], prior_total
    for record, _ in records:
        if record and record.kind == "event_msg" and record.sub == "token_count" and isinstance(record.payload.get("info"), dict):
            total = record.payload["info"]["total_token_usage"]
            if total != previous:
                requests.append((record.payload["info"]["last_token_usage"], record.ts_us))
                previous = total
    return requests


def buckets(usage):
    cached, write = usage.get("cached_input_tokens", 0), usage.get("cache_write_input_tokens", 0)
    out = {"input": usage["input_tokens"] - cached - write, "input_cached_tokens": cached}
    if write:
        out["input_cache_creation"] = write
    out["output"] = usage["output_tokens"] - usage.get("reasoning_output_tokens", 0)
    out["output_reasoning_tokens"] = usage.get("reasoning_output_tokens", 0)
    out["total"] = usage["input_tokens"] + usage["output_tokens"]
    return out


def cost(model, counts, rates=None):
    rates = rates or PRICES[model]["prices"]
    rate = {"input": rates["input"], "input_cached_tokens": rates.get("input_cached_tokens", rates["input"]),
            "input_cache_creation": rates.get("input_cache_creation", rates["input"]), "output": rates["output"],
            "output_reasoning_tokens": rates["output"]}
    parts = {k: Decimal(v) * Decimal(rate[k]) / Decimal(1_000_000) for k, v in counts.items() if k != "total" and v}
    return {**{k: float(v) for k, v in parts.items()}, "total": float(sum(parts.values(), Decimal(0)))}


def model_of(records):
    models = [r.payload.get("model") for r, _ in records if r and r.kind == "turn_context"]
    return models[-1] if models else None


@pytest.mark.parametrize("path,turn,header_us,records", list(turns_with_records()))
def test_one_generation_per_model_request_with_its_usage_and_cost(path, turn, header_us, records):
    result = folded(path, turn, header_us)
    generations = by_type(result, "generation")
    requests = expected_requests(records, turn.prior_total)
    if "rollouts/0.20.0" in str(path):
        # 0.20 recorded no usage: one generation per model response of the transcript, without usage
        responses = sum(1 for r, _ in records if r and r.kind == "raw" and r.sub in ("function_call", "message")
                        and r.payload.get("role") != "user")
        assert len(generations) == responses == 7
        assert all(g.usage_details is None and g.cost_details is None for g in generations)
        return
    assert len(generations) == len(requests)
    model = model_of(records)
    for generation, (usage, at_us) in zip(generations, requests):
        assert generation.model == model
        assert generation.usage_details == buckets(usage)
        assert generation.end_us <= at_us and generation.start_us <= generation.end_us
        if model in PRICES:
            assert generation.cost_details == cost(model, buckets(usage))
            assert generation.metadata["pricing_model"] == model
        else:
            assert generation.cost_details is None  # mock-model: usage only
    root = by_type(result, "agent")[0]
    total = sum(g.usage_details["total"] for g in generations)
    assert root.metadata["usage"]["input_tokens"] + root.metadata["usage"]["output_tokens"] == total


@pytest.mark.parametrize("path,turn,header_us,records", list(turns_with_records()))
def test_every_tool_call_is_paired_with_its_output(path, turn, header_us, records):
    result = folded(path, turn, header_us)
    calls = {}
    outputs = {}
    for record, _ in records:
        if record is None:
            continue
        if record.sub in ("function_call", "custom_tool_call", "local_shell_call"):
            calls[record.payload["call_id"]] = record
        elif record.sub in ("function_call_output", "custom_tool_call_output"):
            outputs[record.payload["call_id"]] = record
    tools = {o.metadata.get("call_id"): o for o in by_type(result, "tool") if o.name != "web_search"}
    plans = [o for o in by_type(result, "event") if o.name == "plan"]
    assert len(plans) == sum(1 for c in calls.values() if c.payload.get("name") == PLAN_TOOL)
    expected = {call_id for call_id, c in calls.items() if c.payload.get("name") != PLAN_TOOL}
    assert set(tools) == expected
    for call_id, observation in tools.items():
        assert observation.start_us == calls[call_id].ts_us or calls[call_id].ts_us is None
        if call_id in outputs:
            assert observation.end_us == (outputs[call_id].ts_us or observation.end_us)
            assert not observation.metadata.get("incomplete")
        else:
            assert observation.metadata.get("incomplete") and observation.level in ("WARNING", "ERROR")
        if observation.name == "command":
            exit_code = observation.metadata.get("exit_code")
            if exit_code is None:  # interrupted before it reported one
                assert observation.level == "WARNING" and observation.status_message == "aborted by user"
            else:
                assert (observation.level == "ERROR") == (exit_code != 0)
    searches = sum(1 for r, _ in records if r and r.sub == "web_search_call")
    assert len([o for o in by_type(result, "tool") if o.name == "web_search"]) == searches


@pytest.mark.parametrize("path,turn,header_us,records", list(turns_with_records()))
def test_times_are_the_records_own(path, turn, header_us, records):
    result = folded(path, turn, header_us)
    root = by_type(result, "agent")[0]
    assert (root.start_us, root.end_us) == (turn.started_us, turn.ended_us)
    stamps = {r.ts_us for r, _ in records if r and r.ts_us is not None} or {header_us}
    for observation in result.observations:
        assert turn.started_us <= observation.start_us <= observation.end_us <= turn.ended_us
    for event in by_type(result, "event"):
        assert event.start_us in stamps
    for score in result.scores:
        assert score.timestamp_us == turn.started_us


@pytest.mark.parametrize("path,turn,header_us,records", list(turns_with_records()))
def test_the_input_is_the_users_own_prompt(path, turn, header_us, records):
    result = folded(path, turn, header_us)
    root = by_type(result, "agent")[0]
    prompt = root.input
    wanted = next((text for key, text in PROMPTS.items() if turn.run_id.endswith(key) or f"{turn.thread_id}:" == key),
                  None)
    if wanted is not None:
        assert prompt == wanted
    typed = [r.payload.get("message") for r, _ in records if r and r.kind == "event_msg" and r.sub == "user_message"]
    typed += [c["text"] for r, _ in records if r and r.sub == "item_completed" and r.payload["item"].get("type") == "UserMessage"
              for c in r.payload["item"]["content"]]
    if typed:
        assert prompt == typed[0]
    assert isinstance(prompt, str) and prompt
    for marker in ("<environment_context>", "AGENTS.md", "<permissions", "<subagent_notification>"):
        assert marker not in prompt
    first = by_type(result, "generation")[:1]
    if first:
        assert first[0].input == prompt


def test_outcomes_of_failed_interrupted_and_complete_turns():
    def root_of(version, scenario):
        path = find_rollouts([ROLLOUTS / version / scenario])[0]
        turns, splitter = split_file(path, NOW, IDLE, final=True)
        result = folded(path, turns[0], splitter.state.header_us)
        return by_type(result, "agent")[0], {s.name: s.value for s in result.scores}

    for version in ("0.98.0", "0.130.0", "0.169.0"):
        root, scores = root_of(version, "turn_failed")
        assert root.level == "ERROR" and "no model response" in root.status_message
        assert scores["success"] == 0.0 and scores["errors"] == 1.0
    root, scores = root_of("0.169.0", "interrupted")
    assert root.level == "ERROR" and root.status_message == "turn aborted: interrupted"
    assert scores["success"] == 0.0
    root, scores = root_of("0.169.0", "archived")
    assert root.level == "DEFAULT" and root.output == "All done: ran commands and created hello.txt."
    assert scores == {"success": 1.0, "failed_commands": 1.0, "files_changed": 1.0, "errors": 0.0}
    assert root.metadata["counters"]["mcp_calls"] == 1 and root.metadata["counters"]["commands"] == 2


def test_commands_patches_mcp_and_sub_agents_look_as_in_a_live_run():
    path = find_rollouts([ROLLOUTS / "0.169.0/archived"])[0]
    turns, splitter = split_file(path, NOW, IDLE, final=True)
    tools = {o.name: o for o in by_type(folded(path, turns[0], splitter.state.header_us), "tool")}
    assert set(tools) == {"command", "file_change", "echo.say", "web_search"}
    assert tools["file_change"].input == {"changes": [{"path": "/home/dev/project/hello.txt", "kind": "add"}]}
    assert tools["echo.say"].input == {"text": "hi from mock"}
    assert tools["echo.say"].metadata["server"] == "echo"
    # the shell tool of 0.20 and 0.42: patches ran through it, the exit code is in its JSON output
    for version in ("0.20.0", "0.42.0"):
        path = find_rollouts([ROLLOUTS / version / "full"])[0]
        turns, splitter = split_file(path, NOW, IDLE, final=True)
        tools = by_type(folded(path, turns[0], splitter.state.header_us), "tool")
        names = [t.name for t in tools]
        assert names.count("command") == 2 and names.count("file_change") == 1 and "echo.say" in names
        failed = [t for t in tools if t.level == "ERROR"]
        assert [(t.name, t.metadata["exit_code"], t.input) for t in failed] == [
            ("command", 2, "bash -lc 'ls /nonexistent-dir'")]
    parent = find_rollouts([ROLLOUTS / "0.169.0/subagent"])[0]
    turns, splitter = split_file(parent, NOW, IDLE, final=True)
    spawned = [t for t in by_type(folded(parent, turns[0], splitter.state.header_us), "tool")
               if t.name == "subagent.spawn_agent"]
    assert spawned[0].metadata["receiver_thread_ids"] == ["01a22e89-fa9b-7bb2-9153-6963a4248c06"]


def test_a_sub_agents_trace_points_at_its_parents_trace():
    parent_path, child_path = find_rollouts([ROLLOUTS / "0.169.0/subagent"])
    parent_turn = split_file(parent_path, NOW, IDLE, final=True)[0][0]
    child_turns, splitter = split_file(child_path, NOW, IDLE, final=True)
    root = by_type(folded(child_path, child_turns[0], splitter.state.header_us), "agent")[0]
    assert root.trace.metadata["parent_trace_id"] == parent_turn.trace_id
    assert root.trace.metadata["parent_thread_id"] == parent_turn.thread_id
    assert root.trace.session_id == parent_turn.thread_id


def test_zstd_sessions_fold_to_the_same_trace(tmp_path):
    import zstandard

    compressed = find_rollouts([ROLLOUTS / "0.169.0/archived"])[0]
    plain = tmp_path / compressed.name.removesuffix(".zst")
    plain.write_bytes(zstandard.ZstdDecompressor().stream_reader(compressed.open("rb")).read())
    results = []
    for path in (compressed, plain):
        turns, splitter = split_file(path, NOW, IDLE, final=True)
        result = folded(path, turns[0], splitter.state.header_us)
        results.append([(o.id, o.name, o.start_us, o.end_us, o.usage_details, o.output) for o in result.observations])
    assert results[0] == results[1]


def _rewritten(tmp_path, edit):
    """The archived 0.169 session, decompressed and edited (dates, model, sizes)."""
    import zstandard

    compressed = find_rollouts([ROLLOUTS / "0.169.0/archived"])[0]
    text = zstandard.ZstdDecompressor().stream_reader(compressed.open("rb")).read().decode()
    path = tmp_path / compressed.name.removesuffix(".zst")
    path.write_text(edit(text))
    turns, splitter = split_file(path, NOW, IDLE, final=True)
    return by_type(folded(path, turns[0], splitter.state.header_us), "generation")


def test_each_request_is_priced_as_of_its_own_date(tmp_path):
    """GPT-5.6 Terra cost $2.50/$15 per 1M until OpenAI's cut of 2026-07-30, $2.00/$12 after."""
    before = _rewritten(tmp_path, lambda t: t.replace("gpt-5-codex", "gpt-5.6-terra").replace("2026-11-30T", "2026-07-29T"))
    after = _rewritten(tmp_path, lambda t: t.replace("gpt-5-codex", "gpt-5.6-terra").replace("2026-11-30T", "2026-07-30T"))
    launch = PRICES["gpt-5.6-terra"]["history"][0]["prices"]
    for generation in before:
        assert generation.cost_details == cost("gpt-5.6-terra", generation.usage_details, launch)
        assert generation.metadata["pricing_effective_from"] == "2026-06-26"
    for generation in after:
        assert generation.cost_details == cost("gpt-5.6-terra", generation.usage_details)
        assert generation.metadata["pricing_effective_from"] == "2026-07-30"
    assert before[0].cost_details["total"] > after[0].cost_details["total"]
    # cache writes (request 3 wrote 300 tokens) have their own bucket and rate
    assert after[2].usage_details["input_cache_creation"] == 300
    assert after[2].cost_details["input_cache_creation"] == float(Decimal(300) * Decimal("2.5") / 10 ** 6)


def test_the_long_context_tier_is_decided_per_request(tmp_path):
    """A request over 272K input tokens is priced at the long-context rates, its neighbours not."""
    def grow(text):
        text = text.replace("gpt-5-codex", "gpt-5.6-sol")
        return re.sub(r'("response_id":"resp_mock_\d+","usage":\{"input_tokens":)1200,', r"\g<1>300000,", text)

    generations = _rewritten(tmp_path, grow)
    tiers = [g.metadata["pricing_tier"] for g in generations]
    assert tiers == ["standard", "standard", "long_context", "standard", "standard", "standard", "standard"]
    long_rates = PRICES["gpt-5.6-sol"]["long_context"]["prices"]
    assert generations[2].cost_details == cost("gpt-5.6-sol", generations[2].usage_details, long_rates)


def test_a_turn_a_live_run_counted_is_not_counted_again():
    path = SHARED / "rollout_0.169.0_resumed_two_turns.jsonl"
    turns, splitter = split_file(path, NOW, IDLE, final=True)
    claims = {}

    def claim(thread, run, start, end):
        for owner, (s, e) in claims.items():
            if owner != run and s <= end and start <= e:
                return owner
        claims[run] = (start, end)
        return run

    claims["live-run"] = (turns[1].started_us - 50_000, turns[1].ended_us + 50_000)
    context = FoldContext(prices=TABLE, claim_turn=claim)
    first = folded(path, turns[0], splitter.state.header_us, context)
    second = folded(path, turns[1], splitter.state.header_us, context)
    assert by_type(first, "agent") and by_type(first, "generation")
    assert second.observations == [] and second.scores == [] and second.state.closed
    assert second.state.superseded_by == "live-run"


def test_unknown_records_are_kept_once_and_counted(tmp_path):
    lines = (SHARED / "rollout_0.169.0_full.jsonl").read_text().splitlines(keepends=True)
    odd = '{"timestamp":"2026-11-25T16:36:02.900Z","type":"future_record","payload":{"type":"x","n":%d}}\n'
    path = tmp_path / "rollout-odd.jsonl"
    path.write_text("".join(lines[:20] + [odd % 1, odd % 2, "not json at all\n"] + lines[20:]))
    turns, splitter = split_file(path, NOW, IDLE, final=True)
    result = folded(path, turns[0], splitter.state.header_us)
    kept = [o for o in result.observations if o.name == "future_record"]
    assert len(kept) == 1 and kept[0].metadata["unknown_type"]
    root = by_type(result, "agent")[0]
    assert root.metadata["counters"]["unknown_events"] == 2 and root.metadata["counters"]["invalid_lines"] == 1
    assert [o for o in result.observations if o.name == "invalid_line"]
    assert len(by_type(result, "generation")) == 5


def test_dates_of_the_fixtures_are_after_the_gpt_5_6_cut():
    # the pricing tests above rewrite 2026-11-30 into July: they rely on the recordings' date
    path = find_rollouts([ROLLOUTS / "0.169.0/archived"])[0]
    turns, _ = split_file(path, NOW, IDLE, final=True)
    assert datetime.datetime.fromtimestamp(turns[0].started_us / 1e6, datetime.timezone.utc).date().isoformat() == "2026-11-30"
