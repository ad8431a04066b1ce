"""Cost of one generation from its token usage, in USD, from a sourced price table.

The table ships as `ingest/prices.json` (its `$schema_notes` describe the format); a user file of the
same shape (setting `CODEX_LANGFUSE_PRICES_FILE`, read by the caller) replaces or adds entries by
model name. Nothing here does I/O except reading those two files.

Prices change: an entry's prices are in force since its `effective_from`, its `history` holds the
earlier periods, and `price(..., on=date)` uses the period of that date (a rollout record's date
for an imported turn, the date a line was read for a live run).

Usage buckets are Langfuse's exclusive `usage_details` keys. `usage_buckets` turns OpenAI Responses
counts (where cached input is part of input and reasoning is part of output) into them;
`PriceTable.price` prices them. When a model or tier is not in the table, `price` returns None and the
caller sends usage alone, so Langfuse can still infer a cost from its own table.

Arithmetic: each bucket costs `tokens * rate / 1_000_000`, computed exactly with `decimal.Decimal`
from the table's decimal strings (no rounding at all); `total` is the exact sum of the buckets.
Only the final values are converted to float, so every figure is exact to about 1e-15 relative, far
below a micro-dollar, and `total` equals the sum of the other values up to float rounding.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from dataclasses import dataclass
from decimal import Decimal, localcontext
from functools import cache
from importlib import resources
from typing import Annotated, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

USAGE_KEYS = ("input", "input_cached_tokens", "input_cache_creation", "output", "output_reasoning_tokens")

TOKENS_PER_UNIT = Decimal(1_000_000)  # table prices are per 1M tokens
PROVIDER_PREFIX = "openai/"
SNAPSHOT_SUFFIX = re.compile(r"^(?P<base>.+)-\d{4}-\d{2}-\d{2}$")
INPUT_BUCKETS = ("input", "input_cached_tokens", "input_cache_creation")

ServiceTier = Literal["flex", "priority"]
# Requested service tier -> the table's tier; "fast" is OpenAI's newer name for priority processing.
SERVICE_TIER_ALIASES: dict[str, ServiceTier | None] = {
    "default": None,
    "auto": None,
    "standard": None,
    "flex": "flex",
    "priority": "priority",
    "fast": "priority",
}

Rate = Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]


class Rates(BaseModel):
    """USD per 1M tokens for each usage bucket of one tier."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: Rate
    output: Rate
    input_cached_tokens: Rate | None = None
    input_cache_creation: Rate | None = None
    output_reasoning_tokens: Rate | None = None

    def rate(self, bucket: str) -> Decimal:
        # A model without a cache discount bills cached input as input; OpenAI bills reasoning as output.
        explicit = getattr(self, bucket)
        if explicit is not None:
            return explicit
        return self.output if bucket == "output_reasoning_tokens" else self.input


class LongContext(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold_input_tokens: Annotated[int, Field(gt=0, strict=True)]
    prices: Rates
    service_tiers: dict[ServiceTier, Rates] = {}


class Source(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: Annotated[str, Field(pattern=r"^https?://\S+$")]
    checked: datetime.date
    title: str | None = None
    kind: Literal["openai", "langfuse", "third-party"] | None = None
    published: datetime.date | None = None
    covers: tuple[str, ...] = ()

    def describe(self) -> str:
        dates = f"published {self.published}, checked {self.checked}" if self.published else f"checked {self.checked}"
        return f"{self.url} ({dates})"


class TierPrices(BaseModel):
    """The rates of every tier of one model over one period."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prices: Rates
    service_tiers: dict[ServiceTier, Rates] = {}
    long_context: LongContext | None = None
    sources: tuple[Source, ...] = ()
    notes: str | None = None

    def tier_rates(self, service_tier: ServiceTier | None, long_context: bool) -> tuple[str, Rates] | None:
        if long_context and self.long_context is not None:
            if service_tier is None:
                return "long_context", self.long_context.prices
            rates = self.long_context.service_tiers.get(service_tier)
            return (f"{service_tier}_long_context", rates) if rates is not None else None
        if service_tier is None:
            return "standard", self.prices
        rates = self.service_tiers.get(service_tier)
        return (service_tier, rates) if rates is not None else None


class PricePeriod(TierPrices):
    """Earlier prices of a model, in force from `effective_from` until the next period begins."""

    effective_from: datetime.date


class ModelPrices(TierPrices):
    """One entry of the table: the prices of one model name, in force since `effective_from`
    (always, when absent), and `history`: the earlier periods, each with its own sources."""

    effective_from: datetime.date | None = None
    history: tuple[PricePeriod, ...] = ()
    langfuse_difference: str | None = None

    @model_validator(mode="after")
    def _periods_in_order(self) -> "ModelPrices":
        starts = [period.effective_from for period in self.history]
        if starts != sorted(set(starts)):
            raise ValueError("history: periods must be in date order, each starting on its own date")
        if self.history and (self.effective_from is None or self.effective_from <= starts[-1]):
            raise ValueError("effective_from must follow the last history period")
        return self

    def period(self, on: datetime.date | None) -> TierPrices:
        """The prices in force on `on` (the current ones when None, or before the first period)."""
        if on is None or self.effective_from is None or on >= self.effective_from:
            return self
        earlier = [period for period in self.history if period.effective_from <= on]
        return earlier[-1] if earlier else self.history[0] if self.history else self


@dataclass(frozen=True)
class Price:
    """The cost of one generation."""

    cost_details: dict[str, float]  # USD per usage bucket with tokens, plus "total"
    source: str
    model: str  # the table entry that matched
    tier: str  # standard, flex, priority, long_context, flex_long_context, priority_long_context
    table_version: str  # the shipped table's version, or "override:<path>"
    effective_from: datetime.date | None = None  # the start of the period whose prices applied


@dataclass(frozen=True)
class _Entry:
    prices: ModelPrices
    table_version: str
    origin: str  # "shipped" or the override file's path


def usage_buckets(
    input_tokens: int,
    cached_input_tokens: int,
    output_tokens: int,
    reasoning_output_tokens: int = 0,
    cache_write_input_tokens: int = 0,
) -> dict[str, int]:
    """Exclusive Langfuse usage buckets from OpenAI Responses counts.

    `input`, `input_cached_tokens`, `output`, `output_reasoning_tokens` and `total` are always
    present (every OpenAI usage reports cached and reasoning counts, zero or not);
    `input_cache_creation` only when cache writes were reported, since almost no model has them.
    A missing (None) or negative count is taken as 0; `total` is the sum of the buckets, which is
    `input_tokens + output_tokens` whenever the parts fit inside their wholes.
    """
    input_total = _count(input_tokens)
    cached = _count(cached_input_tokens)
    cache_write = _count(cache_write_input_tokens)
    output_total = _count(output_tokens)
    reasoning = _count(reasoning_output_tokens)
    buckets = {"input": max(0, input_total - cached - cache_write), "input_cached_tokens": cached}
    if cache_write:
        buckets["input_cache_creation"] = cache_write
    buckets["output"] = max(0, output_total - reasoning)
    buckets["output_reasoning_tokens"] = reasoning
    buckets["total"] = sum(buckets.values())
    return buckets


class PriceTable:
    """Model name -> prices; built with `PriceTable.load`."""

    def __init__(self, entries: Mapping[str, _Entry]):
        self._entries = dict(entries)

    @classmethod
    def load(cls, override_path: str | os.PathLike | None = None) -> PriceTable:
        """The shipped table, then the entries of the override file (same format) by model name."""
        version, shipped = _shipped_table()
        entries = {name: _Entry(prices, version, "shipped") for name, prices in shipped.items()}
        if override_path is not None:
            path = os.fspath(override_path)
            _, overrides = _parse_table(_read_override(path), path, require_sources=False)
            entries.update({name: _Entry(prices, f"override:{path}", path) for name, prices in overrides.items()})
        return cls(entries)

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def match(self, model: str | None) -> str | None:
        """The entry a model name resolves to, or None."""
        if model is None:
            return None
        name = _normalize_name(model)
        if name in self._entries:
            return name
        snapshot = SNAPSHOT_SUFFIX.match(name)
        if snapshot and snapshot["base"] in self._entries:
            return snapshot["base"]
        return None

    def price(
        self,
        model: str | None,
        usage: Mapping[str, int],
        *,
        service_tier: str | None = None,
        request_input_tokens: int | None = None,
        on: datetime.date | None = None,
    ) -> Price | None:
        """Cost of `usage` (exclusive buckets; a "total" key is ignored) on `model`, at the prices
        in force on the date `on` (the current prices when None).

        None when the model is None or unknown, when `service_tier` is not a known tier, or when the
        tier (or tier over the long-context threshold) has no published price for the model.
        The long-context tier applies when one request's input exceeds the model's threshold; `usage`
        is taken as one request unless `request_input_tokens` gives the input of its largest request
        (usage summed over several model calls must not look like one huge request).
        """
        counts = _usage_counts(usage)
        name = self.match(model)
        if name is None:
            return None
        requested_tier = (service_tier or "").strip().lower() or "default"
        if requested_tier not in SERVICE_TIER_ALIASES:
            return None
        tier_key = SERVICE_TIER_ALIASES[requested_tier]
        entry = self._entries[name]
        period = entry.prices.period(on)
        request_input = (
            _usage_count("request_input_tokens", request_input_tokens)
            if request_input_tokens is not None
            else sum(counts.get(bucket, 0) for bucket in INPUT_BUCKETS)
        )
        long_context = period.long_context
        over_threshold = long_context is not None and request_input > long_context.threshold_input_tokens
        resolved = period.tier_rates(tier_key, over_threshold)
        if resolved is None:
            return None
        tier, rates = resolved
        with localcontext() as exact:
            exact.prec = 60  # far more digits than any token count times any rate needs: no rounding
            costs = {bucket: count * rates.rate(bucket) / TOKENS_PER_UNIT for bucket, count in counts.items() if count}
            total = sum(costs.values(), Decimal(0))
        cost_details = {bucket: float(cost) for bucket, cost in costs.items()}
        cost_details["total"] = float(total)
        return Price(
            cost_details=cost_details,
            source=_describe_sources(entry, period, tier),
            model=name,
            tier=tier,
            table_version=entry.table_version,
            effective_from=getattr(period, "effective_from", None),
        )


def _normalize_name(model: str) -> str:
    name = model.strip().lower()
    return name[len(PROVIDER_PREFIX) :] if name.startswith(PROVIDER_PREFIX) else name


def _describe_sources(entry: _Entry, period: TierPrices, tier: str) -> str:
    sources = period.sources
    if not sources:
        return f"override file {entry.origin}"
    covering = [source for source in sources if tier in source.covers] or list(sources)
    return covering[0].describe()


def _count(value: int | None) -> int:
    return 0 if value is None else max(0, int(value))


def _usage_count(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"usage {key!r} must be an int, got {value!r}")
    if value < 0:
        raise ValueError(f"usage {key!r} must not be negative, got {value}")
    return value


def _usage_counts(usage: Mapping[str, int]) -> dict[str, int]:
    unknown = set(usage) - set(USAGE_KEYS) - {"total"}
    if unknown:
        raise ValueError(f"unknown usage keys {sorted(unknown)}; expected some of {USAGE_KEYS} (and 'total')")
    return {bucket: _usage_count(bucket, usage[bucket]) for bucket in USAGE_KEYS if bucket in usage}


def _read_override(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"price file {path}: cannot be read: {exc}") from exc


@cache
def _shipped_table() -> tuple[str, dict[str, ModelPrices]]:
    text = resources.files("codex_langfuse.ingest").joinpath("prices.json").read_text(encoding="utf-8")
    return _parse_table(text, "ingest/prices.json", require_sources=True)


def _parse_table(text: str, path: str, *, require_sources: bool) -> tuple[str, dict[str, ModelPrices]]:
    try:
        # Decimal for every number, so a price written as a JSON number stays exact too.
        document = json.loads(text, parse_float=Decimal)
    except json.JSONDecodeError as exc:
        raise ValueError(f"price file {path}: not valid JSON: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("models"), dict):
        raise ValueError(f"price file {path}: expected an object with a 'models' object")
    unit = document.get("unit", "USD per 1M tokens")
    if unit != "USD per 1M tokens":
        raise ValueError(f"price file {path}: unit must be 'USD per 1M tokens', got {unit!r}")
    version = document.get("table_version")
    if version is not None and not isinstance(version, str):
        raise ValueError(f"price file {path}: table_version must be a string")
    entries: dict[str, ModelPrices] = {}
    for raw_name, raw_entry in document["models"].items():
        name = _normalize_name(raw_name)
        if not name:
            raise ValueError(f"price file {path}: an entry has an empty model name")
        if name in entries:
            raise ValueError(f"price file {path}: entry {raw_name!r}: model {name!r} appears twice")
        try:
            prices = ModelPrices.model_validate(raw_entry)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in error['loc']) or '(entry)'}: {error['msg']}" for error in exc.errors()
            )
            raise ValueError(f"price file {path}: entry {raw_name!r}: {problems}") from None
        if require_sources and not (prices.sources and all(period.sources for period in prices.history)):
            raise ValueError(f"price file {path}: entry {raw_name!r}: no source")
        entries[name] = prices
    return version or "unversioned", entries
