"""What the mapping produces: Langfuse observations and scores, as plain data.

Ids are deterministic (a hash of the run id and the observation's place in the run), so folding
the same events twice yields the same ids, and Langfuse never sees two versions of one thing.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from codex_langfuse.producer.entries import trace_id

__all__ = ["Observation", "Score", "TraceAttributes", "observation_id", "score_id", "trace_id"]

ObservationType = Literal["agent", "generation", "tool", "event", "span", "chain"]
Level = Literal["DEBUG", "DEFAULT", "WARNING", "ERROR"]
ScoreType = Literal["NUMERIC", "BOOLEAN", "CATEGORICAL", "TEXT"]


def observation_id(run_id: str, key: str) -> str:
    """16 hex characters: the first 8 bytes of sha256, Langfuse's rule for seeded ids."""
    return hashlib.sha256(f"{run_id}/{key}".encode()).digest()[:8].hex()


def score_id(trace: str, name: str, instance: str | None = None) -> str:
    # Langfuse overwrites a score whose id, name and timestamp date match: re-sending is safe. A
    # later run that reused a run id scores the same trace under ids of its own.
    return f"{trace}-{name}" if instance is None else f"{trace}-{instance}-{name}"


class TraceAttributes(BaseModel):
    """Trace-level attributes, repeated on every span so any span can create the trace."""

    model_config = ConfigDict(frozen=True)

    name: str
    user_id: str | None = None
    session_id: str | None = None
    tags: tuple[str, ...] = ()
    environment: str | None = None
    release: str | None = None
    metadata: dict[str, Any] = {}


class Observation(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    trace_id: str
    parent_id: str | None
    type: ObservationType
    name: str
    start_us: int
    end_us: int
    trace: TraceAttributes
    input: Any = None
    output: Any = None
    level: Level = "DEFAULT"
    status_message: str | None = None
    metadata: dict[str, Any] = {}
    model: str | None = None
    usage_details: dict[str, int] | None = None
    cost_details: dict[str, float] | None = None


class Score(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    trace_id: str
    name: str
    value: float | str
    data_type: ScoreType
    timestamp_us: int
    comment: str | None = None
    environment: str | None = None
    metadata: dict[str, Any] = {}
