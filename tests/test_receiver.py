"""The local Langfuse receiver enforces the server's contract and shows every copy it receives.

Driven with the real `langfuse` API client wherever the client can send the request, and with
raw httpx for requests the client cannot produce (malformed bodies, other content types).
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import socket
import threading

import httpx
import pytest
from langfuse.api.client import LangfuseAPI
from langfuse.api.commons.errors.access_denied_error import AccessDeniedError
from langfuse.api.commons.errors.error import Error
from langfuse.api.commons.errors.unauthorized_error import UnauthorizedError
from langfuse.api.core.api_error import ApiError
from langfuse.api.opentelemetry import (
    OtelAttribute,
    OtelAttributeValue,
    OtelResourceSpan,
    OtelScopeSpan,
    OtelSpan,
)
from langfuse.api.scores import CreateScoreBatchResponse, CreateScoreBatchResults, CreateScoreRequest

from tests.support.langfuse_receiver import (
    OTEL_TRACES_PATH,
    SCORES_PATH,
    LangfuseReceiver,
    ReceiverProcess,
)

TRACE = "0af7651916cd43dd8448eb211c80319c"
OTHER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
ROOT = "b7ad6b7169203331"
CHILD = "00f067aa0ba902b7"
GRANDCHILD = "53995c3f42cd8ad8"
T0 = 1_750_000_000_000_000_000
V4 = {"additional_headers": {"x-langfuse-ingestion-version": "4"}, "max_retries": 0}
NO_RETRY = {"max_retries": 0}
DAY = dt.datetime(2025, 6, 15, 12, 0, tzinfo=dt.timezone.utc)


# -- helpers -------------------------------------------------------------------------------------

def any_value(value):
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": value}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, list):
        return {"arrayValue": {"values": [any_value(v) for v in value]}}
    if isinstance(value, dict):
        return {"kvlistValue": {"values": [{"key": k, "value": any_value(v)}
                                           for k, v in value.items()]}}
    return {"stringValue": value}


def span(span_id=ROOT, *, trace_id=TRACE, parent=None, name="step", start=T0,
         end=T0 + 1_000_000, attributes=None):
    """A valid OTLP JSON span (a plain dict, which the client sends as is)."""
    data = {"traceId": trace_id, "spanId": span_id, "name": name,
            "startTimeUnixNano": str(start), "endTimeUnixNano": str(end),
            "attributes": [{"key": k, "value": any_value(v)}
                           for k, v in (attributes or {}).items()]}
    if parent is not None:
        data["parentSpanId"] = parent
    return data


def export_body(*spans):
    return {"resourceSpans": [{"resource": {"attributes": []},
                               "scopeSpans": [{"scope": {"name": "codex-langfuse"},
                                               "spans": list(spans)}]}]}


def export(api, *spans, options=V4):
    return api.opentelemetry.export_traces(
        resource_spans=export_body(*spans)["resourceSpans"], request_options=options)


def post_raw(receiver, path, content, headers=None, auth=True):
    """A request the client would never build: exact bytes and headers."""
    if isinstance(content, (dict, list)):
        content = json.dumps(content).encode()
    return httpx.post(receiver.base_url + path, content=content, timeout=30,
                      headers={"content-type": "application/json",
                               "x-langfuse-ingestion-version": "4", **(headers or {})},
                      auth=(receiver.public_key, receiver.secret_key) if auth else None)


def generation(span_id=ROOT, usage=None, cost=None, **extra):
    attributes = {"langfuse.observation.type": "generation", **extra}
    if usage is not None:
        attributes["langfuse.observation.usage_details"] = json.dumps(usage)
    if cost is not None:
        attributes["langfuse.observation.cost_details"] = json.dumps(cost)
    return span(span_id, attributes=attributes)


def score(score_id="s-1", name="success", value=1, data_type="BOOLEAN", **fields):
    return {"id": score_id, "name": name, "value": value, "dataType": data_type,
            "traceId": TRACE, "timestamp": DAY.isoformat(), **fields}


@pytest.fixture
def receiver():
    receiver = LangfuseReceiver().start()
    try:
        yield receiver
    finally:
        receiver.close()


@pytest.fixture
def api(receiver):
    return LangfuseAPI(base_url=receiver.base_url, username=receiver.public_key,
                       password=receiver.secret_key)


# -- OTLP ingestion: accepted exports ------------------------------------------------------------

def test_an_export_built_from_the_client_types_is_stored_decoded(receiver, api):
    attributes = [
        OtelAttribute(key="langfuse.observation.type", value=OtelAttributeValue(string_value="tool")),
        OtelAttribute(key="langfuse.observation.level", value=OtelAttributeValue(string_value="WARNING")),
        OtelAttribute(key="langfuse.observation.input", value=OtelAttributeValue(string_value='{"cmd": "ls"}')),
        OtelAttribute(key="langfuse.observation.metadata.exit_code", value=OtelAttributeValue(string_value="0")),
        OtelAttribute(key="retries", value=OtelAttributeValue(int_value=2)),
        OtelAttribute(key="ratio", value=OtelAttributeValue(double_value=0.5)),
        OtelAttribute(key="ok", value=OtelAttributeValue(bool_value=True)),
    ]
    otel_span = OtelSpan(trace_id=TRACE, span_id=CHILD, parent_span_id=ROOT, name="ls",
                         start_time_unix_nano=T0, end_time_unix_nano=T0 + 5, attributes=attributes)
    response = api.opentelemetry.export_traces(
        resource_spans=[OtelResourceSpan(scope_spans=[OtelScopeSpan(spans=[otel_span])])],
        request_options=V4)

    assert response.dict() == {}
    (stored,) = receiver.spans()
    assert (stored.trace_id, stored.span_id, stored.parent_span_id) == (TRACE, CHILD, ROOT)
    assert (stored.name, stored.type, stored.level) == ("ls", "tool", "WARNING")
    assert (stored.start_time_unix_nano, stored.end_time_unix_nano) == (T0, T0 + 5)
    assert stored.input == '{"cmd": "ls"}'
    assert stored.metadata == {"exit_code": "0"}
    assert stored.attributes["retries"] == 2 and stored.attributes["ratio"] == 0.5
    assert stored.attributes["ok"] is True
    (request,) = receiver.requests("traces")
    assert request.status == 200 and request.has_v4_header
    assert request.span_ids == [CHILD] and stored.request == request.number


def test_defaults_and_otel_status_error_become_type_span_and_level_error(receiver, api):
    failed = span(CHILD)
    failed["status"] = {"code": 2, "message": "boom"}
    export(api, span(ROOT), failed)

    assert receiver.observation(ROOT).type == "span"
    assert receiver.observation(ROOT).level == "DEFAULT"
    assert receiver.observation(CHILD).level == "ERROR"
    assert receiver.observation(CHILD).status_message == "boom"


def test_usage_and_cost_are_parsed(receiver, api):
    usage = {"input": 70, "input_cached_tokens": 30, "output": 15, "output_reasoning_tokens": 5,
             "total": 120}
    export(api, generation(usage=usage, cost={"input": 0.25, "output": 0.5, "total": 0.75}))

    stored = receiver.observation(ROOT)
    assert stored.usage_details == usage
    assert stored.cost_details == {"input": 0.25, "output": 0.5, "total": 0.75}


def test_a_missing_ingestion_version_header_is_accepted_and_flagged(receiver, api):
    export(api, span(ROOT), options=NO_RETRY)
    export(api, span(CHILD), options=V4)

    first, second = receiver.requests("traces")
    assert (first.status, first.has_v4_header, first.ingestion_version) == (200, False, None)
    assert second.has_v4_header
    assert receiver.observation(ROOT).ingestion_version is None
    assert receiver.observation(CHILD).ingestion_version == "4"


def test_an_ingestion_version_above_4_is_rejected(receiver, api):
    with pytest.raises(Error) as raised:
        export(api, span(), options={"additional_headers": {"x-langfuse-ingestion-version": "5"},
                                     "max_retries": 0})
    assert raised.value.status_code == 400
    assert "x-langfuse-ingestion-version" in raised.value.body["error"]
    assert receiver.spans() == []


def test_an_empty_export_is_accepted(receiver):
    response = post_raw(receiver, OTEL_TRACES_PATH, {"resourceSpans": []})
    assert (response.status_code, response.json()) == (200, {})


def test_a_gzip_body_is_decompressed(receiver):
    body = gzip.compress(json.dumps(export_body(span())).encode())
    response = post_raw(receiver, OTEL_TRACES_PATH, body, {"content-encoding": "gzip"})

    assert response.status_code == 200
    assert [s.span_id for s in receiver.spans()] == [ROOT]
    assert receiver.requests()[0].headers["content-encoding"] == "gzip"


def test_a_corrupt_gzip_body_is_400(receiver):
    response = post_raw(receiver, OTEL_TRACES_PATH, b"not gzip at all", {"content-encoding": "gzip"})
    assert response.status_code == 400
    assert "decompress" in response.json()["error"]
    assert receiver.spans() == []


def test_a_protobuf_body_is_decoded_like_json(receiver):
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

    proto_span = Span(trace_id=bytes.fromhex(TRACE), span_id=bytes.fromhex(CHILD),
                      parent_span_id=bytes.fromhex(ROOT), name="turn",
                      start_time_unix_nano=T0, end_time_unix_nano=T0 + 10,
                      attributes=[KeyValue(key="langfuse.observation.type",
                                           value=AnyValue(string_value="generation"))])
    body = ExportTraceServiceRequest(resource_spans=[ResourceSpans(
        scope_spans=[ScopeSpans(spans=[proto_span])])]).SerializeToString()
    response = post_raw(receiver, OTEL_TRACES_PATH, gzip.compress(body),
                        {"content-type": "application/x-protobuf", "content-encoding": "gzip"})

    assert response.status_code == 200
    stored = receiver.observation(CHILD)
    assert (stored.trace_id, stored.parent_span_id, stored.type) == (TRACE, ROOT, "generation")
    assert (stored.start_time_unix_nano, stored.end_time_unix_nano) == (T0, T0 + 10)


def test_the_opentelemetry_sdk_exporter_is_accepted(receiver):
    """The OTLP/HTTP protobuf exporter the Langfuse SDK itself is built on, with gzip."""
    import base64

    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    token = base64.b64encode(f"{receiver.public_key}:{receiver.secret_key}".encode()).decode()
    exporter = OTLPSpanExporter(endpoint=receiver.base_url + OTEL_TRACES_PATH,
                                compression=Compression.Gzip,
                                headers={"Authorization": f"Basic {token}",
                                         "x-langfuse-ingestion-version": "4"})
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("codex exec") as outer:
        outer.set_attribute("langfuse.observation.type", "agent")
        outer.set_attribute("langfuse.trace.tags", ["ci", "nightly"])
        with tracer.start_as_current_span("turn"):
            pass
    provider.shutdown()

    inner, outer_span = receiver.spans()
    assert outer_span.type == "agent" and outer_span.attributes["langfuse.trace.tags"] == ["ci", "nightly"]
    assert inner.parent_span_id == outer_span.span_id and inner.trace_id == outer_span.trace_id
    assert {r.headers["content-type"] for r in receiver.requests()} == {"application/x-protobuf"}


def test_a_protobuf_span_without_ids_rejects_the_export(receiver):
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

    body = ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(
        spans=[Span(name="log record", start_time_unix_nano=T0, end_time_unix_nano=T0)])])])
    response = post_raw(receiver, OTEL_TRACES_PATH, body.SerializeToString(),
                        {"content-type": "application/x-protobuf"})
    assert response.status_code == 400
    assert "traceId is missing" in response.json()["error"]


def test_undecodable_protobuf_is_400(receiver):
    response = post_raw(receiver, OTEL_TRACES_PATH, b"\xff\xff\xff\xff",
                        {"content-type": "application/x-protobuf"})
    assert response.status_code == 400
    assert receiver.spans() == []


@pytest.mark.parametrize("content_type", ["text/plain", ""])
def test_other_content_types_are_400(receiver, content_type):
    response = post_raw(receiver, OTEL_TRACES_PATH, export_body(span()),
                        {"content-type": content_type})
    assert response.status_code == 400
    assert "content type" in response.json()["error"].lower()
    assert receiver.spans() == []


def test_invalid_json_is_400(receiver):
    response = post_raw(receiver, OTEL_TRACES_PATH, b'{"resourceSpans": [')
    assert response.status_code == 400
    assert receiver.spans() == []


# -- OTLP ingestion: every validation rule rejects the whole export ------------------------------

def without(key):
    return lambda s: {k: v for k, v in s.items() if k != key}


def setting(key, value):
    return lambda s: {**s, key: value}


def with_attribute(key, value):
    """An attribute given as a raw OTLP AnyValue (possibly malformed)."""
    return lambda s: {**s, "attributes": s["attributes"] + [{"key": key, "value": value}]}


def with_attributes(**attributes):
    return lambda s: {**s, "attributes": s["attributes"] + [
        {"key": k.replace("__", "."), "value": any_value(v)} for k, v in attributes.items()]}


def generation_with(usage=None, cost=None, observation_type="generation"):
    def mutate(s):
        attributes = {"langfuse.observation.type": observation_type}
        if usage is not None:
            attributes["langfuse.observation.usage_details"] = json.dumps(usage)
        if cost is not None:
            attributes["langfuse.observation.cost_details"] = json.dumps(cost)
        return {**s, "attributes": [{"key": k, "value": any_value(v)}
                                    for k, v in attributes.items()]}
    return mutate


CONTRACT_RULES = [
    pytest.param(without("traceId"), "traceId is missing", id="trace-id-missing"),
    pytest.param(setting("traceId", TRACE[:30]), "traceId", id="trace-id-short"),
    pytest.param(setting("traceId", TRACE.upper()), "32 lowercase hex", id="trace-id-uppercase"),
    pytest.param(setting("traceId", "0" * 32), "all zeros", id="trace-id-zero"),
    pytest.param(setting("traceId", list(bytes.fromhex(TRACE))), "traceId", id="trace-id-not-string"),
    pytest.param(without("spanId"), "spanId is missing", id="span-id-missing"),
    pytest.param(setting("spanId", "xyz0000000000000"), "16 lowercase hex", id="span-id-not-hex"),
    pytest.param(setting("spanId", "0" * 16), "all zeros", id="span-id-zero"),
    pytest.param(setting("parentSpanId", "abc"), "parentSpanId", id="parent-span-id-bad"),
    pytest.param(without("startTimeUnixNano"), "startTimeUnixNano", id="start-missing"),
    pytest.param(setting("endTimeUnixNano", 1.5e18), "endTimeUnixNano", id="end-float"),
    pytest.param(setting("startTimeUnixNano", "soon"), "startTimeUnixNano", id="start-not-integer"),
    pytest.param(setting("endTimeUnixNano", str(T0 - 1)), "before startTimeUnixNano",
                 id="end-before-start"),
    pytest.param(setting("name", ""), "name must be a non-empty string", id="name-empty"),
    pytest.param(without("name"), "name must be a non-empty string", id="name-missing"),
    pytest.param(setting("attributes", {"langfuse.observation.type": "span"}),
                 "attributes must be an array", id="attributes-as-object"),
    pytest.param(with_attribute("x", {"stringValue": "a", "intValue": 1}), "exactly one",
                 id="any-value-two-fields"),
    pytest.param(with_attribute("x", {"text": "a"}), "unknown AnyValue", id="any-value-unknown"),
    pytest.param(with_attribute("x", {"intValue": "1.5"}), "intValue", id="int-value-not-integer"),
    pytest.param(with_attribute("x", {"stringValue": 3}), "stringValue", id="string-value-number"),
    pytest.param(with_attribute("x", "plain"), "AnyValue", id="any-value-bare"),
    pytest.param(with_attribute("x", {"arrayValue": {"values": [{"boolValue": "yes"}]}}),
                 "boolValue", id="array-element-malformed"),
    pytest.param(with_attributes(langfuse__observation__type="llm"),
                 "langfuse.observation.type", id="observation-type-unknown"),
    pytest.param(with_attributes(langfuse__observation__level="INFO"),
                 "langfuse.observation.level", id="level-unknown"),
    pytest.param(with_attributes(langfuse__observation__usage_details="{input: 3}"),
                 "not valid JSON", id="usage-not-json"),
    pytest.param(with_attributes(langfuse__observation__usage_details='[1, 2]'),
                 "must be a JSON object", id="usage-not-object"),
    pytest.param(generation_with(usage={"input": "3", "total": 3}), "non-negative integers",
                 id="usage-value-string"),
    pytest.param(generation_with(usage={"input": 1.5, "total": 1.5}), "non-negative integers",
                 id="usage-value-fraction"),
    pytest.param(generation_with(cost={"total": -1.0}), "non-negative numbers",
                 id="cost-negative"),
    pytest.param(with_attributes(langfuse__observation__cost_details=0.5),
                 "string holding a JSON object", id="cost-not-string"),
    pytest.param(with_attributes(langfuse__observation__input={"cmd": "ls"}),
                 "langfuse.observation.input must be a string", id="input-not-string"),
    pytest.param(with_attributes(langfuse__observation__output=3),
                 "langfuse.observation.output must be a string", id="output-not-string"),
    pytest.param(with_attributes(langfuse__observation__metadata__exit_code=1),
                 "langfuse.observation.metadata.exit_code must be a string",
                 id="metadata-not-string"),
    pytest.param(with_attributes(langfuse__trace__tags="a,b"), "langfuse.trace.tags",
                 id="tags-not-array"),
    pytest.param(with_attributes(langfuse__trace__tags=["a", 1]), "langfuse.trace.tags",
                 id="tags-not-strings"),
    pytest.param(with_attributes(langfuse__environment="langfuse-prod"), "langfuse.environment",
                 id="environment-reserved"),
    pytest.param(with_attributes(langfuse__environment="Prod"), "langfuse.environment",
                 id="environment-uppercase"),
    pytest.param(with_attributes(langfuse__observation__completion_start_time="yesterday"),
                 "completion_start_time", id="completion-start-not-iso"),
    pytest.param(setting("status", {"code": 7}), "status.code", id="status-code-unknown"),
]

PROJECT_RULES = [
    pytest.param(generation_with(cost={"input": 0.1, "output": 0.2}), "must include 'total'",
                 id="cost-without-total"),
    pytest.param(generation_with(cost={"input": 0.1, "output": 0.2, "total": 0.4}),
                 "cost_details total", id="cost-total-not-sum"),
    pytest.param(generation_with(usage={"input": 10, "output": 5}), "must include 'total'",
                 id="usage-without-total"),
    # Codex reports cached input inside input: sending it as is double-counts the cached part.
    pytest.param(generation_with(usage={"input": 100, "input_cached_tokens": 30, "output": 20,
                                        "total": 120}), "buckets must be exclusive",
                 id="usage-overlapping-buckets"),
    pytest.param(generation_with(usage={"input": 1, "total": 1}, observation_type="tool"),
                 "only generation and embedding", id="usage-on-a-tool"),
]


@pytest.mark.parametrize("mutate, fragment", CONTRACT_RULES + PROJECT_RULES)
def test_each_validation_rule_rejects_with_400_and_stores_nothing(receiver, mutate, fragment):
    response = post_raw(receiver, OTEL_TRACES_PATH, export_body(mutate(span())))

    assert response.status_code == 400
    assert fragment in response.json()["error"]
    assert receiver.spans() == []
    assert receiver.requests("traces")[0].error == response.json()["error"]


def test_one_invalid_span_rejects_the_whole_export_and_is_named(receiver, api):
    bad = span(CHILD, name="bad step", attributes={"langfuse.observation.type": "llm"})

    with pytest.raises(Error) as raised:
        export(api, span(ROOT), bad, span(GRANDCHILD))

    assert raised.value.status_code == 400
    message = raised.value.body["error"]
    assert f"spanId='{CHILD}'" in message and "name='bad step'" in message
    assert "langfuse.observation.type 'llm'" in message
    assert ROOT not in message
    assert receiver.spans() == []
    assert receiver.requests("traces")[0].span_ids == [ROOT, CHILD, GRANDCHILD]


def test_project_rules_can_be_switched_off_and_the_contract_still_holds():
    with LangfuseReceiver(strict_project_rules=False) as relaxed:
        cost_without_total = generation_with(cost={"input": 0.1})(span())
        assert post_raw(relaxed, OTEL_TRACES_PATH, export_body(cost_without_total)).status_code == 200
        bad_type = with_attributes(langfuse__observation__type="llm")(span(CHILD))
        assert post_raw(relaxed, OTEL_TRACES_PATH, export_body(bad_type)).status_code == 400
        assert [s.span_id for s in relaxed.spans()] == [ROOT]


# -- auth ----------------------------------------------------------------------------------------

def test_wrong_keys_are_401_on_every_authenticated_route(receiver):
    wrong = LangfuseAPI(base_url=receiver.base_url, username=receiver.public_key,
                        password="sk-lf-wrong")
    with pytest.raises(UnauthorizedError):
        export(wrong, span())
    with pytest.raises(UnauthorizedError):
        wrong.scores.create(request=[score()], request_options=NO_RETRY)
    with pytest.raises(UnauthorizedError):
        wrong.observations.get_many(trace_id=TRACE, request_options=NO_RETRY)
    assert receiver.spans() == [] and receiver.scores() == []
    assert [r.status for r in receiver.requests()] == [401, 401, 401]
    assert receiver.requests()[0].auth_public_key == receiver.public_key


def test_no_auth_header_is_401_with_a_json_message(receiver):
    response = post_raw(receiver, OTEL_TRACES_PATH, export_body(span()), auth=False)
    assert response.status_code == 401
    assert "Basic auth" in response.json()["message"]
    assert receiver.spans() == []


def test_health_needs_no_auth(receiver):
    response = httpx.get(receiver.base_url + "/api/public/health", timeout=30)
    assert response.status_code == 200
    assert response.json()["status"] == "OK"


def test_an_oversized_body_is_413_and_nothing_is_stored():
    with LangfuseReceiver(max_body_bytes=2_000) as small:
        api = LangfuseAPI(base_url=small.base_url, username=small.public_key,
                          password=small.secret_key)
        big = span(attributes={"langfuse.observation.output": "x" * 5_000})
        with pytest.raises(ApiError) as raised:
            export(api, big)
        assert raised.value.status_code == 413
        assert small.spans() == []
        export(api, span())         # the connection and the receiver are still fine
        assert [s.span_id for s in small.spans()] == [ROOT]


# -- every copy is kept --------------------------------------------------------------------------

def test_duplicates_are_kept_and_visible(receiver, api):
    export(api, span(ROOT), span(CHILD, parent=ROOT))
    export(api, span(ROOT))

    assert [s.span_id for s in receiver.spans()] == [ROOT, CHILD, ROOT]
    assert receiver.duplicates() == {ROOT: 2}
    assert [s.request for s in receiver.spans()] == [1, 1, 2]
    assert receiver.observation(ROOT).request == 1
    listed = api.observations.get_many(trace_id=TRACE, fields="core", request_options=NO_RETRY)
    assert sorted(o.id for o in listed.data) == sorted([ROOT, ROOT, CHILD])


def test_tree_and_spans_by_trace(receiver, api):
    export(api, span(ROOT), span(CHILD, parent=ROOT), span(GRANDCHILD, parent=CHILD),
           span(ROOT, trace_id=OTHER_TRACE))

    assert receiver.tree(TRACE) == {ROOT: None, CHILD: ROOT, GRANDCHILD: CHILD}
    assert [s.span_id for s in receiver.spans_by_trace(OTHER_TRACE)] == [ROOT]
    with pytest.raises(KeyError):
        receiver.observation("1111111111111111")


def test_a_burst_of_concurrent_senders_is_all_recorded(receiver):
    span_ids = [f"{i + 1:016x}" for i in range(64)]
    errors = []

    def send(span_id):
        client = LangfuseAPI(base_url=receiver.base_url, username=receiver.public_key,
                             password=receiver.secret_key)
        try:
            export(client, span(span_id))
        except Exception as error:  # reported below, with the others
            errors.append(repr(error))

    threads = [threading.Thread(target=send, args=(s,)) for s in span_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    assert sorted(s.span_id for s in receiver.spans()) == span_ids
    assert sorted(r.number for r in receiver.requests()) == list(range(1, 65))


# -- scores --------------------------------------------------------------------------------------

def test_valid_scores_are_202_and_parse_as_accepted(receiver, api):
    request = [CreateScoreRequest(id="s-1", name="success", value=1, data_type="BOOLEAN",
                                  trace_id=TRACE, timestamp=DAY),
               CreateScoreRequest(id="s-2", name="files_changed", value=3, trace_id=TRACE,
                                  observation_id=ROOT, timestamp=DAY),
               CreateScoreRequest(id="s-3", name="outcome", value="passed", trace_id=TRACE,
                                  data_type="CATEGORICAL", timestamp=DAY, comment="CI")]
    response = api.scores.create(request=request, request_options=NO_RETRY)

    assert isinstance(response, CreateScoreBatchResponse)
    assert receiver.requests("scores")[0].status == 202
    by_id = {s.id: s for s in receiver.scores()}
    assert by_id["s-1"].value == 1.0 and by_id["s-1"].data_type == "BOOLEAN"
    assert by_id["s-2"].data_type == "NUMERIC" and by_id["s-2"].observation_id == ROOT
    assert by_id["s-3"].value == "passed" and by_id["s-3"].comment == "CI"


def test_a_partly_invalid_batch_is_207_and_stores_only_the_valid_scores(receiver, api):
    response = api.scores.create(
        request=[score("ok"), score("not-boolean", value=2)], request_options=NO_RETRY)

    assert isinstance(response, CreateScoreBatchResults)
    assert (response.accepted, response.rejected) == (1, 1)
    assert "must be 0 or 1" in response.errors[0].message
    assert "not-boolean" in response.errors[0].message
    assert [s.id for s in receiver.scores()] == ["ok"]
    assert receiver.requests("scores")[0].status == 207


@pytest.mark.parametrize("changes, fragment", [
    pytest.param({"traceId": None}, "exactly one of traceId", id="no-target"),
    pytest.param({"sessionId": "thread-1"}, "exactly one of traceId", id="two-targets"),
    pytest.param({"dataType": "PERCENT"}, "dataType", id="data-type-unknown"),
    pytest.param({"dataType": "NUMERIC", "value": "high"}, "must be a number", id="numeric-string"),
    pytest.param({"dataType": "CATEGORICAL", "value": 3}, "must be a string",
                 id="categorical-number"),
    pytest.param({"dataType": "TEXT", "value": "x" * 501}, "1 to 500", id="text-too-long"),
    pytest.param({"name": ""}, "name", id="name-empty"),
    pytest.param({"value": None}, "value is required", id="value-missing"),
    pytest.param({"timestamp": "2025-06-15T12:00:00"}, "timezone", id="timestamp-naive"),
    pytest.param({"environment": "langfuse"}, "environment", id="environment-reserved"),
    pytest.param({"traceId": "run-1"}, "[project rule] traceId", id="trace-id-not-hex"),
    pytest.param({"observationId": "root"}, "[project rule] observationId",
                 id="observation-id-not-hex"),
    pytest.param({"id": None}, "[project rule] id is required", id="id-missing"),
    pytest.param({"timestamp": None}, "[project rule] timestamp is required",
                 id="timestamp-missing"),
])
def test_each_score_rule_rejects_that_score(receiver, api, changes, fragment):
    bad = {k: v for k, v in {**score("bad"), **changes}.items() if v is not None}
    response = api.scores.create(request=[bad], request_options=NO_RETRY)

    assert isinstance(response, CreateScoreBatchResults)
    assert (response.accepted, response.rejected) == (0, 1)
    assert fragment in response.errors[0].message
    assert receiver.scores() == [] and receiver.score_writes() == []


def test_a_score_resent_with_the_same_id_name_and_day_overwrites(receiver, api):
    api.scores.create(request=[score(value=0)], request_options=NO_RETRY)
    api.scores.create(request=[score(value=1, timestamp=(DAY + dt.timedelta(hours=3)).isoformat())],
                      request_options=NO_RETRY)
    api.scores.create(request=[score(value=1, timestamp=(DAY + dt.timedelta(days=1)).isoformat())],
                      request_options=NO_RETRY)

    assert len(receiver.score_writes()) == 3
    current = sorted(receiver.scores(), key=lambda s: s.timestamp)
    assert [(s.value, s.timestamp[:10]) for s in current] == [(1.0, "2025-06-15"),
                                                               (1.0, "2025-06-16")]


def test_without_project_rules_a_score_needs_no_id_or_timestamp():
    with LangfuseReceiver(strict_project_rules=False) as relaxed:
        api = LangfuseAPI(base_url=relaxed.base_url, username=relaxed.public_key,
                          password=relaxed.secret_key)
        response = api.scores.create(request=[{"name": "success", "value": 1, "traceId": "run-1"}],
                                     request_options=NO_RETRY)
        assert isinstance(response, CreateScoreBatchResponse)
        (stored,) = relaxed.scores()
        assert stored.id and stored.data_type == "NUMERIC"


def test_a_single_score_object_gets_the_documented_200_with_its_id(receiver):
    response = post_raw(receiver, SCORES_PATH, score("single"))
    assert (response.status_code, response.json()) == (200, {"id": "single"})
    assert [s.id for s in receiver.scores()] == ["single"]


def test_a_malformed_scores_body_is_400(receiver):
    assert post_raw(receiver, SCORES_PATH, b"[{").status_code == 400
    assert post_raw(receiver, SCORES_PATH, []).status_code == 400
    assert receiver.score_writes() == []


# -- observations listing ------------------------------------------------------------------------

def test_get_many_lists_the_core_fields_of_a_trace(receiver, api):
    export(api, span(ROOT, name="codex exec"),
           span(CHILD, parent=ROOT, start=T0 + 2_000_000, end=T0 + 3_500_000,
                attributes={"langfuse.observation.type": "tool"}),
           span(GRANDCHILD, trace_id=OTHER_TRACE))

    listed = api.observations.get_many(trace_id=TRACE, fields="core", request_options=NO_RETRY)

    by_id = {o.id: o for o in listed.data}
    assert set(by_id) == {ROOT, CHILD}
    child = by_id[CHILD]
    assert (child.trace_id, child.parent_observation_id, child.type) == (TRACE, ROOT, "TOOL")
    assert child.start_time == dt.datetime(2025, 6, 15, 15, 6, 40, 2000, tzinfo=dt.timezone.utc)
    assert child.end_time - child.start_time == dt.timedelta(microseconds=1000)  # ms precision
    assert child.name is None       # `basic` was not asked for
    assert listed.meta.cursor is None
    named = api.observations.get_many(trace_id=TRACE, fields="core,basic", request_options=NO_RETRY)
    assert {o.name for o in named.data} == {"codex exec", "step"}


def test_get_many_pages_with_a_cursor(receiver, api):
    span_ids = [f"{i + 1:016x}" for i in range(5)]
    export(api, *[span(s, start=T0 + i, end=T0 + i) for i, s in enumerate(span_ids)])

    seen, cursor, pages = [], None, 0
    while True:
        page = api.observations.get_many(trace_id=TRACE, fields="core", limit=2, cursor=cursor,
                                         request_options=NO_RETRY)
        seen += [o.id for o in page.data]
        pages += 1
        cursor = page.meta.cursor
        if cursor is None:
            break
    assert sorted(seen) == span_ids and pages == 3


def test_spans_sent_without_the_v4_header_are_not_readable_yet(receiver, api):
    export(api, span(ROOT), options=NO_RETRY)

    listed = api.observations.get_many(trace_id=TRACE, fields="core", request_options=NO_RETRY)
    assert listed.data == []
    assert [s.span_id for s in receiver.spans()] == [ROOT]


def test_get_many_rejects_what_the_server_rejects(receiver, api):
    with pytest.raises(Error) as raised:
        api.observations.get_many(trace_id=TRACE, limit=1001, request_options=NO_RETRY)
    assert raised.value.status_code == 400
    with pytest.raises(Error):
        api.observations.get_many(trace_id=TRACE, fields="core,everything",
                                  request_options=NO_RETRY)
    with pytest.raises(Error):
        api.observations.get_many(trace_id=TRACE, cursor="not-a-cursor", request_options=NO_RETRY)


# -- faults --------------------------------------------------------------------------------------

@pytest.mark.parametrize("status", [500, 502, 503])
def test_a_5xx_fault_answers_the_next_request_then_clears(receiver, api, status):
    receiver.fail("traces", status)

    with pytest.raises(ApiError) as raised:
        export(api, span(ROOT))
    assert raised.value.status_code == status
    export(api, span(CHILD))

    assert [s.span_id for s in receiver.spans()] == [CHILD]
    assert [(r.status, r.fault) for r in receiver.requests()] == [(status, f"status {status}"),
                                                                 (200, None)]


def test_a_fault_for_k_requests_and_only_on_its_route(receiver, api):
    receiver.fail("traces", 503, times=2)

    for _ in range(2):
        with pytest.raises(ApiError):
            export(api, span(ROOT))
    api.scores.create(request=[score()], request_options=NO_RETRY)   # other route unaffected
    export(api, span(ROOT))
    assert [r.status for r in receiver.requests()] == [503, 503, 202, 200]


def test_429_carries_retry_after_seconds_and_the_client_honours_it(receiver, api):
    receiver.fail("traces", 429, retry_after=1)

    with pytest.raises(ApiError) as raised:
        export(api, span(ROOT))
    assert raised.value.status_code == 429
    assert raised.value.headers["retry-after"] == "1"

    receiver.fail("traces", 429, retry_after=1)
    export(api, span(ROOT), options={**V4, "max_retries": 1})   # the client's retry succeeds
    assert [r.status for r in receiver.requests()] == [429, 429, 200]


def test_retry_after_as_an_http_date(receiver, api):
    moment = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    receiver.fail("scores", 429, retry_after=moment)

    with pytest.raises(ApiError) as raised:
        api.scores.create(request=[score()], request_options=NO_RETRY)
    assert raised.value.headers["retry-after"] == "Wed, 02 Jan 2030 03:04:05 GMT"


@pytest.mark.parametrize("status, error_type", [(401, UnauthorizedError), (403, AccessDeniedError),
                                                (413, ApiError)])
def test_permanent_statuses_can_be_injected(receiver, api, status, error_type):
    receiver.fail("traces", status)
    with pytest.raises(error_type) as raised:
        export(api, span())
    assert raised.value.status_code == status
    assert receiver.spans() == []


def test_a_time_window_fault_fails_every_request_until_it_ends(receiver, api):
    receiver.fail("any", 503, for_seconds=600)
    for _ in range(3):
        with pytest.raises(ApiError):
            export(api, span())
    with pytest.raises(ApiError):
        api.observations.get_many(trace_id=TRACE, request_options=NO_RETRY)
    receiver.clear_faults()
    export(api, span())

    receiver.fail("traces", 503, for_seconds=0.2)
    receiver.wait_until(lambda r: _accepted(api), timeout=30)
    assert [r.status for r in receiver.requests()][:5] == [503, 503, 503, 503, 200]
    assert receiver.requests()[-1].status == 200


def _accepted(api):
    try:
        export(api, span(GRANDCHILD))
        return True
    except ApiError:
        return False


def test_a_slow_answer_after_the_client_timeout_with_the_spans_stored(receiver, api):
    receiver.delay("traces", 5, store=True)

    with pytest.raises(httpx.TimeoutException):
        export(api, span(ROOT), options={**V4, "timeout_in_seconds": 0.3})
    receiver.wait_until(lambda r: len(r.requests()) == 1)    # processed on arrival

    assert [s.span_id for s in receiver.spans()] == [ROOT]   # stored, the answer came too late
    listed = api.observations.get_many(trace_id=TRACE, fields="core", request_options=NO_RETRY)
    assert [o.id for o in listed.data] == [ROOT]
    (first, _) = receiver.requests()
    assert (first.status, first.fault) == (200, "delay 5.0s (stored)")


def test_a_slow_answer_after_the_client_timeout_with_nothing_stored(receiver, api):
    receiver.delay("traces", 5, store=False)

    with pytest.raises(httpx.TimeoutException):
        export(api, span(ROOT), options={**V4, "timeout_in_seconds": 0.3})
    receiver.wait_until(lambda r: len(r.requests()) == 1)

    assert receiver.spans() == []
    assert api.observations.get_many(trace_id=TRACE, request_options=NO_RETRY).data == []
    assert receiver.requests()[0].fault == "delay 5.0s (not stored)"


def test_a_delay_within_the_client_timeout_gives_the_real_answer(receiver, api):
    receiver.delay("traces", 0.1, store=True)
    export(api, span(ROOT))
    assert [s.span_id for s in receiver.spans()] == [ROOT]


@pytest.mark.parametrize("store", [False, True])
def test_a_connection_reset_without_an_answer(receiver, api, store):
    receiver.reset_connection("traces", store=store)

    with pytest.raises(httpx.TransportError):
        export(api, span(ROOT))

    assert [s.span_id for s in receiver.spans()] == ([ROOT] if store else [])
    (request,) = receiver.requests()
    assert request.status is None and request.fault.startswith("reset")
    export(api, span(CHILD))        # the next request works on a fresh connection
    assert receiver.spans()[-1].span_id == CHILD


def test_rejected_span_ids_fail_only_the_requests_that_carry_them(receiver, api):
    receiver.reject_spans(CHILD)

    with pytest.raises(Error) as raised:
        export(api, span(ROOT), span(CHILD))
    assert CHILD in raised.value.body["error"] and "reject_spans" in raised.value.body["error"]
    export(api, span(ROOT))
    assert [s.span_id for s in receiver.spans()] == [ROOT]

    receiver.clear_faults()
    export(api, span(CHILD))
    assert [s.span_id for s in receiver.spans()] == [ROOT, CHILD]


def test_down_refuses_connections_then_comes_back_on_the_same_port(receiver, api):
    export(api, span(ROOT))         # leaves a pooled keep-alive connection behind
    port = receiver.port
    receiver.down(1.0)

    with pytest.raises(httpx.ConnectError):
        export(api, span(CHILD))
    receiver.wait_until(lambda r: _healthy(r), timeout=30)
    assert receiver.port == port
    export(api, span(CHILD))
    assert [s.span_id for s in receiver.spans()] == [ROOT, CHILD]


def _healthy(receiver):
    try:
        return httpx.get(receiver.base_url + "/api/public/health", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def test_reset_forgets_everything(receiver, api):
    export(api, span())
    receiver.fail("traces", 503)
    receiver.reset()
    export(api, span(CHILD))
    assert [s.span_id for s in receiver.spans()] == [CHILD]
    assert len(receiver.requests()) == 1


def test_bad_fault_parameters_are_refused(receiver):
    with pytest.raises(ValueError):
        receiver.fail("everything", 503)
    with pytest.raises(ValueError):
        receiver.fail("traces", 200)


# -- lifecycle -----------------------------------------------------------------------------------

def test_stop_releases_the_port_and_a_delayed_request_does_not_hold_it():
    receiver = LangfuseReceiver().start()
    api = LangfuseAPI(base_url=receiver.base_url, username=receiver.public_key,
                      password=receiver.secret_key)
    receiver.delay("traces", 600)
    with pytest.raises(httpx.TimeoutException):
        export(api, span(), options={**V4, "timeout_in_seconds": 0.3})
    receiver.close()

    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", receiver.port))
    with pytest.raises(httpx.ConnectError):
        httpx.get(receiver.base_url + "/api/public/health", timeout=5)


# -- subprocess mode -----------------------------------------------------------------------------

def test_subprocess_mode_is_driven_through_the_control_api(tmp_path):
    state_file = tmp_path / "receiver.jsonl"
    process = ReceiverProcess("pk-lf-sub", "sk-lf-sub", state_file=state_file).start()
    try:
        api = LangfuseAPI(base_url=process.base_url, username="pk-lf-sub", password="sk-lf-sub")
        export(api, span(ROOT))
        api.scores.create(request=[score()], request_options=NO_RETRY)
        assert [s.span_id for s in process.spans()] == [ROOT]
        assert process.observation(ROOT).ingestion_version == "4"
        assert [s.id for s in process.scores()] == ["s-1"]

        process.fail("traces", 503, retry_after=7)
        with pytest.raises(ApiError) as raised:
            export(api, span(CHILD))
        assert raised.value.headers["retry-after"] == "7"
        process.reject_spans(CHILD)
        with pytest.raises(Error):
            export(api, span(CHILD))
        process.clear_faults()
        export(api, span(CHILD), span(ROOT))
        assert process.duplicates() == {ROOT: 2}
        assert [r.status for r in process.requests()] == [200, 202, 503, 400, 200]

        port, pid = process.port, process.pid
        process.kill()              # a crash: what was accepted survives in the state file
        process.start()
        assert process.pid != pid and process.port == port
        assert [s.span_id for s in process.spans()] == [ROOT, CHILD, ROOT]
        assert [s.id for s in process.scores()] == ["s-1"]
        export(api, span(GRANDCHILD))
        assert process.spans()[-1].request == 6   # numbering continues after the restart

        process.down(0.5)
        with pytest.raises(httpx.ConnectError):
            export(api, span(GRANDCHILD))
        process.wait_until(lambda p: _healthy(p), timeout=30)

        process.reset()
        assert process.spans() == [] and process.requests() == []
    finally:
        process.stop()
    assert process.pid is None
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))


def test_subprocess_control_errors_surface_as_value_errors():
    with ReceiverProcess() as process:
        with pytest.raises(ValueError):
            process.delay("nowhere", 1)
        with pytest.raises(ValueError):
            process.fail("traces", 503, times=0)


# -- server profiles: what differs between Langfuse generations ----------------------------------

@pytest.fixture
def server(request):
    """A receiver of the profile given by indirect parametrisation."""
    receiver = LangfuseReceiver(profile=request.param).start()
    try:
        yield receiver
    finally:
        receiver.close()


def api_of(receiver):
    return LangfuseAPI(base_url=receiver.base_url, username=receiver.public_key,
                       password=receiver.secret_key)


@pytest.mark.parametrize("server", ["v4.16", "v3"], indirect=True)
def test_older_servers_refuse_a_list_of_scores_as_the_server_does(server):
    api = api_of(server)
    with pytest.raises(Error) as raised:
        api.scores.create(request=[score()], request_options=NO_RETRY)
    assert raised.value.status_code == 400
    issue = {"expected": "object", "code": "invalid_type", "path": [],
             "message": "Invalid input: expected object, received array"}
    assert raised.value.body == {"message": "Invalid request data", "error": [issue, issue]}
    assert server.score_writes() == []


@pytest.mark.parametrize("server", ["v4.16", "v3"], indirect=True)
def test_older_servers_take_one_score_object_and_ignore_its_timestamp(server):
    before = dt.datetime.now(dt.timezone.utc)
    response = post_raw(server, SCORES_PATH, score("one", timestamp=DAY.isoformat()))
    assert (response.status_code, response.json()) == (200, {"id": "one"})
    (stored,) = server.scores()
    # the body schema has no timestamp: the score gets the time it was received
    assert dt.datetime.fromisoformat(stored.timestamp) >= before
    # a re-send the same day replaces the row, whatever timestamp it carries
    post_raw(server, SCORES_PATH, score("one", value=0, timestamp=(DAY + dt.timedelta(days=3)).isoformat()))
    assert [(s.id, s.value) for s in server.scores()] == [("one", 0.0)]
    assert len(server.score_writes()) == 2


@pytest.mark.parametrize("server", ["v4.16", "v3"], indirect=True)
def test_older_servers_answer_an_invalid_score_object_with_the_validation_issues(server):
    response = post_raw(server, SCORES_PATH, score(value=7))
    assert response.status_code == 400
    assert response.json()["message"] == "Invalid request data"
    assert "0 or 1" in response.json()["error"][0]["message"]


def test_the_latest_server_keeps_the_score_timestamp():
    with LangfuseReceiver(profile="latest") as latest:
        api_of(latest).scores.create(request=[score()], request_options=NO_RETRY)
        assert [s.timestamp for s in latest.scores()] == [DAY.isoformat()]


@pytest.mark.parametrize("server", ["latest", "v4.16"], indirect=True)
def test_v4_servers_list_observations_in_real_time_through_v2(server):
    api = api_of(server)
    export(api, span(ROOT))
    page = api.observations.get_many(trace_id=TRACE, fields="core", request_options=NO_RETRY)
    assert [o.id for o in page.data] == [ROOT]


def test_the_v3_line_has_no_v2_observations_api_and_a_lagging_v1_one():
    with LangfuseReceiver(profile="v3", v1_lag=0.5) as v3:
        api = api_of(v3)
        export(api, span(ROOT), span(CHILD, parent=ROOT))
        with pytest.raises(ApiError) as raised:
            api.observations.get_many(trace_id=TRACE, request_options=NO_RETRY)
        assert raised.value.status_code == 404
        assert raised.value.body["error"] == "LangfuseNotFoundError"
        assert "only available in a Langfuse v4 write mode" in raised.value.body["message"]

        def v1(**params):
            answer = httpx.get(v3.base_url + "/api/public/observations", params=params,
                               auth=(v3.public_key, v3.secret_key), timeout=30)
            return answer.status_code, answer.json()

        status, body = v1(traceId=TRACE)
        assert status == 200 and body["data"] == []   # stored, not readable yet
        v3.wait_until(lambda r: len(v1(traceId=TRACE)[1]["data"]) == 2, timeout=30)
        status, body = v1(traceId=TRACE, limit=1, page=2)
        assert [o["id"] for o in body["data"]] == [CHILD]
        assert body["meta"] == {"page": 2, "limit": 1, "totalItems": 2, "totalPages": 2}
        assert v1(traceId=OTHER_TRACE)[1]["data"] == []
        assert v1(limit=101)[0] == 400
        assert {r.path for r in v3.requests("observations")} == {
            "/api/public/v2/observations", "/api/public/observations"}


def test_a_slow_answer_fault_holds_the_v1_listing_too():
    with LangfuseReceiver(profile="v3", v1_lag=0) as v3:
        v3.delay("observations", 1.5, times=1)
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(v3.base_url + "/api/public/observations", params={"traceId": TRACE},
                      auth=(v3.public_key, v3.secret_key), timeout=0.3)
        (request,) = v3.requests("observations")
        assert request.fault == "delay 1.5s (stored)"


@pytest.mark.parametrize("sent, stored", [
    ("staging", "staging"), ("Staging", "staging"), ("langfuse-prod", "prod"),
    ("LangfuseLangfuse_CI", "ci"), ("ci.nightly", "default"), ("x" * 50, "x" * 40), ("langfuse", "default"),
])
def test_the_environment_is_stored_as_the_server_normalises_it(sent, stored):
    with LangfuseReceiver(profile="v4.16", strict_project_rules=False) as relaxed:
        export(api_of(relaxed), span(ROOT, attributes={"langfuse.environment": sent}))
        assert relaxed.trace(TRACE).environment == stored
        assert relaxed.stored(ROOT).environment == stored
        response = post_raw(relaxed, SCORES_PATH, score(environment=sent))
        assert response.status_code == 200 and relaxed.scores()[0].environment == stored


def test_an_environment_the_server_would_change_breaks_the_project_rule(receiver, api):
    with pytest.raises(Error) as raised:
        export(api, span(ROOT, attributes={"langfuse.environment": "Staging"}))
    assert "[project rule] langfuse.environment 'Staging' is stored by Langfuse as 'staging'" in str(raised.value.body)


def test_what_a_user_sees_metadata_raw_trace_metadata_merged_and_trace_fields_from_the_root(receiver, api):
    root_attributes = {
        "langfuse.trace.name": "codex exec", "user.id": "alice", "session.id": "thread-1",
        "langfuse.trace.tags": ["ci"], "langfuse.environment": "staging", "langfuse.release": "0.169.0",
        "langfuse.observation.input": "the prompt", "langfuse.observation.output": "done",
        "langfuse.observation.metadata.outcome": "completed",
        "langfuse.trace.metadata.run_id": '"run-1"',     # JSON-encoded: kept with its quotes
        "langfuse.trace.metadata.status": "ci",
    }
    child_attributes = {
        "langfuse.observation.metadata.status": "failed",  # the child's own
        "langfuse.trace.metadata.status": "ci",            # replaced by the trace's
        "langfuse.trace.metadata.late": "only-on-a-child",
        "langfuse.trace.name": "renamed", "langfuse.environment": "staging",
        "langfuse.observation.input": "ls",
    }
    export(api, span(ROOT, attributes=root_attributes))
    export(api, span(CHILD, parent=ROOT, name="command", attributes=child_attributes))
    trace = receiver.trace(TRACE)
    assert (trace.name, trace.user_id, trace.session_id, trace.tags, trace.environment, trace.release) == (
        "renamed", "alice", "thread-1", ["ci"], "staging", "0.169.0")   # latest non-empty value wins
    assert (trace.input, trace.output) == ("the prompt", "done")      # the root's, not the child's
    assert trace.metadata["run_id"] == '"run-1"'
    assert trace.metadata["outcome"] == "completed"
    assert "late" not in trace.metadata                               # trace metadata of the root only
    child = trace.observation(CHILD)
    assert child.metadata["status"] == "ci" and child.metadata["late"] == "only-on-a-child"
    # a scope that is not the Langfuse SDK's: the other attributes are copied into metadata
    assert child.metadata["attributes"]["langfuse.trace.name"] == "renamed"
    assert "langfuse.observation.input" not in child.metadata["attributes"]


def test_model_parameters_are_shown_as_the_server_sanitises_them(receiver, api):
    parameters = {"reasoning_effort": "high", "max_tokens": 5, "tools": ["shell"], "stream": True}
    export(api, generation(**{"langfuse.observation.model.parameters": json.dumps(parameters)}))
    assert receiver.stored(ROOT).model_parameters == {
        "reasoning_effort": "high", "max_tokens": 5, "tools": '["shell"]', "stream": "true"}


def test_a_subprocess_receiver_behaves_as_its_profile(tmp_path):
    with ReceiverProcess(profile="v3", v1_lag=0) as process:
        api = api_of(process)
        with pytest.raises(Error):
            api.scores.create(request=[score()], request_options=NO_RETRY)
        assert post_raw(process, SCORES_PATH, score()).status_code == 200
        export(api, span(ROOT, attributes={"langfuse.trace.metadata.k": "v"}))
        assert process.trace(TRACE).metadata["k"] == "v"
        with pytest.raises(ApiError):
            api.observations.get_many(trace_id=TRACE, request_options=NO_RETRY)
        process.set_v1_lag(3600)
        answer = httpx.get(process.base_url + "/api/public/observations", params={"traceId": TRACE},
                           auth=(process.public_key, process.secret_key), timeout=30)
        assert answer.json()["data"] == []
        assert process.profile.name == "v3" and process.v1_lag == 3600
