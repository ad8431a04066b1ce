"""Observations as OTLP/JSON spans (ingest/otlp.py) and the content policy (ingest/content.py).

Attribute names are Langfuse's own (`LangfuseOtelSpanAttributes`), values as the server reads them:
input/output and metadata values raw when a string and JSON otherwise (the server stores metadata
raw and filters compare the raw text), usage and cost as JSON objects with `total`. Trace metadata
on the run's root only (the server merges it into each span's own metadata and reads the trace's
from the root); name, user, session, tags, release and environment on every span.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from langfuse import Langfuse
from langfuse import LangfuseOtelSpanAttributes as A

from codex_langfuse.ingest.content import ContentPolicy
from codex_langfuse.ingest.fold import FoldContext, FoldResult, fold, new_state
from codex_langfuse.ingest.observations import Observation
from codex_langfuse.ingest.items import Span
from codex_langfuse.ingest.otlp import encode_span, export_body
from codex_langfuse.ingest.pricing import PriceTable
from tests.support.runs import DEFAULT_RUN_ID, fixture_entries, fixture_lines, run_entries

RUN = DEFAULT_RUN_ID
CTX = FoldContext(prices=PriceTable.load())
META = {"name": "nightly fix", "model": "gpt-5-codex", "user_id": "alice", "session_id": "session-7",
        "tags": ["ci", "nightly"], "environment": "staging", "codex_version": "0.169.0", "prompt": "Fix the build",
        "metadata": {"ticket": "ABC-1", "attempt": 2}}
TRACE_KEYS = (A.TRACE_NAME, A.TRACE_USER_ID, A.TRACE_SESSION_ID, A.TRACE_TAGS, A.ENVIRONMENT, A.RELEASE)


def attributes(span: dict[str, Any]) -> dict[str, Any]:
    """key -> string value, or list of strings for an array value; each key exactly once."""
    found: dict[str, Any] = {}
    for attribute in span["attributes"]:
        assert attribute["key"] not in found, attribute["key"]
        value = attribute["value"]
        assert len(value) == 1, value
        if "arrayValue" in value:
            found[attribute["key"]] = [v["stringValue"] for v in value["arrayValue"]["values"]]
        else:
            found[attribute["key"]] = value["stringValue"]
    return found


def fold_fixture(name: str, meta: dict | None = None, **options: Any) -> FoldResult:
    return fold(new_state(RUN), fixture_entries(name, meta=META if meta is None else meta, **options), CTX)


def spans_of(result: FoldResult, policy: ContentPolicy | None = None) -> list[tuple[Observation, dict]]:
    policy = policy or ContentPolicy()
    return [(o, encode_span(o, policy)) for o in result.observations]


def decoded_io(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# ---- span shape ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["real_run_0.169.0_full.jsonl", "real_run_0.169.0_turn_failed.jsonl",
                                  "real_run_0.169.0_command_failed.jsonl", "real_run_v0.42.0_json.jsonl"])
def test_every_span_carries_what_langfuse_reads(name):
    result = fold_fixture(name)
    trace_id = Langfuse.create_trace_id(seed=RUN)
    for obs, span in spans_of(result):
        assert span["traceId"] == trace_id
        assert re.fullmatch(r"[0-9a-f]{16}", span["spanId"]) and span["spanId"] == obs.id
        assert span["name"] == obs.name
        # nanoseconds as decimal strings (OTLP/JSON encodes 64-bit integers as strings)
        assert span["startTimeUnixNano"] == str(obs.start_us * 1000)
        assert span["endTimeUnixNano"] == str(obs.end_us * 1000)
        assert int(span["startTimeUnixNano"]) <= int(span["endTimeUnixNano"])
        if obs.parent_id is None:
            assert "parentSpanId" not in span
        else:
            assert span["parentSpanId"] == obs.parent_id
        found = attributes(span)
        assert found[A.OBSERVATION_TYPE] == obs.type
        assert found[A.OBSERVATION_LEVEL] == obs.level
        # trace-level attributes on every span, so any span can create the trace
        assert found[A.TRACE_NAME] == "nightly fix"
        assert found[A.TRACE_USER_ID] == "alice"
        assert found[A.TRACE_SESSION_ID] == "session-7"
        assert found[A.TRACE_TAGS] == ["ci", "nightly"]
        assert found[A.ENVIRONMENT] == "staging"
        assert found[A.RELEASE] == "0.169.0"
        if obs.parent_id is None:  # the run's root alone carries the trace's metadata
            assert found[f"{A.TRACE_METADATA}.ticket"] == "ABC-1"  # a string as itself
            assert found[f"{A.TRACE_METADATA}.attempt"] == "2"  # anything else as JSON
            assert found[f"{A.TRACE_METADATA}.run_id"] == RUN
        else:
            assert not [key for key in found if key.startswith(A.TRACE_METADATA)]
        for key, value in obs.metadata.items():
            if value is None:  # like the SDK: a None is not written
                assert f"{A.OBSERVATION_METADATA}.{key}" not in found
            else:
                assert found[f"{A.OBSERVATION_METADATA}.{key}"] == decoded_io(value), key
        if obs.input is not None:
            assert found[A.OBSERVATION_INPUT] == decoded_io(obs.input)
        else:
            assert A.OBSERVATION_INPUT not in found
        if obs.output is not None:
            assert found[A.OBSERVATION_OUTPUT] == decoded_io(obs.output)
        else:
            assert A.OBSERVATION_OUTPUT not in found
        if obs.status_message:
            assert found[A.OBSERVATION_STATUS_MESSAGE] == obs.status_message
        if obs.level == "ERROR":
            assert span["status"] == {"code": 2, "message": obs.status_message}  # OTel STATUS_CODE_ERROR
        else:
            assert "status" not in span


def test_strings_are_sent_raw_and_structures_as_json():
    result = fold_fixture("real_run_0.169.0_mcp_tool_call.jsonl")
    spans = {obs.name: attributes(span) for obs, span in spans_of(result)}
    assert spans["nightly fix"][A.OBSERVATION_INPUT] == "Fix the build"  # root: the prompt, not '"Fix the build"'
    assert spans["agent_message"][A.OBSERVATION_OUTPUT] == "The MCP tool answered."
    assert json.loads(spans["echo.say"][A.OBSERVATION_INPUT]) == {"text": "hi from mock"}
    assert json.loads(spans["echo.say"][A.OBSERVATION_OUTPUT])["structured_content"] == {"echoed": "hi from mock"}


def test_generation_model_usage_and_cost():
    result = fold_fixture("real_run_0.169.0_full.jsonl")
    (obs, span), = [(o, s) for o, s in spans_of(result) if o.type == "generation"]
    found = attributes(span)
    assert found[A.OBSERVATION_MODEL] == "gpt-5-codex"
    usage = json.loads(found[A.OBSERVATION_USAGE_DETAILS])
    assert usage == {"input": 6000 - 3200, "input_cached_tokens": 3200, "output": 260 - 100,
                     "output_reasoning_tokens": 100, "total": 6000 + 260}
    cost = json.loads(found[A.OBSERVATION_COST_DETAILS])
    assert cost["total"] == pytest.approx((2800 * 1.25 + 3200 * 0.125 + 260 * 10.00) / 1e6, abs=1e-9)
    assert cost == obs.cost_details


def test_unpriced_generation_sends_usage_without_cost():
    result = fold_fixture("real_run_0.169.0_full.jsonl", meta=META | {"model": "mock-model"})
    (_, span), = [(o, s) for o, s in spans_of(result) if o.type == "generation"]
    found = attributes(span)
    assert found[A.OBSERVATION_MODEL] == "mock-model"
    assert json.loads(found[A.OBSERVATION_USAGE_DETAILS])["total"] == 6260
    assert A.OBSERVATION_COST_DETAILS not in found  # an explicit cost would stop Langfuse inferring one


def test_only_generations_carry_model_usage_and_cost():
    for obs, span in spans_of(fold_fixture("real_run_0.169.0_full.jsonl")):
        if obs.type != "generation":
            found = attributes(span)
            for key in (A.OBSERVATION_MODEL, A.OBSERVATION_USAGE_DETAILS, A.OBSERVATION_COST_DETAILS):
                assert key not in found, (obs.name, key)


def test_exit_code_is_trace_metadata_on_the_root():
    result = fold_fixture("real_run_0.169.0_turn_failed.jsonl", exit_code=1)
    root = next(attributes(s) for o, s in spans_of(result) if o.type == "agent")
    assert json.loads(root[f"{A.TRACE_METADATA}.exit_code"]) == 1


def test_optional_trace_attributes_are_left_out_when_unknown():
    result = fold_fixture("real_run_0.169.0_mcp_tool_call.jsonl", meta={})
    for _, span in spans_of(result):
        found = attributes(span)
        assert found[A.TRACE_NAME] == "codex exec"
        assert found[A.TRACE_SESSION_ID] == "01a2139f-c97b-70f3-a6a7-1a727f921859"  # the thread id
        for key in (A.TRACE_USER_ID, A.TRACE_TAGS, A.ENVIRONMENT, A.RELEASE):
            assert key not in found


def test_the_export_body_carries_each_span_as_it_was_encoded():
    result = fold_fixture("real_run_0.169.0_full.jsonl")
    spans = [span for _, span in spans_of(result)]
    encoded = [Span.encode(span) for span in spans]
    body = json.loads(export_body(encoded))["resourceSpans"]
    assert len(body) == 1
    (scope,) = body[0]["scopeSpans"]
    assert scope["spans"] == spans
    assert scope["scope"]["name"] == "codex-langfuse"
    assert {"key": "service.name", "value": {"stringValue": "codex-langfuse"}} in body[0]["resource"]["attributes"]
    for span, item in zip(spans, encoded):
        assert (item.span_id, item.trace_id, item.end_ns()) == (span["spanId"], span["traceId"],
                                                                int(span["endTimeUnixNano"]))
        assert item.decode() == span
    assert json.loads(export_body([])) == {"resourceSpans": [{"resource": body[0]["resource"],
                                                              "scopeSpans": [{"scope": scope["scope"], "spans": []}]}]}


# ---- content policy: secrets --------------------------------------------------------------------

# (kind, text as it would appear in a command or its output, the part that must not leave the worker)
SECRETS = [
    ("openai_key", "export OPENAI_API_KEY=sk-proj-Ab12Cd34Ef56Gh78Ij90Kl12Mn34", "Ab12Cd34Ef56Gh78Ij90Kl12Mn34"),
    ("openai_key_bare", "key sk-Zx98Yw76Vu54Ts32Rq10Po98", "Zx98Yw76Vu54Ts32Rq10Po98"),
    ("github_token", "git push https://x@github.com ghp_R4nd0mT0k3nV4lu3F0rT3st1ngPurp0s3s", "R4nd0mT0k3nV4lu3F0rT3st1ng"),
    ("github_pat", "GH github_pat_11AAAAAAA0bCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdefgh", "0bCdEfGhIjKlMnOpQrStUvWxYz"),
    ("aws_access_key_id", "aws configure set aws_access_key_id AKIAIOSFODNN7EXAMPLE", "IOSFODNN7EXAMPLE"),
    ("aws_secret_key", "aws_secret_access_key=wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY", "wJalrXUtnFEMIK7MDENGbPxRfiCY"),
    ("bearer_token", "curl -H 'Authorization: Bearer 9f8e7d6c5b4a39281706f5e4d3c2b1a0' https://api", "9f8e7d6c5b4a3928"),
    ("private_key", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU\n-----END OPENSSH PRIVATE KEY-----",
     "b3BlbnNzaC1rZXktdjEAAAAABG5vbmU"),
    ("url_password", "git clone https://deploy:Sup3rS3cretPw@git.example.com/repo.git", "Sup3rS3cretPw"),
    ("password_assignment", "mysql --user=root password=hunter2hunter2 -e 'select 1'", "hunter2hunter2"),
    ("env_assignment", "DB_PASSWORD='c0rrect-h0rse' ./migrate", "c0rrect-h0rse"),
]


def run_with_secret(text: str) -> FoldResult:
    """A run where `text` appears in every place content can come from."""
    lines = [
        {"type": "thread.started", "thread_id": "t-secret"},
        {"type": "turn.started"},
        {"type": "item.completed", "item": {"id": "item_0", "type": "reasoning", "text": f"I will run {text}"}},
        {"type": "item.started", "item": {"id": "item_1", "type": "command_execution", "command": text,
                                          "aggregated_output": "", "exit_code": None, "status": "in_progress"}},
        {"type": "item.completed", "item": {"id": "item_1", "type": "command_execution", "command": text,
                                            "aggregated_output": f"echoed: {text}\n", "exit_code": 1,
                                            "status": "failed", "new_field": text}},
        {"type": "item.completed", "item": {"id": "item_2", "type": "mcp_tool_call", "server": "db", "tool": "query",
                                            "arguments": {"sql": text}, "result": None,
                                            "error": {"message": f"failed: {text}"}, "status": "failed"}},
        {"type": "future.event", "payload": text},
        {"type": "error", "message": f"warning about {text}"},
        {"type": "item.completed", "item": {"id": "item_3", "type": "agent_message", "text": f"Done with {text}"}},
        {"type": "turn.failed", "error": {"message": f"provider said {text}"}},
    ]
    entries = run_entries([json.dumps(line) for line in lines], exit_code=1,
                          meta={"prompt": f"Please use {text}", "model": "gpt-5-codex",
                                "metadata": {"note": f"runner note {text}"}})
    return fold(new_state(RUN), entries, CTX)


@pytest.mark.parametrize(("kind", "text", "secret"), SECRETS, ids=[s[0] for s in SECRETS])
def test_secrets_are_redacted_everywhere(kind, text, secret):
    assert secret in text
    result = run_with_secret(text)
    raw = json.dumps([o.model_dump() for o in result.observations])
    assert secret in raw  # the observations carry it; only the encoder may remove it
    spans = [span for _, span in spans_of(result)]
    sent = json.dumps(spans, ensure_ascii=False)
    assert secret not in sent
    assert "[REDACTED" in sent
    # it was redacted in each kind of field, not dropped with the field
    kinds = {A.OBSERVATION_INPUT, A.OBSERVATION_OUTPUT, A.OBSERVATION_STATUS_MESSAGE,
             f"{A.OBSERVATION_METADATA}.extra_fields", f"{A.TRACE_METADATA}.note"}
    redacted_in = {key for span in spans for key, value in attributes(span).items()
                   if isinstance(value, str) and "[REDACTED" in value}
    assert kinds <= redacted_in, kinds - redacted_in
    for span in spans:
        if "status" in span:
            assert secret not in span["status"]["message"]


def test_redaction_keeps_the_surrounding_text():
    policy = ContentPolicy()
    assert policy.redact_text("export OPENAI_API_KEY=sk-proj-Ab12Cd34Ef56Gh78Ij90Kl12Mn34 && make") == \
        "export OPENAI_API_KEY=[REDACTED:openai_key] && make"
    assert policy.redact_text("git clone https://deploy:Sup3rS3cretPw@git.example.com/r.git") == \
        "git clone https://[REDACTED:url_password]@git.example.com/r.git"
    assert policy.redact_text("password=hunter2hunter2 rest") == "password=[REDACTED] rest"
    assert policy.redact_text("nothing secret in ls -la /tmp") == "nothing secret in ls -la /tmp"


@pytest.mark.parametrize(("key", "secret"), [("api_key", "abcd1234efgh5678"), ("password", "hunter2hunter2"),
                                             ("DB_PASSWORD", "c0rrect-h0rse"), ("client_secret", "0a1b2c3d4e5f6a7b")])
def test_secrets_under_secret_named_keys_are_redacted(key, secret):
    lines = [
        {"type": "thread.started", "thread_id": "t-1"}, {"type": "turn.started"},
        {"type": "item.completed", "item": {"id": "item_0", "type": "mcp_tool_call", "server": "db", "tool": "connect",
                                            "arguments": {"host": "db", key: secret}, "result": None, "error": None,
                                            "status": "completed"}},
        {"type": "turn.completed", "usage": {"input_tokens": 10, "cached_input_tokens": 0, "output_tokens": 1}},
    ]
    entries = run_entries([json.dumps(line) for line in lines], meta={"metadata": {key: secret}})
    sent = json.dumps([span for _, span in spans_of(fold(new_state(RUN), entries, CTX))])
    assert secret not in sent


def test_redaction_can_be_turned_off_and_extended():
    text = "token ghp_R4nd0mT0k3nV4lu3F0rT3st1ngPurp0s3s and ticket INTERNAL-12345"
    result = run_with_secret(text)
    plain = json.dumps([span for _, span in spans_of(result, ContentPolicy(redact=False))])
    assert "ghp_R4nd0mT0k3nV4lu3F0rT3st1ngPurp0s3s" in plain
    custom = json.dumps([span for _, span in spans_of(result, ContentPolicy(extra_patterns=[r"INTERNAL-\d+"]))])
    assert "INTERNAL-12345" not in custom and "[REDACTED:custom_0]" in custom
    assert "ghp_R4nd0mT0k3nV4lu3F0rT3st1ngPurp0s3s" not in custom


# ---- content policy: capture off and caps ---------------------------------------------------------


@pytest.mark.parametrize("name", ["real_run_0.169.0_full.jsonl", "real_run_0.169.0_mcp_tool_call.jsonl",
                                  "real_run_v0.42.0_json.jsonl"])
def test_capture_off_sends_no_input_or_output(name):
    result = fold_fixture(name)
    assert any(o.input is not None for o in result.observations)
    for obs, span in spans_of(result, ContentPolicy(capture=False)):
        found = attributes(span)
        assert A.OBSERVATION_INPUT not in found and A.OBSERVATION_OUTPUT not in found
        # structure and numbers still go
        assert found[A.OBSERVATION_TYPE] == obs.type
        if obs.usage_details is not None:
            assert json.loads(found[A.OBSERVATION_USAGE_DETAILS]) == obs.usage_details
        if obs.cost_details is not None:
            assert A.OBSERVATION_COST_DETAILS in found
        # and no paths or fields passed through unread
        leaked = [key for key in found if key.rsplit(".", 1)[-1] in ("files_changed", "extra_fields", "cwd")]
        assert leaked == []
        assert not any("/home/dev/project" in str(value) for value in found.values())


def test_caps_apply_to_inputs_outputs_and_metadata():
    limit = 200
    long_output = "".join(f"row {n:05d}\n" for n in range(1000))  # 10,000 characters
    lines = fixture_lines("real_run_0.169.0_full.jsonl")
    done = json.loads(lines[5])
    done["item"] |= {"aggregated_output": long_output, "new_field": "z" * 1000}
    lines[5] = json.dumps(done)
    result = fold(new_state(RUN), run_entries(lines, meta={"prompt": "p" * 1000, "metadata": {"big": "m" * 1000}}),
                  FoldContext(prices=CTX.prices, max_output_chars=50_000))
    assert any(o.output == long_output for o in result.observations)  # the fold kept it whole
    for obs, span in spans_of(result, ContentPolicy(max_field_chars=limit)):
        for key, value in attributes(span).items():
            if isinstance(value, str) and key not in (A.OBSERVATION_USAGE_DETAILS, A.OBSERVATION_COST_DETAILS):
                assert len(value) <= limit + len("…[99999 characters cut]"), (obs.name, key, len(value))
        found = attributes(span)
        if obs.name == "command":
            assert found[A.OBSERVATION_OUTPUT].startswith(long_output[:limit])
            assert "characters cut]" in found[A.OBSERVATION_OUTPUT]
            assert "characters cut]" in found[f"{A.OBSERVATION_METADATA}.extra_fields"]
        if obs.type == "agent":
            assert found[A.OBSERVATION_INPUT].startswith("p" * limit)
            assert "characters cut]" in found[f"{A.TRACE_METADATA}.big"]


def test_cap_leaves_short_values_alone():
    policy = ContentPolicy(max_field_chars=10)
    assert policy.cap("0123456789") == "0123456789"
    assert policy.clean({"a": ["short", 5, None]}) == {"a": ["short", 5, None]}
    assert ContentPolicy(max_field_chars=0).cap("x" * 100_000) == "x" * 100_000  # 0: no cap


def test_cut_marker_counts_the_characters_really_cut():
    limit = 40
    lines = fixture_lines("real_run_0.169.0_mcp_tool_call.jsonl")
    entries = run_entries(lines, meta={"prompt": "q" * 100})
    root = next(o for o in fold(new_state(RUN), entries, CTX).observations if o.type == "agent")
    found = attributes(encode_span(root, ContentPolicy(max_field_chars=limit)))
    assert found[A.OBSERVATION_INPUT] == "q" * limit + f"…[{100 - limit} characters cut]"


# ---- model parameters; a run in its caller's trace ---------------------------------------------------


def test_model_parameters_are_a_json_object_on_generations():
    parameters = {"reasoning_effort": "high", "service_tier": "flex"}
    result = fold_fixture("real_run_0.169.0_full.jsonl", meta=META | {"model_parameters": parameters})
    for obs, span in spans_of(result):
        found = attributes(span)
        if obs.type == "generation":
            assert json.loads(found[A.OBSERVATION_MODEL_PARAMETERS]) == parameters
        else:
            assert A.OBSERVATION_MODEL_PARAMETERS not in found


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize("set_trace", [False, True])
def test_a_joined_run_encodes_into_the_callers_trace(set_trace):
    meta = META | {"parent": TRACEPARENT, "set_trace_attributes": set_trace}
    spans = spans_of(fold_fixture("real_run_0.169.0_full.jsonl", meta=meta))
    for obs, span in spans:
        found = attributes(span)
        assert span["traceId"] == "0af7651916cd43dd8448eb211c80319c"
        assert found[A.TRACE_USER_ID] == "alice" and found[A.ENVIRONMENT] == "staging"  # still on every span
        assert (A.TRACE_NAME in found) == set_trace
        if obs.type == "agent":
            assert span["parentSpanId"] == "b7ad6b7169203331"
            assert (f"{A.TRACE_METADATA}.ticket" in found) == set_trace
            assert ("langfuse.trace.input" in found) == set_trace
            if not set_trace:  # the run's metadata is then its root's own
                assert found[f"{A.OBSERVATION_METADATA}.ticket"] == "ABC-1"
        else:
            assert not [key for key in found if key.startswith(A.TRACE_METADATA) or key.startswith("langfuse.trace.in")]
