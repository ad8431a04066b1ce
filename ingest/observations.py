"""What the mapping produces: Langfuse observations and scores, as plain data.

Ids are deterministic (a hash of the run id and the observation's place in the run), so folding
the same events twice yields the same ids, and Langfuse never sees two versions of one thing.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from codex_langfuse.producer.entries import trace_id

__all__ = ["Observation", "Score", "TraceAttributes", "observation_id", "root_id", "score_id", "trace_id"]

ObservationType = Literal["agent", "generation", "tool", "event", "span", "chain"]
Level = Literal["DEBUG", "DEFAULT", "WARNING", "ERROR"]
ScoreType = Literal["NUMERIC", "BOOLEAN", "CATEGORICAL", "TEXT"]


def observation_id(run_id: str, key: str) -> str:
    """16 hex characters: the first 8 bytes of sha256, Langfuse's rule for seeded ids."""
    return hashlib.sha256(f"{run_id}/{key}".encode()).digest()[:8].hex()


def root_id(run_id: str) -> str:
    """The id of a run's root `agent` observation."""
    return observation_id(run_id, "root")


def score_id(trace: str, name: str, observation: str | None = None) -> str:
    """Stable, so the ledger knows a score was sent and Langfuse replaces rather than adds a row
    sent again (servers up to v4.16 replace per id, name and the day it was received). A run in a
    trace of its own: `<trace id>-<name>`. A run that shares its trace with others (it joined a
    caller's trace, or reused a run id): its root observation's id keeps the score its own."""
    return f"{trace}-{observation}-{name}" if observation else f"{trace}-{name}"


class TraceAttributes(BaseModel):
    """Trace-level attributes of one span. Langfuse stores name, user, session, tags, release and
    environment per row and filters on each row's own, so every span carries them; it reads the
    trace's metadata from the root row only and merges a span's trace metadata into that span's
    own metadata, so only the run's root carries `metadata`. A run that joined a caller's trace
    leaves the name (None), metadata, input and output to the caller unless asked to set them."""

    model_config = ConfigDict(frozen=True)

    name: str | None
    user_id: str | None = None
    session_id: str | None = None
    tags: tuple[str, ...] = ()
    environment: str | None = None
    release: str | None = None
    metadata: dict[str, Any] = {}
    input: Any = None  # the trace's input and output as attributes of their own: only when a run
    output: Any = None  # that joined a caller's trace was asked to set them


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
    model_parameters: dict[str, Any] | None = None
    usage_details: dict[str, int] | None = None
    cost_details: dict[str, float] | None = None


class Score(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    trace_id: str
    name: str
    value: float | str
    data_type: ScoreType
    timestamp_us: int  # Langfuse up to v4.16 ignores it and keeps the time it received the score
    observation_id: str | None = None  # a run that joined a caller's trace scores its root there
    comment: str | None = None
    environment: str | None = None
    metadata: dict[str, Any] = {}
