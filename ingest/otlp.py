"""Observations as OTLP/JSON spans with the attributes Langfuse reads (pure).

A span is built once, when its observation is complete, and encoded once (`items.Span`): what goes
to the outbox, the dead letters and a replay is exactly what Langfuse receives, and an export
request is those bytes put side by side (`export_body`).

Langfuse stores metadata values raw and its metadata filters compare the raw text, so a string
is sent as itself and only other values as JSON (its read path decodes those).
"""

from __future__ import annotations

import json
from typing import Any, Iterable

import orjson
from langfuse import LangfuseOtelSpanAttributes as A

from codex_langfuse.ingest.content import ContentPolicy
from codex_langfuse.ingest.items import Span
from codex_langfuse.ingest.observations import Observation, TraceAttributes

SCOPE = {"name": "codex-langfuse", "version": "0.1.0"}
RESOURCE = {"attributes": [{"key": "service.name", "value": {"stringValue": "codex-langfuse"}}]}
STATUS_ERROR = 2
SPAN_KIND_INTERNAL = 1
# Metadata that carries captured content (paths, fields we pass through unread): left out
# with the inputs and outputs when content capture is off.
CONTENT_METADATA = frozenset({"files_changed", "extra_fields", "usage_extra_fields", "explanation", "cwd", "stderr"})
# Read by Langfuse's ingestion (`langfuse.trace.input`/`.output`) though the 5.x SDK no longer names them.
TRACE_INPUT = "langfuse.trace.input"
TRACE_OUTPUT = "langfuse.trace.output"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _io(value: Any) -> str:
    # Langfuse's SDK sends strings as they are and everything else as JSON; so do we.
    return value if isinstance(value, str) else _json(value)


def _metadata_value(policy: ContentPolicy, key: str, value: Any) -> str:
    """A string as itself, anything else as JSON; cut to the field cap (a cut JSON value then
    shows as text)."""
    return policy.cap(_io(policy.clean({key: value})[key]))


def _string(key: str, value: str) -> dict[str, Any]:
    return {"key": key, "value": {"stringValue": value}}


def encode_span(obs: Observation, policy: ContentPolicy) -> dict[str, Any]:
    attributes: list[dict[str, Any]] = [
        _string(A.OBSERVATION_TYPE, obs.type),
        _string(A.OBSERVATION_LEVEL, obs.level),
    ]

    def put(key: str, value: Any) -> None:
        if value is not None:
            attributes.append(_string(key, value))

    attributes += trace_attributes(obs.trace, policy)
    put(A.OBSERVATION_STATUS_MESSAGE, policy.clean(obs.status_message) if obs.status_message else None)
    if policy.capture:
        for key, value in ((A.OBSERVATION_INPUT, obs.input), (A.OBSERVATION_OUTPUT, obs.output)):
            if value is not None:
                text = _io(policy.clean(value))
                put(key, text if isinstance(value, str) else policy.cap(text))
    for key, value in obs.metadata.items():
        if value is not None and (policy.capture or key not in CONTENT_METADATA):
            put(f"{A.OBSERVATION_METADATA}.{key}", _metadata_value(policy, key, value))
    put(A.OBSERVATION_MODEL, obs.model)
    if obs.model_parameters:
        put(A.OBSERVATION_MODEL_PARAMETERS, _json(obs.model_parameters))
    if obs.usage_details is not None:
        put(A.OBSERVATION_USAGE_DETAILS, _json(obs.usage_details))
    if obs.cost_details is not None:
        put(A.OBSERVATION_COST_DETAILS, _json(obs.cost_details))

    span: dict[str, Any] = {
        "traceId": obs.trace_id,
        "spanId": obs.id,
        "name": obs.name,
        "kind": SPAN_KIND_INTERNAL,
        "startTimeUnixNano": str(obs.start_us * 1000),
        "endTimeUnixNano": str(obs.end_us * 1000),
        "attributes": attributes,
    }
    if obs.parent_id:
        span["parentSpanId"] = obs.parent_id
    if obs.level == "ERROR":
        span["status"] = {"code": STATUS_ERROR, "message": policy.clean(obs.status_message or "")}
    return span


def trace_attributes(trace: TraceAttributes, policy: ContentPolicy) -> list[dict[str, Any]]:
    """The trace-level attributes every span of a run repeats: built (and redacted) once per
    distinct value rather than once per span."""
    same = policy.memo("trace_attributes_of")  # id -> (the very object, its attributes): no key to build
    known = same.get(id(trace))
    if known is not None and known[0] is trace:
        return known[1]
    cache = policy.memo("trace_attributes")
    key = trace.model_dump_json()
    cached = cache.get(key)
    if cached is not None:
        _remember(same, id(trace), (trace, cached))
        return cached
    attributes: list[dict[str, Any]] = []
    for name, value in ((A.TRACE_NAME, trace.name), (A.TRACE_USER_ID, trace.user_id),
                        (A.TRACE_SESSION_ID, trace.session_id), (A.ENVIRONMENT, trace.environment),
                        (A.RELEASE, trace.release)):
        if value is not None:
            attributes.append(_string(name, value))
    if trace.tags:
        attributes.append({"key": A.TRACE_TAGS,
                           "value": {"arrayValue": {"values": [{"stringValue": t} for t in trace.tags]}}})
    for name, value in trace.metadata.items():
        if value is not None and (policy.capture or name not in CONTENT_METADATA):
            attributes.append(_string(f"{A.TRACE_METADATA}.{name}", _metadata_value(policy, name, value)))
    if policy.capture:
        for name, value in ((TRACE_INPUT, trace.input), (TRACE_OUTPUT, trace.output)):
            if value is not None:
                attributes.append(_string(name, policy.cap(_io(policy.clean(value)))))
    _remember(cache, key, attributes)
    _remember(same, id(trace), (trace, attributes))
    return attributes


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) >= 256:
        cache.clear()
    cache[key] = value


_BODY_HEAD = orjson.dumps({"resourceSpans": [{"resource": RESOURCE, "scopeSpans": [{"scope": SCOPE, "spans": []}]}]})
_BODY_HEAD, _BODY_TAIL = _BODY_HEAD[:-len(b"]}]}]}")], b"]}]}]}"


def export_body(spans: Iterable[Span]) -> bytes:
    """One OTLP/JSON export request of encoded spans, put together without encoding them again
    (the spans of several traces may share it)."""
    return b"".join((_BODY_HEAD, b",".join(span.data for span in spans), _BODY_TAIL))
