"""What a run delivers, OTLP spans and scores, and the two keys that name each of them.

A span is encoded once, when it completes (`Span.encode`): the outbox holds those bytes and the
export request carries them as they are; only a span that must be changed (shrunk) or shown (a
dead letter, the sink) is decoded. A score stays a dict (scores are few).

- `slot`: the item's place in a run's outbox and in a dead letter. A span by its span id, a
  score by `score:<score id>`: one slot per thing Langfuse should hold.
- `ledger_key`: what the ledger records once Langfuse accepted the item. A span by its span id
  (a span is sent once, ever). A score by its id and its content: a score sent again with a new
  value overwrites the old one in Langfuse, so the new value must go out; the same value, never.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Union

import orjson

SCORE_PREFIX = "score:"


@dataclass(frozen=True, slots=True)
class Span:
    """An OTLP/JSON span, encoded: `data` is exactly what Langfuse receives of it."""

    span_id: str
    trace_id: str
    data: bytes

    @classmethod
    def encode(cls, span: dict[str, Any]) -> "Span":
        return cls(span["spanId"], span["traceId"], orjson.dumps(span))

    def decode(self) -> dict[str, Any]:
        return orjson.loads(self.data)

    def end_ns(self) -> int:
        """Its end time, read without decoding it: no other object key has that name, and a string
        cannot hold it unescaped."""
        at = self.data.find(b'"endTimeUnixNano":"') + 19
        return int(self.data[at:self.data.index(b'"', at)])


Item = Union[Span, dict[str, Any]]


def slot(item: Item) -> str:
    if isinstance(item, Span):
        return item.span_id
    return item["spanId"] if "spanId" in item else f"{SCORE_PREFIX}{item['id']}"


def is_score_slot(key: str | bytes) -> bool:
    return (key.decode() if isinstance(key, bytes) else key).startswith(SCORE_PREFIX)


def ledger_key(item: Item) -> str:
    if isinstance(item, Span):
        return item.span_id
    if "spanId" in item:
        return item["spanId"]
    content = json.dumps([item.get("value"), item.get("comment"), item.get("dataType")], sort_keys=True)
    return f"{SCORE_PREFIX}{item['id']}:{hashlib.sha256(content.encode()).hexdigest()[:16]}"
