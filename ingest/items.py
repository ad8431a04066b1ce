"""What a run delivers, OTLP spans and scores, and the two keys that name each of them.

- `slot`: the item's place in a run's outbox and in a dead letter. A span by its span id, a
  score by `score:<score id>`: one slot per thing Langfuse should hold.
- `ledger_key`: what the ledger records once Langfuse accepted the item. A span by its span id
  (a span is sent once, ever). A score by its id and its content: a score sent again with a new
  value overwrites the old one in Langfuse, so the new value must go out; the same value, never.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

SCORE_PREFIX = "score:"

Item = dict[str, Any]


def is_span(item: Item) -> bool:
    return "spanId" in item


def slot(item: Item) -> str:
    return item["spanId"] if is_span(item) else f"{SCORE_PREFIX}{item['id']}"


def is_score_slot(key: str | bytes) -> bool:
    return (key.decode() if isinstance(key, bytes) else key).startswith(SCORE_PREFIX)


def ledger_key(item: Item) -> str:
    if is_span(item):
        return item["spanId"]
    content = json.dumps([item.get("value"), item.get("comment"), item.get("dataType")], sort_keys=True)
    return f"{SCORE_PREFIX}{item['id']}:{hashlib.sha256(content.encode()).hexdigest()[:16]}"
