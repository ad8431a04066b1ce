"""A strict local stand-in for the Langfuse server, for tests, in one of several server profiles.

No real Langfuse can run on the test machines (see /work/shared/reference/langfuse.md), so tests
send to this receiver instead. It enforces what Langfuse enforces (Basic auth, content types,
span ids, times, attribute shapes) plus this project's own rules, and, like Langfuse v4, keeps
every copy of every span it accepts, so a duplicate sent by a worker is visible to the test.

Profiles (the server generations a team may run; each taken from the server's own code, see
`PROFILES`): `latest` (scores as a list, 202/207), `v4.16` (one score object per request, the
score's timestamp ignored, the v2 observations API) and `v3` (one score object, no v2
observations API, the v1 one lagging behind ingestion). In every profile the receiver stores what
the server stores: metadata values raw, `langfuse.trace.metadata.*` merged into that observation's
metadata, the environment normalised; `trace()` shows a trace as a user sees it.

Routes (what `langfuse.api.client.LangfuseAPI` 5.0.4 calls, and the v1 listing it cannot):
    POST /api/public/otel/v1/traces   OTLP JSON or protobuf, optional gzip -> 200 {}
    POST /api/public/scores           latest: list -> 202 / 207 (an object -> 200 {"id"});
                                      v4.16, v3: object -> 200 {"id"}, list -> 400
    GET  /api/public/v2/observations  cursor-paginated listing (404 on v3)
    GET  /api/public/observations     v1, page-paginated listing (lags on v3)
    GET  /api/public/health           no auth
    GET  /api/public/projects         the project the keys open (the SDK's auth check)
    /__control/...                    JSON control API for `ReceiverProcess` (no auth, 127.0.0.1)

Two ways to run it, with the same inspection and fault methods:
    with LangfuseReceiver(profile="v4.16") as receiver: ...   # in this process (background thread)
    with ReceiverProcess(profile="v3") as receiver: ...      # `python -m tests.support.langfuse_receiver`

Standard library only (protobuf bodies are decoded when `opentelemetry-proto` is importable).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import dataclasses
import datetime as dt
import email.utils
import gzip
import http.server
import json
import math
import os
import re
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib
from pathlib import Path
from typing import Any, Callable, TypeVar
from urllib.parse import parse_qs, urlsplit

try:  # optional: only needed to accept application/x-protobuf bodies
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest as _ProtoExportRequest,
    )
except ImportError:  # pragma: no cover - depends on the environment
    _ProtoExportRequest = None

OTEL_TRACES_PATH = "/api/public/otel/v1/traces"
SCORES_PATH = "/api/public/scores"
OBSERVATIONS_PATH = "/api/public/v2/observations"
OBSERVATIONS_V1_PATH = "/api/public/observations"
HEALTH_PATH = "/api/public/health"
PROJECTS_PATH = "/api/public/projects"
CONTROL_PREFIX = "/__control/"

# Requests are logged and faults aimed by route; "observations" is both listings (v1 and v2).
ROUTE_OF_PATH = {
    OTEL_TRACES_PATH: "traces",
    SCORES_PATH: "scores",
    OBSERVATIONS_PATH: "observations",
    OBSERVATIONS_V1_PATH: "observations",
    HEALTH_PATH: "health",
    PROJECTS_PATH: "projects",
}
FAULT_ROUTES = frozenset({"traces", "scores", "observations", "health", "projects", "any"})

OBSERVATION_TYPES = frozenset(
    {"span", "generation", "event", "agent", "tool", "chain", "retriever", "evaluator",
     "guardrail", "embedding"}
)
COST_BEARING_TYPES = frozenset({"generation", "embedding"})
LEVELS = frozenset({"DEBUG", "DEFAULT", "WARNING", "ERROR"})
SCORE_DATA_TYPES = frozenset({"NUMERIC", "BOOLEAN", "CATEGORICAL", "TEXT"})
OBSERVATION_FIELD_GROUPS = frozenset(
    {"core", "basic", "time", "io", "metadata", "model", "usage", "prompt", "metrics",
     "trace_context"}
)
DEFAULT_MAX_BODY_BYTES = 4_500_000
PROJECT_ID = "receiver-project"
V2_OBSERVATIONS_UNAVAILABLE = ("The observations v2 API is only available in a Langfuse v4 write mode. "
                               "Learn more at: https://langfuse.com/docs/v4")
SERVER_VERSION = "4.16.0-test-receiver"

_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_SPAN_ID = re.compile(r"[0-9a-f]{16}")
_INTEGER = re.compile(r"-?[0-9]+")
_ENVIRONMENT_CHARACTERS = re.compile(r"[a-z0-9_-]+")
_LANGFUSE_PREFIX = re.compile(r"^(?:langfuse[-_]?)+")
DEFAULT_ENVIRONMENT = "default"
_STATUS_CODES = {0: 0, 1: 1, 2: 2, "STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1,
                 "STATUS_CODE_ERROR": 2}
_STRING_ATTRIBUTES = (
    "langfuse.trace.name", "user.id", "session.id", "langfuse.release", "langfuse.version",
    "langfuse.observation.status_message", "langfuse.observation.model.name",
    "langfuse.observation.input", "langfuse.observation.output",
    "langfuse.trace.input", "langfuse.trace.output",
    "langfuse.observation.metadata", "langfuse.trace.metadata",
)
_METADATA_PREFIXES = ("langfuse.observation.metadata.", "langfuse.trace.metadata.")


# ---------------------------------------------------------------------------------------------
# Server profiles: what differs between the Langfuse generations a team may run
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ServerProfile:
    """One Langfuse server generation, as its code behaves (server source at 62751446, v4.16.0+30:
    web/src/pages/api/public/scores/index.ts with `PostScoresBodyV1`, the v1 and v2 observations
    routes, packages/shared/src/server/ingestion/types.ts)."""

    name: str
    scores_as_list: bool          # POST /scores takes a list (202/207); else one object (200 {"id"})
    score_timestamp_kept: bool    # else dropped by the body schema: the score gets the receive time
    observations_v2: bool         # GET /api/public/v2/observations answers; else 404
    v1_lag: float                 # seconds before a stored span shows in GET /api/public/observations


PROFILES: dict[str, ServerProfile] = {
    # The API the 5.x client is generated from: scores as a list, accepted asynchronously.
    "latest": ServerProfile("latest", scores_as_list=True, score_timestamp_kept=True,
                            observations_v2=True, v1_lag=0.0),
    # Self-hosted v4 up to at least v4.16: one score object per request, no `timestamp` in its body
    # schema; the v2 observations API is on (LANGFUSE_MIGRATION_V4_ALLOW_PREVIEW_OPT_IN=true).
    "v4.16": ServerProfile("v4.16", scores_as_list=False, score_timestamp_kept=False,
                           observations_v2=True, v1_lag=0.0),
    # The self-hosted v3 line: one score object; no v2 observations API (the preview flag is off);
    # the v1 listing reads tables filled by a queue, so a new span shows only after a while.
    "v3": ServerProfile("v3", scores_as_list=False, score_timestamp_kept=False,
                        observations_v2=False, v1_lag=2.0),
}


def normalize_environment(value: Any) -> str:
    """The server's rule (`PublicEnvironmentName`): lowercased, every leading `langfuse` (with an
    optional `-`/`_`) stripped, cut to 40 characters; anything but [a-z0-9_-] then, or nothing,
    becomes `default`. Silently: the request is not refused."""
    if not isinstance(value, str) or not value:
        return DEFAULT_ENVIRONMENT
    stripped = _LANGFUSE_PREFIX.sub("", value.lower())[:40]
    return stripped if _ENVIRONMENT_CHARACTERS.fullmatch(stripped) else DEFAULT_ENVIRONMENT


# ---------------------------------------------------------------------------------------------
# What the receiver records
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ReceivedSpan:
    """One accepted copy of a span; a span sent twice is two of these."""

    request: int                      # number of the request that carried this copy
    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    start_time_unix_nano: int
    end_time_unix_nano: int
    type: str                         # langfuse.observation.type, "span" when absent
    level: str                        # langfuse.observation.level, else ERROR on OTel status ERROR
    status_message: str | None
    input: str | None
    output: str | None
    model: str | None
    usage_details: dict[str, int] | None
    cost_details: dict[str, float] | None
    metadata: dict[str, Any]          # langfuse.observation.metadata.<key> -> value
    attributes: dict[str, Any]        # every span attribute, decoded to Python values
    resource_attributes: dict[str, Any]
    scope_name: str | None
    ingestion_version: str | None     # x-langfuse-ingestion-version of the carrying request
    received_at: float                # time.time()


@dataclasses.dataclass(frozen=True)
class ReceivedScore:
    """One accepted score write (a re-send with the same id, name and day overwrites)."""

    request: int
    id: str
    name: str
    value: float | str
    data_type: str
    trace_id: str | None
    observation_id: str | None
    session_id: str | None
    dataset_run_id: str | None
    timestamp: str                    # as sent, or the receive time when absent
    comment: str | None
    metadata: Any
    environment: str                  # as stored: normalised
    body: dict[str, Any]              # the score exactly as sent
    received_at: float

    @property
    def overwrite_key(self) -> tuple[str, str, str]:
        """Langfuse overwrites a score when id, name and the calendar day (UTC) all match."""
        day = _parse_iso(self.timestamp).astimezone(dt.timezone.utc).date().isoformat()
        return (self.id, self.name, day)


@dataclasses.dataclass(frozen=True)
class ReceivedRequest:
    """Every request to an API route, with the answer it got and the fault applied, if any."""

    number: int
    method: str
    path: str
    query: str
    route: str                        # traces | scores | observations | health | unknown
    status: int | None                # None: the connection was dropped without an answer
    fault: str | None                 # e.g. "status 503", "delay 5.0s (stored)", "reset"
    error: str | None                 # error message sent back on 4xx/5xx
    headers: dict[str, str]           # headers of interest, lower-case names, no secrets
    auth_public_key: str | None       # the Basic-auth user sent, if any
    span_ids: list[str]               # span ids carried (accepted or not)
    received_at: float

    @property
    def ingestion_version(self) -> str | None:
        return self.headers.get("x-langfuse-ingestion-version")

    @property
    def has_v4_header(self) -> bool:
        return self.ingestion_version == "4"


_HEADERS_OF_INTEREST = (
    "content-type", "content-encoding", "content-length", "transfer-encoding",
    "x-langfuse-ingestion-version", "x-langfuse-sdk-name", "x-langfuse-sdk-version",
    "x-langfuse-public-key", "user-agent",
)


def _to_json_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode()}
    if isinstance(value, dict):
        return {key: _to_json_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json_value(item) for item in value]
    return value


def _from_json_value(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$bytes"}:
            return base64.b64decode(value["$bytes"])
        return {key: _from_json_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_from_json_value(item) for item in value]
    return value


def _record_to_json(record: Any) -> dict[str, Any]:
    return _to_json_value(dataclasses.asdict(record))


_Record = TypeVar("_Record")


def _record_from_json(cls: type[_Record], data: dict[str, Any]) -> _Record:
    return cls(**_from_json_value(data))


# ---------------------------------------------------------------------------------------------
# What the server stores, and so what a user sees (OtelIngestionProcessor.processToEvent, the
# events table, and the trace aggregation of event-query-builder.ts)
# ---------------------------------------------------------------------------------------------

# Attributes the server takes as input/output and so leaves out of `metadata.attributes`.
_IO_ATTRIBUTES = frozenset({"langfuse.trace.input", "langfuse.trace.output", "langfuse.observation.input",
                            "langfuse.observation.output"})
_METADATA_ATTRIBUTE_PREFIXES = ("langfuse.trace.metadata", "langfuse.observation.metadata",
                                "ai.telemetry.metadata")


@dataclasses.dataclass(frozen=True)
class StoredObservation:
    """One stored row of an observation, as the UI and the API show it."""

    id: str
    trace_id: str
    parent_id: str | None
    type: str
    name: str
    level: str
    status_message: str | None
    environment: str                  # normalised
    metadata: dict[str, Any]          # values raw (as sent), trace metadata merged over its own
    input: str | None
    output: str | None
    model: str | None
    model_parameters: dict[str, Any] | None
    usage_details: dict[str, int] | None
    cost_details: dict[str, float] | None
    trace_name: str | None
    user_id: str | None
    session_id: str | None
    tags: list[str]
    release: str | None
    start_time_unix_nano: int
    end_time_unix_nano: int


@dataclasses.dataclass(frozen=True)
class StoredTrace:
    """A trace as a user sees it: name, user, session, tags, environment and release are the
    latest non-empty values of any of its rows; metadata, input and output come only from the
    root row (the one without a parent)."""

    id: str
    name: str | None
    user_id: str | None
    session_id: str | None
    tags: list[str]
    environment: str | None
    release: str | None
    metadata: dict[str, Any]
    input: str | None
    output: str | None
    observations: list[StoredObservation]   # every stored row, in arrival order

    def observation(self, span_id: str) -> StoredObservation:
        for row in self.observations:
            if row.id == span_id:
                return row
        raise KeyError(f"no observation {span_id} in trace {self.id}")


def _metadata_of(attributes: dict[str, Any], prefix: str) -> dict[str, Any]:
    """extractMetadata: the JSON object under `prefix` itself, then every `prefix.<key>`, raw."""
    metadata: dict[str, Any] = {}
    blob = attributes.get(prefix)
    if isinstance(blob, str):
        try:
            parsed = json.loads(blob)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            metadata.update(parsed)
    elif isinstance(blob, dict):
        metadata.update(blob)
    for key, value in attributes.items():
        if key.startswith(prefix + ".") and len(key) > len(prefix) + 1:
            metadata[key[len(prefix) + 1:]] = value
    return metadata


def _model_parameters(attributes: dict[str, Any]) -> dict[str, Any] | None:
    """sanitizeModelParams: a JSON object whose strings and numbers are kept, anything else as JSON."""
    raw = attributes.get("langfuse.observation.model.parameters")
    try:
        parsed = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        return None
    if not isinstance(parsed, dict):
        return None
    return {key: value if isinstance(value, (str, int, float)) and not isinstance(value, bool)
            else json.dumps(value, separators=(",", ":")) for key, value in parsed.items()}


def stored_row(span: "ReceivedSpan") -> StoredObservation:
    """What the server writes for one received span (the events table row)."""
    attributes = span.attributes
    resource = span.resource_attributes
    filtered = {key: value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
                for key, value in attributes.items()
                if key not in _IO_ATTRIBUTES and not key.startswith(_METADATA_ATTRIBUTE_PREFIXES)}
    scope_name = span.scope_name or ""
    metadata: dict[str, Any] = {} if scope_name.startswith("langfuse-sdk") else {"attributes": filtered}
    metadata.update(resourceAttributes=dict(resource), scope={"name": span.scope_name, "attributes": {}})
    # The row's own metadata, then the trace's over it: a trace key replaces the observation's.
    metadata.update(_metadata_of(attributes, "langfuse.observation.metadata"))
    metadata.update(_metadata_of(attributes, "langfuse.trace.metadata"))
    environment = DEFAULT_ENVIRONMENT
    for key in ("langfuse.environment", "deployment.environment.name", "deployment.environment"):
        if attributes.get(key) or resource.get(key):
            environment = normalize_environment(attributes.get(key) or resource.get(key))
            break
    tags = attributes.get("langfuse.trace.tags")
    return StoredObservation(
        id=span.span_id, trace_id=span.trace_id, parent_id=span.parent_span_id, type=span.type,
        name=span.name, level=span.level, status_message=span.status_message,
        environment=environment, metadata=metadata, input=span.input, output=span.output,
        model=span.model, model_parameters=_model_parameters(attributes),
        usage_details=span.usage_details, cost_details=span.cost_details,
        trace_name=attributes.get("langfuse.trace.name") or None,
        user_id=attributes.get("langfuse.user.id") or attributes.get("user.id") or None,
        session_id=attributes.get("langfuse.session.id") or attributes.get("session.id") or None,
        tags=list(tags) if isinstance(tags, list) else [],
        release=attributes.get("langfuse.release") or resource.get("langfuse.release") or None,
        start_time_unix_nano=span.start_time_unix_nano, end_time_unix_nano=span.end_time_unix_nano)


def stored_trace(trace_id: str, spans: list["ReceivedSpan"]) -> StoredTrace:
    """The trace-level aggregation of the server's reads (argMaxIf over the trace's rows, latest
    first): the latest non-empty value of each trace attribute; metadata/input/output of the
    latest row without a parent; the name falls back to the root's observation name."""
    rows = [stored_row(span) for span in sorted(spans, key=lambda s: (s.received_at, s.request))]
    if not rows:
        raise KeyError(f"no span of trace {trace_id} was received")

    def latest(value: Callable[[StoredObservation], Any]) -> Any:
        for row in reversed(rows):
            if value(row):
                return value(row)
        return None

    roots = [row for row in rows if row.parent_id is None]
    root = roots[-1] if roots else None
    return StoredTrace(
        id=trace_id, name=latest(lambda r: r.trace_name) or (root.name if root else None),
        user_id=latest(lambda r: r.user_id), session_id=latest(lambda r: r.session_id),
        tags=latest(lambda r: r.tags) or [], environment=latest(lambda r: r.environment),
        release=latest(lambda r: r.release), metadata=dict(root.metadata) if root else {},
        input=root.input if root else None, output=root.output if root else None,
        observations=rows)


# ---------------------------------------------------------------------------------------------
# The inspection and fault API shared by the in-process receiver and the subprocess handle
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Snapshot:
    spans: list[ReceivedSpan]
    scores: list[ReceivedScore]        # current scores, after overwrites
    score_writes: list[ReceivedScore]  # every accepted write, in order
    requests: list[ReceivedRequest]


def _retry_after_header(value: int | float | str | dt.datetime | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return email.utils.format_datetime(value.astimezone(dt.timezone.utc), usegmt=True)
    return str(math.ceil(value))


_View = TypeVar("_View", bound="_ReceiverView")


class _ReceiverView:
    public_key: str
    secret_key: str
    profile: ServerProfile
    v1_lag: float

    def _snapshot(self) -> _Snapshot:
        raise NotImplementedError

    def _control(self, action: str, **params: Any) -> None:
        raise NotImplementedError

    @property
    def port(self) -> int:
        raise NotImplementedError

    @property
    def base_url(self) -> str:
        """Pass this as `base_url` to `LangfuseAPI` (or LANGFUSE_BASE_URL)."""
        return f"http://127.0.0.1:{self.port}"

    # -- inspection ----------------------------------------------------------------------------

    def spans(self, trace_id: str | None = None) -> list[ReceivedSpan]:
        """Every accepted span copy, in arrival order (optionally of one trace)."""
        spans = self._snapshot().spans
        return spans if trace_id is None else [s for s in spans if s.trace_id == trace_id]

    def spans_by_trace(self, trace_id: str) -> list[ReceivedSpan]:
        return self.spans(trace_id)

    def observation(self, span_id: str) -> ReceivedSpan:
        """The first accepted copy of a span; KeyError when none arrived."""
        for span in self._snapshot().spans:
            if span.span_id == span_id:
                return span
        raise KeyError(f"no span {span_id} was received")

    def duplicates(self) -> dict[str, int]:
        """span id -> number of copies, for span ids accepted more than once."""
        counts: dict[str, int] = {}
        for span in self._snapshot().spans:
            counts[span.span_id] = counts.get(span.span_id, 0) + 1
        return {span_id: n for span_id, n in counts.items() if n > 1}

    def tree(self, trace_id: str) -> dict[str, str | None]:
        """span id -> parent span id (None for a root), one entry per distinct span of a trace."""
        links: dict[str, str | None] = {}
        for span in self.spans(trace_id):
            links.setdefault(span.span_id, span.parent_span_id)
        return links

    def trace(self, trace_id: str) -> StoredTrace:
        """The trace as a user sees it in Langfuse (KeyError when none of its spans arrived)."""
        return stored_trace(trace_id, self.spans(trace_id))

    def stored(self, span_id: str) -> StoredObservation:
        """The first stored row of an observation, as the UI shows it (KeyError when none)."""
        return stored_row(self.observation(span_id))

    def scores(self) -> list[ReceivedScore]:
        """Current scores: one per (id, name, day); the latest write wins."""
        return self._snapshot().scores

    def score_writes(self) -> list[ReceivedScore]:
        """Every accepted score write, overwritten ones included."""
        return self._snapshot().score_writes

    def requests(self, route: str | None = None) -> list[ReceivedRequest]:
        """Every request to an API route (traces|scores|observations|health), in arrival order."""
        requests = self._snapshot().requests
        return requests if route is None else [r for r in requests if r.route == route]

    def wait_until(self: _View, condition: Callable[[_View], bool], timeout: float = 30.0) -> None:
        """Poll `condition(self)` until true; TimeoutError after `timeout` (a hang guard only)."""
        deadline = time.monotonic() + timeout
        while not condition(self):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"condition still false after {timeout}s")
            time.sleep(0.02)

    # -- faults (route: traces | scores | observations | health | any) ------------------------

    def fail(self, route: str, status: int, *, times: int | None = None,
             for_seconds: float | None = None,
             retry_after: int | float | str | dt.datetime | None = None) -> None:
        """Answer `status` to the next `times` requests (default 1), or to every request during
        `for_seconds` (then `times`, if given, also caps it). `retry_after`: seconds, an
        HTTP-date string or a datetime, sent as the Retry-After header."""
        self._control("fail", route=route, status=status, times=times, for_seconds=for_seconds,
                      retry_after=_retry_after_header(retry_after))

    def delay(self, route: str, seconds: float, *, times: int = 1, store: bool = True) -> None:
        """Hold the next `times` requests for `seconds` before answering. store=True: the request
        is processed (spans stored) on arrival and its real answer is sent late, the case of a
        server that did the work after the client gave up. store=False: nothing is processed and
        the late answer is 504."""
        self._control("delay", route=route, seconds=seconds, times=times, store=store)

    def reset_connection(self, route: str, *, times: int = 1, store: bool = False) -> None:
        """Read the next `times` requests, then reset the connection (RST) without answering.
        store=True processes (stores) the request first."""
        self._control("reset_connection", route=route, times=times, store=store)

    def reject_spans(self, *span_ids: str) -> None:
        """Any OTLP request carrying one of these span ids gets 400 (nothing of it stored), until
        `clear_faults()`."""
        self._control("reject_spans", span_ids=list(span_ids))

    def fail_traces(self, *trace_ids: str, status: int = 503) -> None:
        """Any OTLP request carrying a span of these traces gets `status` (nothing of it stored),
        until `clear_faults()`: one run's spans failing while others flow."""
        self._control("fail_traces", trace_ids=list(trace_ids), status=status)

    def down(self, seconds: float) -> None:
        """Close the listening socket and every open connection (clients get connection refused),
        and listen again on the same port after `seconds`."""
        self._control("down", seconds=seconds)

    def set_v1_lag(self, seconds: float) -> None:
        """How long a stored span stays invisible to the v1 observations listing."""
        self.v1_lag = float(seconds)
        self._control("set_v1_lag", seconds=seconds)

    def clear_faults(self) -> None:
        self._control("clear_faults")

    def reset(self) -> None:
        """Forget everything received and every fault (the state file is truncated too)."""
        self._control("reset")


# ---------------------------------------------------------------------------------------------
# Validation of OTLP exports
# ---------------------------------------------------------------------------------------------

class _Malformed(ValueError):
    pass


def _decode_any_value(value: Any) -> Any:
    """OTLP JSON AnyValue -> Python value; _Malformed when it is not well formed."""
    if not isinstance(value, dict):
        raise _Malformed("value must be an OTLP AnyValue object")
    present = [key for key, item in value.items() if item is not None]
    known = {"stringValue", "boolValue", "intValue", "doubleValue", "arrayValue", "kvlistValue",
             "bytesValue"}
    unknown = sorted(set(present) - known)
    if unknown:
        raise _Malformed(f"unknown AnyValue field(s) {unknown}")
    if len(present) != 1:
        raise _Malformed(f"AnyValue must set exactly one of {sorted(known)}, got {present}")
    kind = present[0]
    item = value[kind]
    if kind == "stringValue":
        if not isinstance(item, str):
            raise _Malformed("stringValue must be a string")
        return item
    if kind == "boolValue":
        if not isinstance(item, bool):
            raise _Malformed("boolValue must be true or false")
        return item
    if kind == "intValue":
        if isinstance(item, str) and _INTEGER.fullmatch(item):
            item = int(item)
        if not isinstance(item, int) or isinstance(item, bool) or not -2**63 <= item < 2**63:
            raise _Malformed("intValue must be a 64-bit integer or a decimal string of one")
        return item
    if kind == "doubleValue":
        if isinstance(item, str) and item in ("NaN", "Infinity", "-Infinity"):
            return float(item.replace("Infinity", "inf"))
        if not isinstance(item, (int, float)) or isinstance(item, bool):
            raise _Malformed("doubleValue must be a number")
        return float(item)
    if kind == "bytesValue":
        if not isinstance(item, str):
            raise _Malformed("bytesValue must be a base64 string")
        try:
            return base64.b64decode(item, validate=True)
        except binascii.Error as error:
            raise _Malformed(f"bytesValue is not base64: {error}") from None
    if not isinstance(item, dict):
        raise _Malformed(f"{kind} must be an object with a 'values' array")
    values = item.get("values") or []
    if not isinstance(values, list):
        raise _Malformed(f"{kind}.values must be an array")
    if kind == "arrayValue":
        return [_decode_any_value(element) for element in values]
    decoded: dict[str, Any] = {}
    for entry in values:
        if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
            raise _Malformed("kvlistValue entries must be {key, value} objects")
        decoded[entry["key"]] = _decode_any_value(entry.get("value"))
    return decoded


def _decode_attributes(raw: Any, problems: list[str]) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, list):
        problems.append("attributes must be an array of {key, value} entries, not "
                        f"{type(raw).__name__}")
        return {}
    attributes: dict[str, Any] = {}
    for entry in raw:
        if not isinstance(entry, dict) or not isinstance(entry.get("key"), str) or not entry["key"]:
            problems.append(f"attribute entry {entry!r:.80} must be {{key: non-empty string, value}}")
            continue
        try:
            attributes[entry["key"]] = _decode_any_value(entry.get("value"))
        except _Malformed as error:
            problems.append(f"attribute {entry['key']!r}: {error}")
    return attributes


def _parse_json_attribute(attributes: dict[str, Any], key: str, problems: list[str]) -> Any:
    value = attributes[key]
    if not isinstance(value, str):
        problems.append(f"{key} must be a string holding a JSON object, not {type(value).__name__}")
        return None
    try:
        parsed = json.loads(value)
    except ValueError:
        problems.append(f"{key} is not valid JSON: {value!r:.80}")
        return None
    if not isinstance(parsed, dict):
        problems.append(f"{key} must be a JSON object, not {type(parsed).__name__}")
        return None
    return parsed


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_langfuse_attributes(attributes: dict[str, Any], project_rules: bool,
                               problems: list[str]) -> dict[str, Any]:
    """Check the langfuse.* attributes of a span (or resource); return the parsed usage/cost."""
    observation_type = attributes.get("langfuse.observation.type", "span")
    if "langfuse.observation.type" in attributes and observation_type not in OBSERVATION_TYPES:
        problems.append(f"langfuse.observation.type {observation_type!r} is not one of "
                        f"{sorted(OBSERVATION_TYPES)}")
    level = attributes.get("langfuse.observation.level")
    if "langfuse.observation.level" in attributes and level not in LEVELS:
        problems.append(f"langfuse.observation.level {level!r} is not one of {sorted(LEVELS)}")
    for key in _STRING_ATTRIBUTES:
        if key in attributes and not isinstance(attributes[key], str):
            problems.append(f"{key} must be a string, not {type(attributes[key]).__name__}")
    for key, value in attributes.items():
        if key.startswith(_METADATA_PREFIXES) and not isinstance(value, str):
            problems.append(f"{key} must be a string, not {type(value).__name__}")
    if "langfuse.trace.tags" in attributes:
        tags = attributes["langfuse.trace.tags"]
        if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
            problems.append(f"langfuse.trace.tags must be an array of strings, got {tags!r:.80}")
    if "langfuse.environment" in attributes and project_rules:
        # Langfuse itself never refuses an environment: it stores `default` instead (see
        # normalize_environment). Sending one it would change is this project's bug.
        environment = attributes["langfuse.environment"]
        stored = normalize_environment(environment)
        if environment != stored:
            problems.append(f"[project rule] langfuse.environment {environment!r} is stored by "
                            f"Langfuse as {stored!r}: normalise it where it is set")
    if "langfuse.observation.completion_start_time" in attributes:
        value = attributes["langfuse.observation.completion_start_time"]
        try:
            _parse_iso(value)
        except (TypeError, ValueError):
            problems.append(f"langfuse.observation.completion_start_time {value!r} is not an "
                            "ISO 8601 datetime")

    usage = cost = None
    if "langfuse.observation.usage_details" in attributes:
        usage = _parse_json_attribute(attributes, "langfuse.observation.usage_details", problems)
        if usage is not None:
            bad = {k: v for k, v in usage.items()
                   if not (_is_number(v) and v >= 0 and float(v).is_integer())}
            if bad:
                problems.append(f"langfuse.observation.usage_details values must be non-negative "
                                f"integers (token counts), got {bad}")
                usage = None
            else:
                usage = {k: int(v) for k, v in usage.items()}
    if "langfuse.observation.cost_details" in attributes:
        cost = _parse_json_attribute(attributes, "langfuse.observation.cost_details", problems)
        if cost is not None:
            bad = {k: v for k, v in cost.items() if not (_is_number(v) and v >= 0)}
            if bad:
                problems.append(f"langfuse.observation.cost_details values must be non-negative "
                                f"numbers, got {bad}")
                cost = None
            else:
                cost = {k: float(v) for k, v in cost.items()}

    if project_rules:
        _check_project_rules(observation_type, usage, cost, problems)
    return {"usage": usage, "cost": cost}


def _check_project_rules(observation_type: Any, usage: dict | None, cost: dict | None,
                         problems: list[str]) -> None:
    """This project's own rules (see langfuse.md "Usage and cost"), switchable as a group."""
    rule = "[project rule] "
    if (usage is not None or cost is not None) and observation_type not in COST_BEARING_TYPES:
        problems.append(rule + f"usage/cost details on a {observation_type!r} observation are "
                        "ignored by Langfuse; only generation and embedding carry them")
    if usage is not None:
        if "total" not in usage:
            problems.append(rule + "langfuse.observation.usage_details must include 'total'")
        elif len(usage) > 1 and usage["total"] != sum(v for k, v in usage.items() if k != "total"):
            problems.append(rule + f"usage_details buckets must be exclusive: total "
                            f"{usage['total']} != sum of the other buckets {usage}")
    if cost is not None:
        if "total" not in cost:
            problems.append(rule + "langfuse.observation.cost_details must include 'total' "
                            "(without it Langfuse may leave the total cost empty)")
        elif len(cost) > 1:
            parts = sum(v for k, v in cost.items() if k != "total")
            if not math.isclose(cost["total"], parts, rel_tol=1e-9, abs_tol=1e-12):
                problems.append(rule + f"cost_details total {cost['total']} != sum of the other "
                                f"buckets {parts}")


def _check_id(value: Any, pattern: re.Pattern[str], length: int, field: str,
              problems: list[str]) -> str | None:
    if value is None or value == "":
        problems.append(f"{field} is missing")
        return None
    if not isinstance(value, str) or not pattern.fullmatch(value):
        problems.append(f"{field} {value!r:.60} must be {length} lowercase hex characters")
        return None
    if set(value) == {"0"}:
        problems.append(f"{field} must not be all zeros")
        return None
    return value


def _parse_unix_nano(value: Any, field: str, problems: list[str]) -> int | None:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        problems.append(f"{field} must be an integer or a decimal string, got {value!r:.40}")
        return None
    if not 0 < value < 2**64:
        problems.append(f"{field} {value} is out of range (must be positive nanoseconds)")
        return None
    return value


def _as_list(value: Any, where: str, problems: list[str]) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        problems.append(f"{where} must be an array, not {type(value).__name__}")
        return []
    return value


@dataclasses.dataclass
class _ParsedExport:
    spans: list[dict[str, Any]]        # ReceivedSpan fields, minus request/version/received_at
    span_ids: list[str]
    problems: list[str]


def _parse_export(resource_spans: Any, *, project_rules: bool,
                  rejected_span_ids: frozenset[str]) -> _ParsedExport:
    result = _ParsedExport([], [], [])
    index = 0
    for r, resource_span in enumerate(_as_list(resource_spans, "resourceSpans", result.problems)):
        where = f"resourceSpans[{r}]"
        if not isinstance(resource_span, dict):
            result.problems.append(f"{where} must be an object")
            continue
        resource = resource_span.get("resource") or {}
        resource_problems: list[str] = []
        resource_attributes = _decode_attributes(
            resource.get("attributes") if isinstance(resource, dict) else resource,
            resource_problems)
        _check_langfuse_attributes(resource_attributes, False, resource_problems)
        result.problems += [f"{where}.resource: {p}" for p in resource_problems]
        for s, scope_span in enumerate(_as_list(resource_span.get("scopeSpans"),
                                                f"{where}.scopeSpans", result.problems)):
            scope_where = f"{where}.scopeSpans[{s}]"
            if not isinstance(scope_span, dict):
                result.problems.append(f"{scope_where} must be an object")
                continue
            scope = scope_span.get("scope") or {}
            scope_name = scope.get("name") if isinstance(scope, dict) else None
            for span in _as_list(scope_span.get("spans"), f"{scope_where}.spans",
                                 result.problems):
                parsed, problems = _parse_span(span, project_rules, rejected_span_ids)
                if isinstance(span, dict) and isinstance(span.get("spanId"), str):
                    result.span_ids.append(span["spanId"])
                if problems:
                    label = (f"span #{index} (spanId={span.get('spanId')!r}, "
                             f"name={span.get('name')!r})" if isinstance(span, dict)
                             else f"span #{index}")
                    result.problems += [f"{label}: {p}" for p in problems]
                else:
                    parsed.update(resource_attributes=resource_attributes, scope_name=scope_name)
                    result.spans.append(parsed)
                index += 1
    return result


def _parse_span(span: Any, project_rules: bool,
                rejected_span_ids: frozenset[str]) -> tuple[dict[str, Any], list[str]]:
    problems: list[str] = []
    if not isinstance(span, dict):
        return {}, ["must be an object"]
    trace_id = _check_id(span.get("traceId"), _TRACE_ID, 32, "traceId", problems)
    span_id = _check_id(span.get("spanId"), _SPAN_ID, 16, "spanId", problems)
    parent = span.get("parentSpanId")
    if parent in (None, ""):
        parent = None
    else:
        parent = _check_id(parent, _SPAN_ID, 16, "parentSpanId", problems)
    name = span.get("name")
    if not isinstance(name, str) or not name:
        problems.append("name must be a non-empty string")
    start = _parse_unix_nano(span.get("startTimeUnixNano"), "startTimeUnixNano", problems)
    end = _parse_unix_nano(span.get("endTimeUnixNano"), "endTimeUnixNano", problems)
    if start is not None and end is not None and end < start:
        problems.append(f"endTimeUnixNano {end} is before startTimeUnixNano {start}")
    kind = span.get("kind")
    if kind is not None and (not isinstance(kind, int) or isinstance(kind, bool)
                             or not 0 <= kind <= 5):
        problems.append(f"kind {kind!r} must be an integer 0..5")
    status = span.get("status") or {}
    status_code = 0
    if not isinstance(status, dict):
        problems.append("status must be an object")
        status = {}
    elif status.get("code") is not None:
        if status["code"] not in _STATUS_CODES or isinstance(status["code"], bool):
            problems.append(f"status.code {status['code']!r} must be 0, 1 or 2")
        else:
            status_code = _STATUS_CODES[status["code"]]
    for collection in ("events", "links"):
        _as_list(span.get(collection), collection, problems)
    attributes = _decode_attributes(span.get("attributes"), problems)
    details = _check_langfuse_attributes(attributes, project_rules, problems)
    if span_id is not None and span_id in rejected_span_ids:
        problems.append("span id rejected by the test (reject_spans fault)")
    if problems:
        return {}, problems
    level = attributes.get("langfuse.observation.level") or ("ERROR" if status_code == 2
                                                             else "DEFAULT")
    return {
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_span_id": parent,
        "name": name,
        "start_time_unix_nano": start,
        "end_time_unix_nano": end,
        "type": attributes.get("langfuse.observation.type", "span"),
        "level": level,
        "status_message": attributes.get("langfuse.observation.status_message")
        or status.get("message") or None,
        "input": attributes.get("langfuse.observation.input"),
        "output": attributes.get("langfuse.observation.output"),
        "model": attributes.get("langfuse.observation.model.name"),
        "usage_details": details["usage"],
        "cost_details": details["cost"],
        "metadata": {key[len("langfuse.observation.metadata."):]: value
                     for key, value in attributes.items()
                     if key.startswith("langfuse.observation.metadata.")},
        "attributes": attributes,
    }, []


def _protobuf_to_otlp_json(body: bytes) -> dict[str, Any]:
    """Decode an ExportTraceServiceRequest into the OTLP JSON shape (hex ids, camelCase)."""
    request = _ProtoExportRequest.FromString(body)

    def any_value(value: Any) -> dict[str, Any]:
        kind = value.WhichOneof("value")
        if kind is None:
            return {}
        if kind == "array_value":
            return {"arrayValue": {"values": [any_value(v) for v in value.array_value.values]}}
        if kind == "kvlist_value":
            return {"kvlistValue": {"values": [key_value(kv) for kv in value.kvlist_value.values]}}
        if kind == "bytes_value":
            return {"bytesValue": base64.b64encode(value.bytes_value).decode()}
        camel = {"string_value": "stringValue", "bool_value": "boolValue",
                 "int_value": "intValue", "double_value": "doubleValue"}[kind]
        return {camel: getattr(value, kind)}

    def key_value(kv: Any) -> dict[str, Any]:
        return {"key": kv.key, "value": any_value(kv.value)}

    return {"resourceSpans": [
        {"resource": {"attributes": [key_value(kv) for kv in rs.resource.attributes]},
         "scopeSpans": [
             {"scope": {"name": ss.scope.name, "version": ss.scope.version},
              "spans": [
                  {"traceId": span.trace_id.hex(), "spanId": span.span_id.hex(),
                   "parentSpanId": span.parent_span_id.hex(), "name": span.name,
                   "kind": span.kind, "startTimeUnixNano": span.start_time_unix_nano,
                   "endTimeUnixNano": span.end_time_unix_nano,
                   "attributes": [key_value(kv) for kv in span.attributes],
                   "status": {"code": span.status.code, "message": span.status.message}}
                  for span in ss.spans]}
             for ss in rs.scope_spans]}
        for rs in request.resource_spans]}


# ---------------------------------------------------------------------------------------------
# Validation of scores
# ---------------------------------------------------------------------------------------------

def _parse_iso(value: Any) -> dt.datetime:
    if not isinstance(value, str):
        raise TypeError("not a string")
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError("timestamp has no timezone offset")
    return parsed


def _validate_score(body: Any, project_rules: bool, timestamp_kept: bool = True
                    ) -> tuple[dict[str, Any] | None, list[str]]:
    """Returns (ReceivedScore fields minus request/received_at/body, problems). Without
    `timestamp_kept` (v4.16 and older) a sent timestamp is dropped, as their body schema has none:
    the score gets the time it was received."""
    if not isinstance(body, dict):
        return None, ["a score must be a JSON object"]
    problems: list[str] = []
    rule = "[project rule] "
    score_id = body.get("id")
    if score_id is not None and (not isinstance(score_id, str) or not score_id):
        problems.append("id must be a non-empty string")
    elif score_id is None and project_rules:
        problems.append(rule + "id is required (a stable id makes a re-send overwrite)")
    name = body.get("name")
    if not isinstance(name, str) or not name:
        problems.append("name is required and must be a non-empty string")
    value = body.get("value")
    data_type = body.get("dataType")
    if data_type is None:
        data_type = "CATEGORICAL" if isinstance(value, str) else "NUMERIC"
    if data_type not in SCORE_DATA_TYPES:
        problems.append(f"dataType {data_type!r} must be one of {sorted(SCORE_DATA_TYPES)}")
    elif value is None:
        problems.append("value is required")
    elif data_type in ("NUMERIC", "BOOLEAN"):
        if not _is_number(value):
            problems.append(f"value {value!r:.40} must be a number for {data_type} scores")
        elif data_type == "BOOLEAN" and value not in (0, 1):
            problems.append(f"value {value!r} must be 0 or 1 for BOOLEAN scores")
    elif not isinstance(value, str):
        problems.append(f"value {value!r:.40} must be a string for {data_type} scores")
    elif data_type == "TEXT" and not 1 <= len(value) <= 500:
        problems.append("value of a TEXT score must be 1 to 500 characters")
    targets = [key for key in ("traceId", "sessionId", "datasetRunId") if body.get(key)]
    if len(targets) != 1:
        problems.append(f"exactly one of traceId, sessionId, datasetRunId is required, "
                        f"got {targets or 'none'}")
    for key in ("traceId", "sessionId", "datasetRunId", "observationId", "comment",
                "environment", "configId", "queueId"):
        if body.get(key) is not None and not isinstance(body[key], str):
            problems.append(f"{key} must be a string")
    if body.get("observationId") and not body.get("traceId"):
        problems.append("observationId requires traceId")
    if project_rules:
        if isinstance(body.get("traceId"), str) and not _TRACE_ID.fullmatch(body["traceId"]):
            problems.append(rule + f"traceId {body['traceId']!r:.60} must be 32 lowercase hex")
        observation_id = body.get("observationId")
        if isinstance(observation_id, str) and not _SPAN_ID.fullmatch(observation_id):
            problems.append(rule + f"observationId {observation_id!r:.60} must be 16 lowercase hex")
        if timestamp_kept and body.get("timestamp") is None:
            problems.append(rule + "timestamp is required (the overwrite key includes its day; "
                            "without it a re-send on another day duplicates the score)")
    if body.get("configId") is not None:
        problems.append(f"score config {body['configId']!r} does not exist")
    if (project_rules and body.get("environment") is not None
            and body["environment"] != normalize_environment(body["environment"])):
        problems.append(rule + f"environment {body['environment']!r} is stored by Langfuse as "
                        f"{normalize_environment(body['environment'])!r}: normalise it where it is set")
    if body.get("source") is not None and body["source"] not in ("API", "ANNOTATION"):
        problems.append(f"source {body['source']!r} must be API or ANNOTATION")
    if body.get("metadata") is not None and not isinstance(body["metadata"], dict):
        problems.append("metadata must be a JSON object")
    timestamp = body.get("timestamp") if timestamp_kept else None
    if timestamp is not None:
        try:
            _parse_iso(timestamp)
        except (TypeError, ValueError) as error:
            problems.append(f"timestamp {timestamp!r:.40} must be an ISO 8601 datetime with a "
                            f"timezone offset ({error})")
    if problems:
        return None, problems
    return {
        "id": score_id or str(uuid.uuid4()),
        "name": name,
        "value": float(value) if data_type in ("NUMERIC", "BOOLEAN") else value,
        "data_type": data_type,
        "trace_id": body.get("traceId"),
        "observation_id": body.get("observationId"),
        "session_id": body.get("sessionId"),
        "dataset_run_id": body.get("datasetRunId"),
        "timestamp": timestamp or dt.datetime.now(dt.timezone.utc).isoformat(),
        "comment": body.get("comment"),
        "metadata": body.get("metadata"),
        "environment": normalize_environment(body.get("environment")),
    }, []


# ---------------------------------------------------------------------------------------------
# Observations listing
# ---------------------------------------------------------------------------------------------

def _iso_ms(unix_nano: int) -> str:
    """Langfuse keeps millisecond precision."""
    millis = unix_nano // 1_000_000
    moment = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(milliseconds=millis)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{millis % 1000:03d}Z"


def _observation_json(span: ReceivedSpan, groups: set[str]) -> dict[str, Any]:
    attributes = {**span.resource_attributes, **span.attributes}
    row = stored_row(span)
    result: dict[str, Any] = {
        "id": span.span_id, "traceId": span.trace_id,
        "startTime": _iso_ms(span.start_time_unix_nano),
        "endTime": _iso_ms(span.end_time_unix_nano), "projectId": PROJECT_ID,
        "parentObservationId": span.parent_span_id, "type": span.type.upper(),
    }
    if "basic" in groups:
        result.update(
            name=span.name, level=span.level, statusMessage=span.status_message,
            version=attributes.get("langfuse.version"),
            environment=row.environment, bookmarked=False, public=False, userId=row.user_id,
            sessionId=row.session_id,
            isRootObservation=span.parent_span_id is None)
    if "time" in groups:
        received = dt.datetime.fromtimestamp(span.received_at, dt.timezone.utc).isoformat()
        result.update(completionStartTime=attributes.get(
            "langfuse.observation.completion_start_time"), createdAt=received, updatedAt=received)
    if "io" in groups:
        result.update(input=span.input, output=span.output)
    if "metadata" in groups:
        result["metadata"] = row.metadata
    if "model" in groups:
        result.update(model=span.model, internalModelId=None, modelParameters=row.model_parameters)
    if "usage" in groups:
        total = span.cost_details.get("total") if span.cost_details else None
        result.update(usageDetails=span.usage_details, costDetails=span.cost_details,
                      totalCost=total, usagePricingTierName=None)
    if "prompt" in groups:
        result.update(promptId=None, promptName=None, promptVersion=None)
    if "metrics" in groups:
        result.update(latency=(span.end_time_unix_nano - span.start_time_unix_nano) / 1e9,
                      timeToFirstToken=None)
    if "trace_context" in groups:
        result.update(tags=row.tags, release=row.release, traceName=row.trace_name)
    return result


_OBSERVATION_FILTERS = {
    "traceId": lambda span, value: span.trace_id == value,
    "name": lambda span, value: span.name == value,
    "type": lambda span, value: span.type.upper() == value.upper(),
    "level": lambda span, value: span.level == value,
    "parentObservationId": lambda span, value: span.parent_span_id == (value or None),
    "isRootObservation": lambda span, value: (span.parent_span_id is None) == (value == "true"),
    "userId": lambda span, value: span.attributes.get("user.id") == value,
    "sessionId": lambda span, value: span.attributes.get("session.id") == value,
    "version": lambda span, value: span.attributes.get("langfuse.version") == value,
    "fromStartTime": lambda span, value: span.start_time_unix_nano // 1_000_000
    >= _parse_iso(value).timestamp() * 1000,
    "toStartTime": lambda span, value: span.start_time_unix_nano // 1_000_000
    < _parse_iso(value).timestamp() * 1000,
}


# ---------------------------------------------------------------------------------------------
# Faults
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Fault:
    route: str
    kind: str                       # status | delay | reset
    status: int | None = None
    retry_after: str | None = None
    seconds: float = 0.0
    store: bool = False
    remaining: int | None = 1       # None: no count limit (a time window)
    until: float | None = None      # time.monotonic() deadline of a window

    def describe(self) -> str:
        if self.kind == "status":
            return f"status {self.status}"
        stored = "stored" if self.store else "not stored"
        if self.kind == "delay":
            return f"delay {self.seconds}s ({stored})"
        return f"reset ({stored})"


@dataclasses.dataclass
class _Outcome:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    error: str | None = None
    span_ids: list[str] = dataclasses.field(default_factory=list)


def _error(status: int, message: str, key: str = "message", **extra: Any) -> _Outcome:
    return _Outcome(status, {key: message, **extra}, error=message)


def _zod_error(issues: list[dict[str, Any]]) -> _Outcome:
    """How the server's route middleware answers a body that fails its zod schema."""
    outcome = _Outcome(400, {"message": "Invalid request data", "error": issues})
    outcome.error = "Invalid request data: " + json.dumps(issues)
    return outcome


class _BodyTooLarge(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# HTTP plumbing
# ---------------------------------------------------------------------------------------------

class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False      # a delayed handler must not hold up stop()
    allow_reuse_address = True
    request_queue_size = socket.SOMAXCONN   # the default backlog of 5 resets bursts of senders

    def __init__(self, port: int, receiver: LangfuseReceiver):
        self.receiver = receiver
        super().__init__(("127.0.0.1", port), _Handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive, as the httpx client pools connections
    server_version = "langfuse-test-receiver"
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in two writes: without this the body waits ~40 ms for the
        # client's delayed ACK. Langfuse's server (Node.js) sets no-delay by default too.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.receiver._connections_track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.receiver._connections_track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    # -- pieces ----------------------------------------------------------------------------------

    def _read_body(self, limit: int) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks, size = [], 0
            while True:
                chunk_size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if chunk_size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                data = self.rfile.read(chunk_size)
                self.rfile.readline()
                size += len(data)
                if size <= limit:
                    chunks.append(data)
            if size > limit:
                raise _BodyTooLarge(size)
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > limit:
            remaining = length
            while remaining > 0:    # drain, so the client sees the 413 rather than a broken pipe
                chunk = self.rfile.read(min(remaining, 1 << 20))
                if not chunk:
                    break
                remaining -= len(chunk)
            raise _BodyTooLarge(length)
        return self.rfile.read(length) if length else b""

    def _send(self, outcome: _Outcome, close: bool = False) -> None:
        payload = json.dumps(outcome.body).encode()
        try:
            self.send_response(outcome.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in outcome.headers.items():
                self.send_header(name, value)
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()
        except OSError:             # the client gave up (e.g. after its timeout)
            self.close_connection = True

    def _drop_connection(self) -> None:
        """Reset (RST) the connection without an answer."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()      # the buffered reader holds a reference to the socket
            self.connection.close()
        except OSError:
            pass

    # -- the request ----------------------------------------------------------------------------

    def _serve(self) -> None:
        receiver = self.server.receiver
        url = urlsplit(self.path)
        if url.path.startswith(CONTROL_PREFIX):
            self._serve_control(url.path[len(CONTROL_PREFIX):])
            return
        if receiver._is_down():     # a keep-alive connection that raced the shutdown
            self._drop_connection()
            return
        route = ROUTE_OF_PATH.get(url.path, "unknown")
        number = receiver._next_request_number()
        headers = {name: self.headers[name] for name in _HEADERS_OF_INTEREST
                   if self.headers.get(name) is not None}
        ingestion_version = (self.headers.get("x-langfuse-ingestion-version")
                             or self.headers.get("x_langfuse_ingestion_version"))
        if ingestion_version is not None:
            headers["x-langfuse-ingestion-version"] = ingestion_version
        log = dict(number=number, method=self.command, path=url.path, query=url.query,
                   route=route, headers=headers, auth_public_key=self._basic_auth()[0])
        try:
            body = self._read_body(receiver.max_body_bytes)
        except _BodyTooLarge as error:
            outcome = _error(413, f"Request body of {error.args[0]} bytes exceeds the limit of "
                                  f"{receiver.max_body_bytes} bytes")
            receiver._log_request(status=413, fault=None, outcome=outcome, **log)
            self._send(outcome, close=True)
            return
        except ValueError:
            outcome = _error(400, "Malformed request body framing")
            receiver._log_request(status=400, fault=None, outcome=outcome, **log)
            self._send(outcome, close=True)
            return

        fault = receiver._take_fault(route) if route != "unknown" else None
        if fault is None:
            outcome = self._process(route, url.query, body, number)
            receiver._log_request(status=outcome.status, fault=None, outcome=outcome, **log)
            self._send(outcome)
        elif fault.kind == "status":
            outcome = _error(fault.status, f"{http.HTTPStatus(fault.status).phrase} "
                                           "(injected by the test receiver)")
            if fault.retry_after is not None:
                outcome.headers["Retry-After"] = fault.retry_after
            receiver._log_request(status=fault.status, fault=fault.describe(), outcome=outcome,
                                  **log)
            self._send(outcome)
        elif fault.kind == "delay":
            if fault.store:
                outcome = self._process(route, url.query, body, number)
            else:
                outcome = _error(504, "Gateway Timeout (injected by the test receiver)")
            receiver._log_request(status=outcome.status, fault=fault.describe(), outcome=outcome,
                                  **log)
            if receiver._stopping.wait(fault.seconds):
                self._drop_connection()
                return
            self._send(outcome, close=True)
        else:
            outcome = (self._process(route, url.query, body, number) if fault.store
                       else _Outcome(0, {}))
            receiver._log_request(status=None, fault=fault.describe(), outcome=outcome, **log)
            self._drop_connection()

    def _basic_auth(self) -> tuple[str | None, str | None]:
        header = self.headers.get("Authorization") or ""
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic" or not encoded:
            return None, None
        try:
            user, _, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None, None
        return user, password

    def _process(self, route: str, query: str, body: bytes, number: int) -> _Outcome:
        receiver = self.server.receiver
        expected_method = {"traces": "POST", "scores": "POST", "observations": "GET",
                           "health": "GET", "projects": "GET"}.get(route)
        if expected_method is None:
            return _error(404, f"No route {self.command} {urlsplit(self.path).path}")
        if self.command != expected_method:
            return _error(405, f"Method {self.command} not allowed")
        if route == "health":
            return _Outcome(200, {"status": "OK", "version": SERVER_VERSION})
        user, password = self._basic_auth()
        if user is None:
            return _error(401, "Access denied: Basic auth with public and secret key required")
        if (user, password) != (receiver.public_key, receiver.secret_key):
            return _error(401, "Invalid credentials. Confirm that you've configured the correct "
                               "host and the public and secret keys.")
        if route == "traces":
            return receiver._ingest_traces(self.headers, body, number)
        if route == "scores":
            return receiver._ingest_scores(self.headers, body, number)
        if urlsplit(self.path).path == OBSERVATIONS_V1_PATH:
            return receiver._list_observations_v1(query)
        if route == "projects":
            return _Outcome(200, {"data": [{"id": "project-test", "name": "test project",
                                            "organization": {"id": "org-test", "name": "test org"},
                                            "metadata": {}}]})
        return receiver._list_observations(query)

    def _serve_control(self, action: str) -> None:
        receiver = self.server.receiver
        try:
            if action == "state" and self.command == "GET":
                self._send(_Outcome(200, receiver._snapshot_json()))
                return
            body = self._read_body(receiver.max_body_bytes)
            params = json.loads(body) if body else {}
            if not isinstance(params, dict):
                raise ValueError("control parameters must be a JSON object")
            if action == "down":    # answer on this connection; every other one is closed
                receiver._go_down(float(params["seconds"]), spare=self.connection)
            else:
                receiver._apply_control(action, params)
        except (KeyError, TypeError, ValueError, RuntimeError, _BodyTooLarge) as error:
            self._send(_error(400, f"control {action}: {error!r}"), close=True)
            return
        self._send(_Outcome(200, {}), close=True)


# ---------------------------------------------------------------------------------------------
# The receiver
# ---------------------------------------------------------------------------------------------

class LangfuseReceiver(_ReceiverView):
    """The receiver, served from a background thread of this process.

    strict_project_rules (default on) adds this project's rules on top of Langfuse's contract:
    usage/cost only on generation/embedding, usage_details and cost_details include `total`
    equal to the sum of the other (exclusive) buckets; scores carry `id` and `timestamp`,
    traceId 32-hex and observationId 16-hex. Their messages start with "[project rule]".
    state_file: a JSON-lines journal of everything accepted; it is replayed at construction so
    data survives a restart (used by ReceiverProcess).

    Like Langfuse, the observations listing shows every stored copy (no deduplication on reads)
    and only spans that arrived with `x-langfuse-ingestion-version: 4`: without it Langfuse
    makes them readable up to ~10 minutes later, which within a test is never. `spans()` shows
    them all. A `down()` period cannot be recorded in `requests()`: connections are refused.
    """

    def __init__(self, public_key: str = "pk-lf-test", secret_key: str = "sk-lf-test", *,
                 port: int = 0, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 strict_project_rules: bool = True, state_file: str | Path | None = None,
                 profile: str = "latest", v1_lag: float | None = None):
        self.public_key = public_key
        self.secret_key = secret_key
        self.max_body_bytes = max_body_bytes
        self.strict_project_rules = strict_project_rules
        self.profile = PROFILES[profile]
        self.v1_lag = self.profile.v1_lag if v1_lag is None else float(v1_lag)
        self._port = port
        self._lock = threading.RLock()
        self._lifecycle = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._down = False
        self._connections: set[socket.socket] = set()
        self._spans: list[ReceivedSpan] = []
        self._score_writes: list[ReceivedScore] = []
        self._scores: dict[tuple[str, str, str], ReceivedScore] = {}
        self._requests: list[ReceivedRequest] = []
        self._request_counter = 0
        self._faults: list[_Fault] = []
        self._rejected_span_ids: frozenset[str] = frozenset()
        self._failing_traces: dict[str, int] = {}
        self._journal_path = Path(state_file) if state_file else None
        self._journal = None
        if self._journal_path is not None:
            self._replay_journal()
            self._journal = self._journal_path.open("a", encoding="utf-8")

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    def start(self) -> LangfuseReceiver:
        with self._lifecycle:
            if self._httpd is not None:
                return self
            self._stopping.clear()
            self._down = False
            self._listen()
        return self

    def stop(self) -> None:
        """Stop serving and release the port (safe to call twice; `start()` again reuses it)."""
        with self._lifecycle:
            self._stopping.set()
            httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        self._close_connections()

    def close(self) -> None:
        self.stop()
        with self._lock:
            if self._journal is not None:
                self._journal.close()
                self._journal = None

    def __enter__(self) -> LangfuseReceiver:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _listen(self) -> None:
        httpd = _HTTPServer(self._port, self)
        self._port = httpd.server_address[1]
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                         name=f"langfuse-receiver-{self._port}", daemon=True).start()
        self._httpd = httpd

    def _go_down(self, seconds: float, spare: socket.socket | None = None) -> None:
        with self._lifecycle:
            httpd, self._httpd = self._httpd, None
            if httpd is None:
                raise RuntimeError("the receiver is not running")
            self._down = True
        httpd.shutdown()
        httpd.server_close()
        self._close_connections(spare=spare)
        threading.Thread(target=self._come_back, args=(seconds,), daemon=True).start()

    def _come_back(self, seconds: float) -> None:
        if self._stopping.wait(seconds):
            return
        with self._lifecycle:
            if not self._stopping.is_set() and self._httpd is None:
                self._listen()
                self._down = False

    def _is_down(self) -> bool:
        return self._down

    def _connections_track(self, connection: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def _close_connections(self, spare: socket.socket | None = None) -> None:
        with self._lock:
            connections = [c for c in self._connections if c is not spare]
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # -- the shared view ---------------------------------------------------------------------------

    def _snapshot(self) -> _Snapshot:
        with self._lock:
            return _Snapshot(list(self._spans), list(self._scores.values()),
                             list(self._score_writes), list(self._requests))

    def _snapshot_json(self) -> dict[str, Any]:
        snapshot = self._snapshot()
        return {field.name: [_record_to_json(r) for r in getattr(snapshot, field.name)]
                for field in dataclasses.fields(snapshot)}

    def _control(self, action: str, **params: Any) -> None:
        if action == "down":
            self._go_down(float(params["seconds"]))
        else:
            self._apply_control(action, params)

    def _apply_control(self, action: str, params: dict[str, Any]) -> None:
        if action == "reset":
            with self._lock:
                self._spans.clear()
                self._score_writes.clear()
                self._scores.clear()
                self._requests.clear()
                self._faults.clear()
                self._rejected_span_ids = frozenset()
                self._failing_traces = {}
                if self._journal is not None:
                    self._journal.truncate(0)
            return
        if action == "set_v1_lag":
            seconds = float(params["seconds"])
            if seconds < 0:
                raise ValueError("seconds must not be negative")
            self.v1_lag = seconds
            return
        if action == "clear_faults":
            with self._lock:
                self._faults.clear()
                self._rejected_span_ids = frozenset()
                self._failing_traces = {}
            return
        if action == "fail_traces":
            trace_ids, status = params["trace_ids"], params["status"]
            if not isinstance(trace_ids, list) or not isinstance(status, int) or not 400 <= status <= 599:
                raise ValueError("trace_ids must be a list and status an HTTP error status")
            with self._lock:
                self._failing_traces.update({t: status for t in trace_ids})
            return
        if action == "reject_spans":
            span_ids = params["span_ids"]
            if not isinstance(span_ids, list) or not all(isinstance(s, str) for s in span_ids):
                raise ValueError("span_ids must be a list of strings")
            with self._lock:
                self._rejected_span_ids |= frozenset(span_ids)
            return
        if action not in ("fail", "delay", "reset_connection"):
            raise ValueError(f"unknown control action {action!r}")
        route = params["route"]
        if route not in FAULT_ROUTES:
            raise ValueError(f"route {route!r} must be one of {sorted(FAULT_ROUTES)}")
        times = params.get("times")
        if times is not None and (not isinstance(times, int) or times < 1):
            raise ValueError("times must be a positive integer")
        if action == "fail":
            status = params["status"]
            if not isinstance(status, int) or not 400 <= status <= 599:
                raise ValueError("status must be an HTTP error status (400..599)")
            for_seconds = params.get("for_seconds")
            until = None if for_seconds is None else time.monotonic() + float(for_seconds)
            fault = _Fault(route, "status", status=status, retry_after=params.get("retry_after"),
                           remaining=times if until is not None else (times or 1), until=until)
        elif action == "delay":
            fault = _Fault(route, "delay", seconds=float(params["seconds"]),
                           store=bool(params.get("store", True)), remaining=times or 1)
        else:
            fault = _Fault(route, "reset", store=bool(params.get("store", False)),
                           remaining=times or 1)
        with self._lock:
            self._faults.append(fault)

    def _take_fault(self, route: str) -> _Fault | None:
        now = time.monotonic()
        with self._lock:
            self._faults = [f for f in self._faults if (f.until is None or now < f.until)
                            and (f.remaining is None or f.remaining > 0)]
            for fault in self._faults:
                if fault.route in (route, "any"):
                    if fault.remaining is not None:
                        fault.remaining -= 1
                    return fault
        return None

    # -- records -----------------------------------------------------------------------------------

    def _next_request_number(self) -> int:
        with self._lock:
            self._request_counter += 1
            return self._request_counter

    def _log_request(self, *, status: int | None, fault: str | None, outcome: _Outcome,
                     **fields: Any) -> None:
        record = ReceivedRequest(status=status, fault=fault, error=outcome.error,
                                 span_ids=outcome.span_ids, received_at=time.time(), **fields)
        with self._lock:
            self._requests.append(record)
            self._write_journal("request", record)

    def _write_journal(self, kind: str, record: Any) -> None:
        if self._journal is not None:
            self._journal.write(json.dumps({kind: _record_to_json(record)}) + "\n")
            self._journal.flush()

    def _replay_journal(self) -> None:
        if not self._journal_path.exists():
            return
        for line in self._journal_path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            ((kind, data),) = json.loads(line).items()
            if kind == "span":
                self._spans.append(_record_from_json(ReceivedSpan, data))
            elif kind == "score":
                self._store_score(_record_from_json(ReceivedScore, data), journal=False)
            elif kind == "request":
                request = _record_from_json(ReceivedRequest, data)
                self._requests.append(request)
                self._request_counter = max(self._request_counter, request.number)

    def _store_score(self, score: ReceivedScore, journal: bool = True) -> None:
        with self._lock:
            self._score_writes.append(score)
            self._scores[score.overwrite_key] = score
            if journal:
                self._write_journal("score", score)

    # -- routes ------------------------------------------------------------------------------------

    def _ingest_traces(self, headers: Any, body: bytes, number: int) -> _Outcome:
        content_type = (headers.get("Content-Type") or "").lower()
        is_protobuf = "application/x-protobuf" in content_type
        if not is_protobuf and "application/json" not in content_type:
            return _error(400, f"Invalid content type: {content_type or 'none'}", key="error")
        if "gzip" in (headers.get("Content-Encoding") or "").lower():
            try:
                body = gzip.decompress(body)
            except (OSError, EOFError, zlib.error):
                return _error(400, "Failed to decompress request body", key="error")
        if is_protobuf:
            if _ProtoExportRequest is None:
                return _error(415, "application/x-protobuf needs the opentelemetry-proto package "
                                   "in the test environment", key="error")
            try:
                payload = _protobuf_to_otlp_json(body)
            except Exception:   # any decode failure of the protobuf runtime
                return _error(400, "Failed to parse OTel Protobuf Trace", key="error")
        else:
            try:
                payload = json.loads(body)
            except (ValueError, UnicodeDecodeError):
                return _error(400, "Failed to parse OTel JSON Trace", key="error")
            if not isinstance(payload, dict):
                return _error(400, "OTLP JSON body must be an object with resourceSpans",
                              key="error")
        version = (headers.get("x-langfuse-ingestion-version")
                   or headers.get("x_langfuse_ingestion_version"))
        if version is not None and (not version.strip().isdigit() or int(version) > 4):
            return _error(400, f'Unsupported x-langfuse-ingestion-version: "{version}". '
                               'Maximum supported: "4".', key="error")
        with self._lock:
            rejected = self._rejected_span_ids
        export = _parse_export(payload.get("resourceSpans"),
                               project_rules=self.strict_project_rules,
                               rejected_span_ids=rejected)
        with self._lock:
            failing = {self._failing_traces[f["trace_id"]] for f in export.spans
                       if f.get("trace_id") in self._failing_traces}
        if failing:
            outcome = _error(max(failing), "trace failing on purpose (fail_traces fault)", key="error")
            outcome.span_ids = export.span_ids
            return outcome
        if export.problems:
            message = ("Invalid OTLP trace export: " + "; ".join(export.problems)
                       + ". The entire export was rejected and no spans were ingested.")
            outcome = _error(400, message, key="error", problems=export.problems)
            outcome.span_ids = export.span_ids
            return outcome
        received_at = time.time()
        with self._lock:
            for fields in export.spans:
                span = ReceivedSpan(request=number, ingestion_version=version,
                                    received_at=received_at, **fields)
                self._spans.append(span)
                self._write_journal("span", span)
        return _Outcome(200, {}, span_ids=export.span_ids)

    def _ingest_scores(self, headers: Any, body: bytes, number: int) -> _Outcome:
        if "application/json" not in (headers.get("Content-Type") or "").lower():
            return _error(400, "Content-Type must be application/json")
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return _error(400, "Invalid JSON body")
        received_at = time.time()
        timestamp_kept = self.profile.score_timestamp_kept

        def record(fields: dict[str, Any], raw: dict[str, Any]) -> ReceivedScore:
            return ReceivedScore(request=number, body=raw, received_at=received_at, **fields)

        if not self.profile.scores_as_list:
            # `PostScoresBodyV1` is one object; zod's parse of anything else throws, and the route's
            # middleware answers 400 "Invalid request data" with the issues (one per side of the
            # schema's intersection).
            if not isinstance(payload, dict):
                received = "array" if isinstance(payload, list) else type(payload).__name__
                issue = {"expected": "object", "code": "invalid_type", "path": [],
                         "message": f"Invalid input: expected object, received {received}"}
                return _zod_error([issue, issue])
            fields, problems = _validate_score(payload, self.strict_project_rules, timestamp_kept)
            if problems:
                return _zod_error([{"code": "custom", "path": [], "message": p} for p in problems])
            self._store_score(record(fields, payload))
            return _Outcome(200, {"id": fields["id"]})
        if isinstance(payload, dict):   # the single-score shape of the older servers
            fields, problems = _validate_score(payload, self.strict_project_rules, timestamp_kept)
            if problems:
                return _error(400, "Invalid score: " + "; ".join(problems))
            self._store_score(record(fields, payload))
            return _Outcome(200, {"id": fields["id"]})
        if not isinstance(payload, list) or not payload:
            return _error(400, "Body must be a non-empty JSON array of scores")
        accepted, errors = [], []
        for index, raw in enumerate(payload):
            fields, problems = _validate_score(raw, self.strict_project_rules, timestamp_kept)
            if problems:
                label = (f"scores[{index}] (id={raw.get('id')!r}, name={raw.get('name')!r})"
                         if isinstance(raw, dict) else f"scores[{index}]")
                errors.append({"message": f"{label}: " + "; ".join(problems)})
            else:
                accepted.append(record(fields, raw))
        for score in accepted:
            self._store_score(score)
        if not errors:
            return _Outcome(202, {"message": "Accepted"})
        outcome = _Outcome(207, {"accepted": len(accepted), "rejected": len(errors),
                                 "errors": errors})
        outcome.error = "; ".join(e["message"] for e in errors)
        return outcome

    def _list_observations(self, query: str) -> _Outcome:
        if not self.profile.observations_v2:
            # LANGFUSE_MIGRATION_V4_ALLOW_PREVIEW_OPT_IN is not "true": LangfuseNotFoundError.
            return _Outcome(404, {"message": V2_OBSERVATIONS_UNAVAILABLE, "error": "LangfuseNotFoundError"},
                            error=V2_OBSERVATIONS_UNAVAILABLE)
        params = parse_qs(query, keep_blank_values=True)
        if params.get("filter", [""])[0]:
            return _error(501, "The test receiver does not implement the `filter` parameter")
        if params.get("parseIoAsJson", ["false"])[0] == "true":
            return _error(400, "parseIoAsJson=true is no longer supported")
        groups = {g.strip() for g in params.get("fields", ["core,basic"])[0].split(",") if g.strip()}
        unknown = groups - OBSERVATION_FIELD_GROUPS
        if unknown:
            return _error(400, f"Unknown field group(s) {sorted(unknown)}")
        try:
            limit = int(params.get("limit", ["50"])[0])
            offset = 0
            if params.get("cursor", [""])[0]:
                offset = int(json.loads(base64.urlsafe_b64decode(params["cursor"][0]))["offset"])
        except (ValueError, KeyError, TypeError, binascii.Error):
            return _error(400, "Invalid limit or cursor")
        if not 1 <= limit <= 1000:
            return _error(400, "limit must be between 1 and 1000")
        with self._lock:
            # Without `x-langfuse-ingestion-version: 4` Langfuse makes spans readable only up to
            # ~10 minutes later: within a test, never.
            spans = [s for s in self._spans if s.ingestion_version == "4"]
        environments = params.pop("environment", None)
        try:
            for name, values in params.items():
                check = _OBSERVATION_FILTERS.get(name)
                if check is not None:
                    spans = [s for s in spans if check(s, values[0])]
        except (TypeError, ValueError):
            return _error(400, "Invalid fromStartTime/toStartTime")
        if environments:
            spans = [s for s in spans if {**s.resource_attributes, **s.attributes}
                     .get("langfuse.environment", "default") in environments]
        # Newest first; every stored copy is listed (v4 does not deduplicate on reads).
        spans.sort(key=lambda s: (-s.start_time_unix_nano, s.request))
        page = spans[offset:offset + limit]
        meta: dict[str, Any] = {}
        if offset + limit < len(spans):
            meta["cursor"] = base64.urlsafe_b64encode(
                json.dumps({"offset": offset + limit}).encode()).decode()
        return _Outcome(200, {"data": [_observation_json(s, groups | {"core"}) for s in page],
                              "meta": meta})


    def _list_observations_v1(self, query: str) -> _Outcome:
        """GET /api/public/observations: page-paginated (limit 1-100), every stored copy, each
        readable only `v1_lag` seconds after it arrived (on the v3 line the listing reads tables
        that a queue fills), whatever its ingestion header."""
        params = {name: values[0] for name, values in parse_qs(query, keep_blank_values=True).items()}
        issues = []
        try:
            page = int(params.get("page") or 1)
            limit = int(params.get("limit") or 50)
        except ValueError:
            page, limit = 0, 0
        if page < 1:
            issues.append({"code": "too_small", "path": ["page"], "message": "Too small: expected number to be >0"})
        if not 1 <= limit <= 100:
            issues.append({"code": "too_big" if limit > 100 else "too_small", "path": ["limit"],
                           "message": "limit must be an integer between 1 and 100"})
        if issues:
            return _zod_error(issues)
        visible_before = time.time() - self.v1_lag
        with self._lock:
            spans = [s for s in self._spans if s.received_at <= visible_before]
        for name, value in params.items():
            check = _OBSERVATION_FILTERS.get(name)
            if check is not None and name not in ("fromStartTime", "toStartTime"):
                spans = [s for s in spans if check(s, value)]
        spans.sort(key=lambda s: (-s.start_time_unix_nano, s.request))
        window = spans[(page - 1) * limit:page * limit]
        groups = OBSERVATION_FIELD_GROUPS - {"trace_context"}
        return _Outcome(200, {"data": [_observation_json(s, set(groups)) for s in window],
                              "meta": {"page": page, "limit": limit, "totalItems": len(spans),
                                       "totalPages": math.ceil(len(spans) / limit)}})


# ---------------------------------------------------------------------------------------------
# The receiver as a separate process
# ---------------------------------------------------------------------------------------------

_REPO_ROOT = Path(__file__).resolve().parents[2]


class ReceiverProcess(_ReceiverView):
    """`python -m tests.support.langfuse_receiver` in a child process, driven through its
    control API, with the same inspection and fault methods as LangfuseReceiver. For tests
    whose workers run in other processes. With a state_file, data survives stop()/start()
    and kill() (SIGKILL), and start() again listens on the same port."""

    def __init__(self, public_key: str = "pk-lf-test", secret_key: str = "sk-lf-test", *,
                 port: int = 0, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 strict_project_rules: bool = True, state_file: str | Path | None = None,
                 profile: str = "latest", v1_lag: float | None = None):
        self.public_key = public_key
        self.secret_key = secret_key
        self.max_body_bytes = max_body_bytes
        self.strict_project_rules = strict_project_rules
        self.profile = PROFILES[profile]
        self.v1_lag = self.profile.v1_lag if v1_lag is None else float(v1_lag)
        self.state_file = Path(state_file) if state_file else None
        self._port = port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def command(self) -> list[str]:
        args = [sys.executable, "-m", "tests.support.langfuse_receiver", "--port", str(self._port),
                "--public-key", self.public_key, "--secret-key", self.secret_key,
                "--max-body-bytes", str(self.max_body_bytes), "--profile", self.profile.name,
                "--v1-lag", str(self.v1_lag)]
        if not self.strict_project_rules:
            args.append("--no-project-rules")
        if self.state_file is not None:
            args += ["--state-file", str(self.state_file)]
        return args

    def start(self, timeout: float = 30.0) -> ReceiverProcess:
        if self.proc is not None:
            return self
        self.proc = subprocess.Popen(self.command(), cwd=_REPO_ROOT, stdout=subprocess.PIPE)
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                self.kill()
                raise RuntimeError(f"the receiver process did not start within {timeout}s")
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait(5)
            self.proc = None
            raise RuntimeError(f"the receiver process exited with {code} before it was ready")
        self._port = json.loads(line)["port"]
        return self

    def stop(self) -> None:
        """SIGTERM by pid (SIGKILL if it does not exit within 5 s)."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._forget_process()

    def kill(self) -> None:
        """SIGKILL by pid: a crash, with no shutdown."""
        if self.proc is None:
            return
        self.proc.kill()
        self.proc.wait(5)
        self._forget_process()

    def _forget_process(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> ReceiverProcess:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def _call(self, method: str, action: str, params: dict[str, Any] | None = None) -> Any:
        data = None if params is None else json.dumps(params).encode()
        request = urllib.request.Request(f"{self.base_url}{CONTROL_PREFIX}{action}", data=data,
                                         method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            raise ValueError(error.read().decode(errors="replace")) from None

    def _snapshot(self) -> _Snapshot:
        data = self._call("GET", "state")
        return _Snapshot(
            spans=[_record_from_json(ReceivedSpan, s) for s in data["spans"]],
            scores=[_record_from_json(ReceivedScore, s) for s in data["scores"]],
            score_writes=[_record_from_json(ReceivedScore, s) for s in data["score_writes"]],
            requests=[_record_from_json(ReceivedRequest, r) for r in data["requests"]])

    def _control(self, action: str, **params: Any) -> None:
        self._call("POST", action, params)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.langfuse_receiver",
        description="A strict local Langfuse receiver for tests. Prints one JSON line "
                    '{"port", "pid", "base_url"} on stdout when ready; stops on SIGTERM/SIGINT.')
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--public-key", default="pk-lf-test")
    parser.add_argument("--secret-key", default="sk-lf-test")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    parser.add_argument("--no-project-rules", action="store_true",
                        help="enforce only Langfuse's own contract")
    parser.add_argument("--state-file", help="JSON-lines journal of everything accepted; "
                                             "replayed at start so data survives restarts")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="latest",
                        help="the Langfuse server generation to behave as")
    parser.add_argument("--v1-lag", type=float, default=None,
                        help="seconds before a span shows in GET /api/public/observations "
                             "(default: the profile's)")
    args = parser.parse_args(argv)
    receiver = LangfuseReceiver(args.public_key, args.secret_key, port=args.port,
                                max_body_bytes=args.max_body_bytes,
                                strict_project_rules=not args.no_project_rules,
                                state_file=args.state_file, profile=args.profile,
                                v1_lag=args.v1_lag).start()
    stopped = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopped.set())
    print(json.dumps({"port": receiver.port, "pid": os.getpid(), "base_url": receiver.base_url}),
          flush=True)
    while not stopped.wait(0.5):
        pass
    receiver.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
