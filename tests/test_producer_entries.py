"""The wire contract (README "Stream entry format") as the producer writes it."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

import codex_langfuse.producer as producer
from codex_langfuse.producer.entries import (
    decode_fields, encode_json, entry_fields, is_valid_run_id, new_instance_id, new_run_id, strip_line_ending, trace_id,
)


@pytest.mark.parametrize("run_id", ["run-1", "0b6c3c1e-2f7a-4c1b-9d2e-1f0a9b8c7d6e", "a", "x" * 128, "A.b_c:d-9"])
def test_trace_id_equals_langfuse_create_trace_id(run_id):
    from langfuse import Langfuse  # the test may import langfuse; the producer never does

    assert trace_id(run_id) == Langfuse.create_trace_id(seed=run_id)
    assert len(trace_id(run_id)) == 32 and trace_id(run_id) == trace_id(run_id).lower()


def test_package_exports_the_names_the_ingest_side_imports():
    assert producer.DEFAULT_STREAM == "codex-langfuse:events"
    assert producer.ENTRY_VERSION == "1"
    assert producer.KINDS == ("start", "line", "meta", "score", "end")
    assert producer.END_REASONS == ("exited", "eof", "closed")
    assert producer.trace_id is trace_id


@pytest.mark.parametrize("run_id,valid", [
    ("abc", True), ("a" * 128, True), ("a" * 129, False), ("", False), ("has space", False),
    ("slash/no", False), ("ünï", False), (None, False), (123, False), ("ok.:_-", True),
])
def test_run_id_rule(run_id, valid):
    assert is_valid_run_id(run_id) is valid


def test_line_endings_are_stripped_once():
    assert strip_line_ending(b"a\n") == b"a"
    assert strip_line_ending(b"a\r\n") == b"a"
    assert strip_line_ending(b"a\r") == b"a\r"
    assert strip_line_ending(b"a\n\n") == b"a\n"
    assert strip_line_ending(b"") == b""


def test_entry_fields_are_the_contract_and_decode_back():
    fields = entry_fields("r1", 7, "line", b"\xff\x00raw", ts=1_700_000_000_123_456, trunc=99, inst="0123456789abcdef")
    assert fields == {"v": "1", "run": "r1", "seq": "7", "ts": "1700000000123456", "kind": "line",
                      "data": b"\xff\x00raw", "trunc": "99", "inst": "0123456789abcdef"}
    as_read_from_redis = {key.encode(): value if isinstance(value, bytes) else value.encode() for key, value in fields.items()}
    assert decode_fields(as_read_from_redis) == {
        "v": "1", "run": "r1", "seq": 7, "ts": 1_700_000_000_123_456, "kind": "line", "data": b"\xff\x00raw", "trunc": 99,
        "inst": "0123456789abcdef",
    }
    without_optional_fields = entry_fields("r1", 0, "start", b"{}", ts=1)
    assert "trunc" not in without_optional_fields and "inst" not in without_optional_fields
    as_read_from_redis = {key.encode(): value if isinstance(value, bytes) else value.encode()
                          for key, value in without_optional_fields.items()}
    assert decode_fields(as_read_from_redis)["inst"] is None  # optional for producers in other languages


def test_instance_ids_are_16_random_lowercase_hex():
    ids = {new_instance_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(re.fullmatch(r"[0-9a-f]{16}", value) for value in ids)


def test_json_data_is_compact_utf8_and_never_fails_on_odd_values():
    assert encode_json({"prompt": "héllo", "n": 1}) == '{"prompt":"héllo","n":1}'.encode()
    # a lone surrogate (from surrogateescape-decoded argv) becomes U+FFFD instead of raising
    assert json.loads(encode_json({"p": "a\udcff"})) == {"p": "a\ufffd"}
    assert json.loads(encode_json({"when": object})) == {"when": str(object)}
    with pytest.raises(ValueError):
        encode_json({"score": float("nan")})  # not JSON: refused (callers count it)


def test_decode_fields_rejects_entries_that_break_the_contract():
    with pytest.raises(ValueError):
        decode_fields({b"v": b"1", b"run": b"r", b"kind": b"line", b"data": b"x"})  # no seq, no ts


def test_importing_the_producer_pulls_in_nothing_heavy():
    """The producer lives inside arbitrary runners: standard library and redis only."""
    code = (
        "import json, sys, tempfile\n"
        "import codex_langfuse.producer as producer, codex_langfuse.producer.cli, codex_langfuse.producer.codex_args, codex_langfuse.producer.spool, codex_langfuse.producer.sender\n"
        "loaded_at_import = sorted(sys.modules)\n"
        # also after actually sending (Redis refused -> spool), which imports redis on the sender thread
        "p = producer.Producer(redis_url='redis://127.0.0.1:9/0', spool_dir=tempfile.mkdtemp())\n"
        "run = p.start_run(); run.emit('x'); run.finish(0)\n"
        "assert p.close(10), p.stats()\n"
        "print(json.dumps([loaded_at_import, sorted(sys.modules)]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    at_import, after_sending = json.loads(result.stdout)
    forbidden = ("pydantic", "rq", "langfuse", "httpx")

    def roots(modules):
        return {name.split(".")[0] for name in modules}

    assert not roots(at_import) & {*forbidden, "redis", "opentelemetry"}, "import producer must stay light"
    assert "redis" in roots(after_sending)
    assert not roots(after_sending) & set(forbidden)


def test_version_matches_the_installed_distribution():
    from importlib.metadata import version

    assert producer.__version__ == version("codex-langfuse")


def test_default_run_ids_are_version_4_uuids_in_their_usual_spelling():
    import uuid

    ids = [new_run_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    for run_id in ids:
        parsed = uuid.UUID(run_id)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == run_id
