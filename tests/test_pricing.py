"""The cost layer: usage buckets, the shipped price table, tiers, matching and override files.

Expected costs are written as arithmetic from the published USD-per-1M rates, so each number can be
checked against the source named in ingest/prices.json.
"""

from __future__ import annotations

import datetime
import json
import re
from decimal import Decimal
from pathlib import Path

import pytest

from codex_langfuse.ingest.pricing import USAGE_KEYS, Price, PriceTable, usage_buckets

FIXTURES = Path(__file__).parent / "fixtures"
PRICES_JSON = Path(__file__).parent.parent / "ingest" / "prices.json"
LANGFUSE_SUBSET = FIXTURES / "langfuse_default_model_prices_v4.16.0_subset.json"
M = 1e6  # the table's prices are per 1M tokens
EXACT = 1e-12  # USD; a million times finer than the micro-dollar the costs must be exact to

TIER_NAMES = {"standard", "flex", "priority", "long_context", "flex_long_context", "priority_long_context"}


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable.load()


@pytest.fixture(scope="module")
def shipped() -> dict:
    return json.loads(PRICES_JSON.read_text(encoding="utf-8"))


def assert_costs(price: Price | None, expected: dict[str, float]) -> None:
    assert price is not None
    assert set(price.cost_details) == set(expected) | {"total"}
    for bucket, cost in expected.items():
        assert price.cost_details[bucket] == pytest.approx(cost, abs=EXACT), bucket
    assert price.cost_details["total"] == pytest.approx(sum(expected.values()), abs=EXACT)


# --- usage buckets -------------------------------------------------------------------------------


def turn_completed_usages() -> list[tuple[str, dict]]:
    found = []
    for path in sorted((FIXTURES / "codex").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict) and event.get("type") == "turn.completed":
                found.append((path.name, event["usage"]))
    return found


FIXTURE_USAGES = turn_completed_usages()


def buckets_from_codex(usage: dict) -> dict[str, int]:
    return usage_buckets(
        usage["input_tokens"],
        usage["cached_input_tokens"],
        usage["output_tokens"],
        usage.get("reasoning_output_tokens", 0),
        usage.get("cache_write_input_tokens", 0),
    )


def test_fixtures_have_turn_completed_usage():
    assert len(FIXTURE_USAGES) >= 7
    assert {name for name, _ in FIXTURE_USAGES} >= {"real_run_0.169.0_full.jsonl", "repo_docs_exec_md_sample.jsonl"}


@pytest.mark.parametrize(("name", "usage"), FIXTURE_USAGES, ids=[name for name, _ in FIXTURE_USAGES])
def test_buckets_of_every_fixture_are_exclusive_and_add_up(name, usage):
    buckets = buckets_from_codex(usage)
    cache_write = usage.get("cache_write_input_tokens", 0)
    reasoning = usage.get("reasoning_output_tokens", 0)
    assert buckets["input"] == usage["input_tokens"] - usage["cached_input_tokens"] - cache_write
    assert buckets["input_cached_tokens"] == usage["cached_input_tokens"]
    assert buckets.get("input_cache_creation", 0) == cache_write
    assert buckets["output"] == usage["output_tokens"] - reasoning
    assert buckets["output_reasoning_tokens"] == reasoning
    assert buckets["total"] == usage["input_tokens"] + usage["output_tokens"]
    assert buckets["total"] == sum(value for key, value in buckets.items() if key != "total")
    assert set(buckets) - {"total"} <= set(USAGE_KEYS)


EXPECTED_FIXTURE_BUCKETS = {
    "real_run_0.169.0_full.jsonl": {
        "input": 6000 - 3200, "input_cached_tokens": 3200, "output": 260 - 100, "output_reasoning_tokens": 100,
        "total": 6000 + 260,
    },
    "real_run_0.169.0_command_failed.jsonl": {
        "input": 2100 - 800, "input_cached_tokens": 800, "output": 101 - 40, "output_reasoning_tokens": 40,
        "total": 2100 + 101,
    },
    "real_run_0.169.0_resume_thread_cumulative_usage.jsonl": {
        "input": 7400 - 4000, "input_cached_tokens": 4000, "output": 314 - 120, "output_reasoning_tokens": 120,
        "total": 7400 + 314,
    },
    "real_run_v0.98.0_json.jsonl": {  # no reasoning count in this Codex version
        "input": 6000 - 3200, "input_cached_tokens": 3200, "output": 260, "output_reasoning_tokens": 0,
        "total": 6000 + 260,
    },
    "repo_docs_exec_md_sample.jsonl": {
        "input": 24763 - 24448, "input_cached_tokens": 24448, "output": 122, "output_reasoning_tokens": 0,
        "total": 24763 + 122,
    },
}


@pytest.mark.parametrize("name", sorted(EXPECTED_FIXTURE_BUCKETS))
def test_fixture_buckets_by_hand(name):
    usages = [usage for fixture, usage in FIXTURE_USAGES if fixture == name]
    assert len(usages) == 1
    assert buckets_from_codex(usages[0]) == EXPECTED_FIXTURE_BUCKETS[name]


def test_cache_writes_get_their_own_bucket_only_when_reported():
    assert usage_buckets(10_000, 4_000, 500, 200, 1_000) == {
        "input": 10_000 - 4_000 - 1_000, "input_cached_tokens": 4_000, "input_cache_creation": 1_000,
        "output": 500 - 200, "output_reasoning_tokens": 200, "total": 10_000 + 500,
    }
    assert "input_cache_creation" not in usage_buckets(10_000, 4_000, 500, 200, 0)


def test_inconsistent_counts_are_clamped_and_total_stays_the_sum():
    buckets = usage_buckets(100, 250, 10, 40, 5)
    assert buckets == {
        "input": 0, "input_cached_tokens": 250, "input_cache_creation": 5, "output": 0,
        "output_reasoning_tokens": 40, "total": 250 + 5 + 40,
    }
    assert usage_buckets(-5, -1, -3, -2, -9) == {
        "input": 0, "input_cached_tokens": 0, "output": 0, "output_reasoning_tokens": 0, "total": 0,
    }
    assert usage_buckets(10, None, 3, None, None) == {
        "input": 10, "input_cached_tokens": 0, "output": 3, "output_reasoning_tokens": 0, "total": 13,
    }


# --- costs by hand ---------------------------------------------------------------------------------

FULL_RUN = usage_buckets(6000, 3200, 260, 100)  # real_run_0.169.0_full.jsonl


def test_gpt_5_codex_cost(table):
    price = table.price("gpt-5-codex", FULL_RUN)
    assert_costs(price, {
        "input": 2800 * 1.25 / M,
        "input_cached_tokens": 3200 * 0.125 / M,
        "output": 160 * 10.00 / M,
        "output_reasoning_tokens": 100 * 10.00 / M,  # reasoning is billed at the output rate
    })
    assert price.cost_details["total"] == pytest.approx(0.0065, abs=EXACT)
    assert (price.model, price.tier, price.table_version) == ("gpt-5-codex", "standard", "2026-11-30")
    assert price.source.startswith("https://developers.openai.com/api/docs/models/gpt-5-codex (")
    assert "checked 2026-11-25" in price.source


def test_gpt_5_3_codex_cost(table):
    assert_costs(table.price("gpt-5.3-codex", FULL_RUN), {
        "input": 2800 * 1.75 / M,
        "input_cached_tokens": 3200 * 0.175 / M,
        "output": 160 * 14.00 / M,
        "output_reasoning_tokens": 100 * 14.00 / M,
    })


def test_codex_mini_latest_cost(table):
    usage = usage_buckets(2100, 800, 101, 40)  # real_run_0.169.0_command_failed.jsonl
    assert_costs(table.price("codex-mini-latest", usage), {
        "input": 1300 * 1.50 / M,
        "input_cached_tokens": 800 * 0.375 / M,
        "output": 61 * 6.00 / M,
        "output_reasoning_tokens": 40 * 6.00 / M,
    })


def test_gpt_5_1_codex_mini_cost_leaves_out_empty_buckets(table):
    usage = usage_buckets(24763, 24448, 122)  # repo_docs_exec_md_sample.jsonl, no reasoning
    price = table.price("gpt-5.1-codex-mini", usage)
    assert_costs(price, {
        "input": 315 * 0.25 / M,
        "input_cached_tokens": 24448 * 0.025 / M,
        "output": 122 * 2.00 / M,
    })
    assert "output_reasoning_tokens" not in price.cost_details


@pytest.mark.parametrize(("model", "input_rate", "cached_rate", "output_rate"), [
    ("gpt-5.1-codex", 1.25, 0.125, 10.00),
    ("gpt-5.1-codex-max", 1.25, 0.125, 10.00),
    ("gpt-5.2-codex", 1.75, 0.175, 14.00),
    ("gpt-5", 1.25, 0.125, 10.00),
    ("gpt-5-mini", 0.25, 0.025, 2.00),
    ("gpt-5-nano", 0.05, 0.005, 0.40),
    ("gpt-5.1", 1.25, 0.125, 10.00),
    ("gpt-5.2", 1.75, 0.175, 14.00),
    ("gpt-5.4", 2.50, 0.25, 15.00),
    ("gpt-5.4-mini", 0.75, 0.075, 4.50),
    ("gpt-5.4-nano", 0.20, 0.02, 1.25),
    ("gpt-5.5", 5.00, 0.50, 30.00),
    ("o3", 2.00, 0.50, 8.00),
    ("o4-mini", 1.10, 0.275, 4.40),
    ("gpt-4.1", 2.00, 0.50, 8.00),
])
def test_standard_cost_of_each_family(table, model, input_rate, cached_rate, output_rate):
    assert_costs(table.price(model, FULL_RUN), {
        "input": 2800 * input_rate / M,
        "input_cached_tokens": 3200 * cached_rate / M,
        "output": 160 * output_rate / M,
        "output_reasoning_tokens": 100 * output_rate / M,
    })


def test_cache_writes_are_billed_at_their_published_rate(table):
    usage = usage_buckets(10_000, 4_000, 500, 200, 1_000)
    assert_costs(table.price("gpt-5.6-sol", usage), {
        "input": 5_000 * 5.00 / M,
        "input_cached_tokens": 4_000 * 0.50 / M,
        "input_cache_creation": 1_000 * 6.25 / M,
        "output": 300 * 30.00 / M,
        "output_reasoning_tokens": 200 * 30.00 / M,
    })


def test_cache_writes_without_a_published_rate_are_billed_as_input(table):
    usage = usage_buckets(10_000, 4_000, 500, 200, 1_000)
    assert_costs(table.price("gpt-5.4", usage), {
        "input": 5_000 * 2.50 / M,
        "input_cached_tokens": 4_000 * 0.25 / M,
        "input_cache_creation": 1_000 * 2.50 / M,
        "output": 300 * 15.00 / M,
        "output_reasoning_tokens": 200 * 15.00 / M,
    })


def test_cached_input_on_a_model_without_a_cache_rate_is_billed_as_input(table):
    assert_costs(table.price("gpt-5-pro", FULL_RUN), {
        "input": 2800 * 15.00 / M,
        "input_cached_tokens": 3200 * 15.00 / M,
        "output": 160 * 120.00 / M,
        "output_reasoning_tokens": 100 * 120.00 / M,
    })


def test_costs_are_exact_beyond_float_arithmetic(table):
    # One cached token on gpt-5-nano flex costs $0.0025 per 1M: 2.5e-9 USD, kept, not rounded away.
    price = table.price("gpt-5-nano", {"input_cached_tokens": 1}, service_tier="flex")
    assert price.cost_details == {"input_cached_tokens": 2.5e-9, "total": 2.5e-9}
    big = table.price("gpt-5.2", {"input": 987_654_321, "output": 123_456_789})
    exact_total = Decimal(987_654_321) * Decimal("1.75") / 10**6 + Decimal(123_456_789) * 14 / 10**6
    assert big.cost_details["total"] == float(exact_total)


def test_zero_usage_costs_nothing(table):
    price = table.price("gpt-5-codex", usage_buckets(0, 0, 0))
    assert price.cost_details == {"total": 0.0}


# --- service tiers and long context ------------------------------------------------------------


@pytest.mark.parametrize("service_tier", ["priority", "fast", "Priority", " FAST "])
def test_priority_tier_and_its_fast_alias(table, service_tier):
    price = table.price("gpt-5.4", FULL_RUN, service_tier=service_tier)
    assert price.tier == "priority"
    assert_costs(price, {
        "input": 2800 * 5.00 / M,
        "input_cached_tokens": 3200 * 0.50 / M,
        "output": 160 * 30.00 / M,
        "output_reasoning_tokens": 100 * 30.00 / M,
    })


def test_flex_tier(table):
    price = table.price("gpt-5-mini", FULL_RUN, service_tier="flex")
    assert price.tier == "flex"
    assert_costs(price, {
        "input": 2800 * 0.125 / M,
        "input_cached_tokens": 3200 * 0.0125 / M,
        "output": 160 * 1.00 / M,
        "output_reasoning_tokens": 100 * 1.00 / M,
    })


def test_priority_rate_of_a_codex_model_cites_the_priority_page(table):
    price = table.price("gpt-5-codex", FULL_RUN, service_tier="priority")
    assert_costs(price, {
        "input": 2800 * 2.50 / M,
        "input_cached_tokens": 3200 * 0.25 / M,
        "output": 160 * 20.00 / M,
        "output_reasoning_tokens": 100 * 20.00 / M,
    })
    assert price.source.startswith("https://openai.com/api-priority-processing/")


@pytest.mark.parametrize("service_tier", [None, "", "default", "auto", "standard"])
def test_default_service_tiers_are_standard(table, service_tier):
    assert table.price("gpt-5.4", FULL_RUN, service_tier=service_tier).tier == "standard"


def test_unpublished_or_unknown_tiers_are_not_priced(table):
    assert table.price("gpt-5.3-codex", FULL_RUN, service_tier="flex") is None  # no flex rate published
    assert table.price("gpt-5-nano", FULL_RUN, service_tier="priority") is None
    assert table.price("gpt-5.4", FULL_RUN, service_tier="scale") is None
    assert table.price("gpt-5.4", FULL_RUN, service_tier="batch") is None


LONG = usage_buckets(300_000, 100_000, 1_000, 400)


def test_long_context_tier_over_the_threshold(table):
    price = table.price("gpt-5.4", LONG)
    assert price.tier == "long_context"
    assert_costs(price, {
        "input": 200_000 * 5.00 / M,
        "input_cached_tokens": 100_000 * 0.50 / M,
        "output": 600 * 22.50 / M,
        "output_reasoning_tokens": 400 * 22.50 / M,
    })


def test_long_context_threshold_is_strictly_greater_and_counts_cached_input(table):
    at_threshold = usage_buckets(272_000, 200_000, 10)
    just_over = usage_buckets(272_001, 200_000, 10)
    assert table.price("gpt-5.5", at_threshold).tier == "standard"
    assert_costs(table.price("gpt-5.5", just_over), {
        "input": 72_001 * 10.00 / M,
        "input_cached_tokens": 200_000 * 1.00 / M,
        "output": 10 * 45.00 / M,
    })


def test_cache_writes_count_toward_the_threshold(table):
    usage = usage_buckets(272_001, 100_000, 10, 0, 72_001)
    price = table.price("gpt-5.6-terra", usage)
    assert price.tier == "long_context"
    assert_costs(price, {
        "input": 100_000 * 4.00 / M,
        "input_cached_tokens": 100_000 * 0.40 / M,
        "input_cache_creation": 72_001 * 5.00 / M,
        "output": 10 * 18.00 / M,
    })


def test_flex_over_the_threshold_uses_the_flex_long_context_rate(table):
    price = table.price("gpt-5.4", LONG, service_tier="flex")
    assert price.tier == "flex_long_context"
    assert_costs(price, {
        "input": 200_000 * 2.50 / M,
        "input_cached_tokens": 100_000 * 0.25 / M,
        "output": 600 * 11.25 / M,
        "output_reasoning_tokens": 400 * 11.25 / M,
    })


def test_priority_over_the_threshold_where_published(table):
    price = table.price("gpt-5.6-luna", LONG, service_tier="fast")
    assert price.tier == "priority_long_context"
    assert_costs(price, {
        "input": 200_000 * 0.80 / M,
        "input_cached_tokens": 100_000 * 0.08 / M,
        "output": 600 * 3.60 / M,
        "output_reasoning_tokens": 400 * 3.60 / M,
    })


def test_unpublished_tier_over_the_threshold_is_not_priced(table):
    assert table.price("gpt-5.4", LONG, service_tier="priority") is None
    assert table.price("gpt-5.5-pro", LONG, service_tier="flex") is None


def test_models_without_a_long_context_tier_stay_standard(table):
    assert table.price("gpt-5.3-codex", LONG).tier == "standard"


def test_request_input_tokens_decide_the_tier_of_summed_usage(table):
    summed_turn = usage_buckets(900_000, 800_000, 5_000)  # ten calls of 90K each, summed by Codex
    assert table.price("gpt-5.4", summed_turn, request_input_tokens=90_000).tier == "standard"
    assert table.price("gpt-5.4", summed_turn, request_input_tokens=272_001).tier == "long_context"
    assert table.price("gpt-5.4", usage_buckets(1_000, 0, 10), request_input_tokens=300_000).tier == "long_context"


# --- matching ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "entry"), [
    ("gpt-5-codex", "gpt-5-codex"),
    ("GPT-5-Codex", "gpt-5-codex"),
    ("openai/gpt-5-codex", "gpt-5-codex"),
    ("OpenAI/GPT-5.1-Codex-Max", "gpt-5.1-codex-max"),
    (" gpt-5.3-codex ", "gpt-5.3-codex"),
    ("gpt-5-codex-2025-09-15", "gpt-5-codex"),
    ("openai/gpt-5.4-mini-2026-03-17", "gpt-5.4-mini"),
    ("gpt-5-2025-08-07", "gpt-5"),
    ("gpt-5.1-codex-mini", "gpt-5.1-codex-mini"),
    ("gpt-5.1-codex", "gpt-5.1-codex"),
])
def test_names_resolve_to_their_entry(table, name, entry):
    assert table.match(name) == entry
    assert table.price(name, FULL_RUN).model == entry


@pytest.mark.parametrize("name", [
    "gpt-5-codex-mini",  # a real model without a published price: must not borrow gpt-5-codex's or gpt-5-mini's
    "gpt-5.3-codex-spark",  # research preview, no API price
    "gpt-5.1-codex-medium",
    "gpt-5-codex-20250915",
    "gpt-5-codex-2025-09",
    "anthropic/gpt-5",
    "azure/gpt-5-codex",
    "gpt-5.",
    "mock-model",
    "",
    "gpt-6",
])
def test_unknown_names_are_not_priced(table, name):
    assert table.match(name) is None
    assert table.price(name, FULL_RUN) is None


def test_codex_names_never_fall_back_to_the_base_model(table):
    assert table.price("gpt-5", FULL_RUN, service_tier="flex").model == "gpt-5"
    assert table.price("gpt-5-codex", FULL_RUN, service_tier="flex") is None  # gpt-5's flex rate is not borrowed
    mini = table.price("gpt-5.1-codex-mini", FULL_RUN)
    assert mini.model == "gpt-5.1-codex-mini"
    assert mini.cost_details["input"] == pytest.approx(2800 * 0.25 / M, abs=EXACT)  # not gpt-5.1-codex's 1.25
    assert table.match("gpt-5.3") is None  # no prefix or suffix matching in either direction


def test_no_model_is_not_priced(table):
    assert table.price(None, FULL_RUN) is None


def test_bad_usage_is_a_programming_error(table):
    with pytest.raises(ValueError, match="unknown usage keys"):
        table.price("gpt-5", {"input": 1, "input_audio_tokens": 5})
    with pytest.raises(ValueError, match="negative"):
        table.price("gpt-5", {"input": -1})
    with pytest.raises(ValueError, match="must be an int"):
        table.price("gpt-5", {"input": 1.5})
    with pytest.raises(ValueError, match="must be an int"):
        table.price("gpt-5", {"input": True})


def test_total_in_usage_is_ignored(table):
    assert table.price("gpt-5", {"input": 10, "total": 999}).cost_details == pytest.approx(
        {"input": 10 * 1.25 / M, "total": 10 * 1.25 / M}, abs=EXACT
    )


# --- override files --------------------------------------------------------------------------------


def write_json(path: Path, document) -> Path:
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def test_override_adds_and_replaces_entries(tmp_path):
    path = write_json(tmp_path / "prices.json", {
        "models": {
            "my-proxy-model": {"prices": {"input": "3", "output": "9", "input_cached_tokens": "0.3"}},
            "OpenAI/GPT-5-Codex": {
                "prices": {"input": "2.00", "input_cached_tokens": "0.20", "output": "16.00"},
                "sources": [{"url": "https://example.com/contract", "checked": "2026-11-01", "covers": ["standard"]}],
            },
            "gpt-5-2025-08-07": {"prices": {"input": 7, "output": 70}},  # numbers work too
        },
    })
    table = PriceTable.load(path)

    added = table.price("my-proxy-model", FULL_RUN)
    assert_costs(added, {
        "input": 2800 * 3 / M,
        "input_cached_tokens": 3200 * 0.3 / M,
        "output": 160 * 9 / M,
        "output_reasoning_tokens": 100 * 9 / M,
    })
    assert added.table_version == f"override:{path}"
    assert added.source == f"override file {path}"

    replaced = table.price("gpt-5-codex", FULL_RUN)
    assert_costs(replaced, {
        "input": 2800 * 2.00 / M,
        "input_cached_tokens": 3200 * 0.20 / M,
        "output": 160 * 16.00 / M,
        "output_reasoning_tokens": 100 * 16.00 / M,
    })
    assert replaced.table_version == f"override:{path}"
    assert replaced.source == "https://example.com/contract (checked 2026-11-01)"
    assert table.price("gpt-5-codex", FULL_RUN, service_tier="priority") is None  # whole entry replaced

    # A snapshot with its own entry wins over its base name; the base is untouched.
    assert table.price("gpt-5-2025-08-07", {"input": 1000})
    assert table.price("gpt-5-2025-08-07", {"input": 1000}).cost_details["input"] == pytest.approx(1000 * 7 / M, abs=EXACT)
    assert table.price("gpt-5", {"input": 1000}).cost_details["input"] == pytest.approx(1000 * 1.25 / M, abs=EXACT)
    assert table.price("gpt-5", {"input": 1000}).table_version == "2026-11-30"


def test_without_override_the_shipped_table_is_used(tmp_path):
    path = write_json(tmp_path / "empty.json", {"models": {}})
    assert PriceTable.load(path).models == PriceTable.load().models


MALFORMED_ENTRIES = {
    "missing output": ({"prices": {"input": "1"}}, "prices.output"),
    "negative price": ({"prices": {"input": "-1", "output": "2"}}, "prices.input"),
    "not a number": ({"prices": {"input": "cheap", "output": "2"}}, "prices.input"),
    "typo in a bucket": ({"prices": {"inptu": "1", "input": "1", "output": "2"}}, "inptu"),
    "unknown service tier": ({"prices": {"input": "1", "output": "2"}, "service_tiers": {"turbo": {"input": "1", "output": "1"}}}, "service_tiers"),
    "threshold as text": ({"prices": {"input": "1", "output": "2"}, "long_context": {"threshold_input_tokens": "272000", "prices": {"input": "2", "output": "4"}}}, "threshold_input_tokens"),
    "source without url": ({"prices": {"input": "1", "output": "2"}, "sources": [{"checked": "2026-01-01"}]}, "sources.0.url"),
    "source with a bad date": ({"prices": {"input": "1", "output": "2"}, "sources": [{"url": "https://x.test", "checked": "yesterday"}]}, "sources.0.checked"),
    "unknown entry key": ({"prices": {"input": "1", "output": "2"}, "service_tier": {}}, "service_tier"),
    "entry not an object": ("1.25", "entry"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_ENTRIES))
def test_malformed_override_entry_names_file_and_entry(tmp_path, case):
    entry, detail = MALFORMED_ENTRIES[case]
    path = write_json(tmp_path / "override.json", {"models": {"gpt-5": {"prices": {"input": "1", "output": "2"}}, "broken-model": entry}})
    with pytest.raises(ValueError) as raised:
        PriceTable.load(path)
    message = str(raised.value)
    assert str(path) in message
    assert "'broken-model'" in message
    assert detail in message


@pytest.mark.parametrize(("content", "detail"), [
    ("{not json", "not valid JSON"),
    ('{"entries": {}}', "'models' object"),
    ('[1, 2]', "'models' object"),
    ('{"models": {}, "unit": "USD per token"}', "unit"),
    ('{"models": {"GPT-5": {"prices": {"input": 1, "output": 2}}, "gpt-5": {"prices": {"input": 1, "output": 2}}}}', "appears twice"),
])
def test_malformed_override_file_names_the_file(tmp_path, content, detail):
    path = tmp_path / "override.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(detail)) as raised:
        PriceTable.load(path)
    assert str(path) in str(raised.value)


def test_missing_override_file_is_a_value_error(tmp_path):
    path = tmp_path / "nowhere.json"
    with pytest.raises(ValueError, match="cannot be read") as raised:
        PriceTable.load(path)
    assert str(path) in str(raised.value)


# --- the shipped data file ------------------------------------------------------------------------


def entry_tiers(entry: dict) -> set[str]:
    tiers = {"standard"} | set(entry.get("service_tiers", {}))
    long_context = entry.get("long_context")
    if long_context:
        tiers.add("long_context")
        tiers |= {f"{tier}_long_context" for tier in long_context.get("service_tiers", {})}
    return tiers


def test_table_documents_itself(shipped):
    assert shipped["unit"] == "USD per 1M tokens"
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", shipped["table_version"])
    notes = " ".join(shipped["$schema_notes"])
    for term in ("USD per 1,000,000 tokens", "openai/", "YYYY-MM-DD", "long_context", "sources", "override", *USAGE_KEYS):
        assert term in notes, term


def test_table_covers_the_codex_models(table):
    codex_models = {"gpt-5-codex", "gpt-5.1-codex", "gpt-5.1-codex-mini", "gpt-5.1-codex-max", "gpt-5.2-codex",
                    "gpt-5.3-codex", "codex-mini-latest"}
    general = {"gpt-5", "gpt-5-mini", "gpt-5-nano", "gpt-5-pro", "gpt-5.1", "gpt-5.2", "gpt-5.2-pro", "gpt-5.4",
               "gpt-5.4-mini", "gpt-5.4-nano", "gpt-5.4-pro", "gpt-5.5", "gpt-5.5-pro", "o3", "o4-mini", "gpt-4.1"}
    assert codex_models | general <= set(table.models)


def test_every_entry_has_dated_sources_covering_each_tier(shipped):
    assert shipped["models"]
    for name, entry in shipped["models"].items():
        assert name == name.strip().lower(), name
        sources = entry.get("sources")
        assert sources, f"{name}: no source"
        covered: set[str] = set()
        for source in sources:
            assert re.fullmatch(r"https?://\S+", source.get("url", "")), f"{name}: source without a URL"
            datetime.date.fromisoformat(source["checked"])
            if "published" in source:
                datetime.date.fromisoformat(source["published"])
            assert source.get("kind") in {"openai", "langfuse", "third-party"}, name
            assert source.get("covers"), f"{name}: a source that covers no tier"
            assert set(source["covers"]) <= TIER_NAMES, name
            covered |= set(source["covers"])
        assert entry_tiers(entry) <= covered, f"{name}: tiers without a source: {entry_tiers(entry) - covered}"


def test_every_price_is_a_decimal_string(shipped):
    def rate_tables(entry):
        yield entry["prices"]
        yield from entry.get("service_tiers", {}).values()
        if "long_context" in entry:
            yield entry["long_context"]["prices"]
            yield from entry["long_context"].get("service_tiers", {}).values()

    for name, entry in shipped["models"].items():
        for rates in rate_tables(entry):
            assert {"input", "output"} <= set(rates), name
            for bucket, value in rates.items():
                assert bucket in USAGE_KEYS, (name, bucket)
                assert isinstance(value, str) and re.fullmatch(r"\d+(\.\d+)?", value), (name, bucket, value)
            # OpenAI bills reasoning at the output rate; an explicit different rate would need a source saying so.
            assert rates.get("output_reasoning_tokens", rates["output"]) == rates["output"], name


# --- cross-check with Langfuse's own table -------------------------------------------------------


def per_million(per_token: float) -> Decimal:
    return Decimal(repr(per_token)) * 1_000_000


LANGFUSE_TIERS = {
    "Standard": "standard",
    "Fast mode": "priority",
    "Flex": "flex",
    "Large Context (>272K)": "long_context",
    "Flex · Large context (>272K)": "flex_long_context",
    "Fast mode · Large context (>272K)": "priority_long_context",
}


def our_rates(entry: dict, tier: str) -> dict | None:
    if tier == "standard":
        return entry["prices"]
    if tier.endswith("long_context"):
        long_context = entry.get("long_context") or {}
        if tier == "long_context":
            return long_context.get("prices")
        return long_context.get("service_tiers", {}).get(tier.removesuffix("_long_context"))
    return entry.get("service_tiers", {}).get(tier)


def test_prices_agree_with_langfuse_or_the_difference_is_documented(table, shipped):
    langfuse = json.loads(LANGFUSE_SUBSET.read_text(encoding="utf-8"))["models"]
    compared_standard = set()
    for lf_model in langfuse:
        pattern = re.compile(lf_model["matchPattern"])
        ours = [name for name in shipped["models"] if pattern.match(name)]
        matched = table.match(lf_model["modelName"])
        assert matched is not None, lf_model["modelName"]
        assert ours in ([], [matched]), (lf_model["modelName"], ours)
        entry = shipped["models"][matched]
        for lf_tier in lf_model["pricingTiers"]:
            tier = LANGFUSE_TIERS[lf_tier["name"]]
            rates = our_rates(entry, tier)
            if rates is None:
                assert tier != "standard"
                continue
            theirs = {bucket: per_million(value) for bucket, value in lf_tier["prices"].items()
                      if bucket in ("input", "input_cached_tokens", "input_cache_creation", "output")}
            mine = {bucket: Decimal(value) for bucket, value in rates.items()}
            if mine != theirs:
                assert entry.get("langfuse_difference"), f"{matched} {tier}: {mine} != Langfuse {theirs}"
            if tier == "standard":
                compared_standard.add(matched)
            # Langfuse prices reasoning at the output rate too.
            if "output_reasoning_tokens" in lf_tier["prices"]:
                assert lf_tier["prices"]["output_reasoning_tokens"] == lf_tier["prices"]["output"]
            # The priced result for Langfuse's own (possibly dated) name is the same.
            if tier == "standard":
                # (100K tokens stay under every long-context threshold.)
                price = table.price(lf_model["modelName"], {"input": 100_000, "output": 100_000})
                assert price.tier == "standard"
                assert price.cost_details["input"] == float(theirs["input"] / 10)
                assert price.cost_details["output"] == float(theirs["output"] / 10)
    names_in_both = {name for name in shipped["models"]
                     if any(re.compile(m["matchPattern"]).match(name) for m in langfuse)}
    assert compared_standard == names_in_both
    assert len(compared_standard) >= 20
    assert "gpt-5.3-codex" in compared_standard
    assert "gpt-5-codex" not in names_in_both  # Langfuse v4.16.0 has no gpt-5-codex: anchored patterns


# --- prices as of a date --------------------------------------------------------------------------


def test_every_price_period_has_dated_sources_and_follows_the_one_before(shipped):
    dated = {name: entry for name, entry in shipped["models"].items() if entry.get("history")}
    assert {"gpt-5.6-luna", "gpt-5.6-terra"} <= set(dated)
    for name, entry in dated.items():
        starts = [datetime.date.fromisoformat(period["effective_from"]) for period in entry["history"]]
        assert starts == sorted(starts) and starts[-1] < datetime.date.fromisoformat(entry["effective_from"]), name
        for period in entry["history"]:
            covered = {tier for source in period["sources"] for tier in source["covers"]}
            assert entry_tiers(period) <= covered, (name, period["effective_from"])
            for source in period["sources"]:
                datetime.date.fromisoformat(source["checked"])
                assert re.fullmatch(r"https?://\S+", source["url"])


@pytest.mark.parametrize("model,before,after", [
    ("gpt-5.6-terra", ("2.5", "0.25", "15"), ("2", "0.2", "12")),
    ("gpt-5.6-luna", ("1", "0.1", "6"), ("0.2", "0.02", "1.2")),
])
def test_the_gpt_5_6_cut_of_2026_07_30(table, model, before, after):
    usage = {"input": 100_000, "input_cached_tokens": 100_000, "output": 100_000}  # under the 272K tier

    def tenth(rate):
        return float(Decimal(rate) / 10)

    for day, rates in ((datetime.date(2026, 7, 29), before), (datetime.date(2026, 7, 30), after),
                       (datetime.date(2026, 6, 26), before), (datetime.date(2026, 11, 30), after)):
        price = table.price(model, usage, on=day)
        assert price.tier == "standard"
        assert [price.cost_details[b] for b in ("input", "input_cached_tokens", "output")] == [tenth(r) for r in rates]
    assert table.price(model, usage).cost_details["input"] == tenth(after[0])  # no date: today's prices
    launch = table.price(model, usage, on=datetime.date(2026, 7, 1))
    assert launch.effective_from == datetime.date(2026, 6, 26) and "apimaster.ai" in launch.source
    assert table.price(model, usage, on=datetime.date(2026, 8, 1)).effective_from == datetime.date(2026, 7, 30)


def test_a_period_prices_only_the_tiers_published_for_it(table):
    usage = {"input": 1000, "output": 1000}
    early = datetime.date(2026, 7, 1)
    assert table.price("gpt-5.6-terra", usage, on=early, service_tier="flex") is None
    assert table.price("gpt-5.6-terra", usage, on=datetime.date(2026, 8, 1), service_tier="flex") is not None
    long = table.price("gpt-5.6-terra", {"input": 300_000, "output": 1000}, on=early)
    assert long.tier == "long_context" and long.cost_details["input"] == float(Decimal(300_000) * 5 / 10 ** 6)
    # models without history price the same on any date
    assert table.price("gpt-5-codex", usage, on=datetime.date(2020, 1, 1)) == table.price("gpt-5-codex", usage)


def test_override_periods_must_be_in_order(tmp_path):
    entry = {"prices": {"input": "1", "output": "2"}, "effective_from": "2026-01-01",
             "history": [{"effective_from": "2026-02-01", "prices": {"input": "3", "output": "4"}}]}
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"models": {"my-model": entry}}))
    with pytest.raises(ValueError, match="effective_from must follow"):
        PriceTable.load(path)
    entry["effective_from"] = "2026-03-01"
    path.write_text(json.dumps({"models": {"my-model": entry}}))
    table = PriceTable.load(path)
    assert table.price("my-model", {"input": 10 ** 6}, on=datetime.date(2026, 2, 15)).cost_details["input"] == 3.0
    assert table.price("my-model", {"input": 10 ** 6}, on=datetime.date(2026, 3, 1)).cost_details["input"] == 1.0
