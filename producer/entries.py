"""The stream entry format (README "Stream entry format"): names, trace ids and field encoding.

The ingest side imports these names, so there is one definition of the wire contract.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from typing import Any, Mapping

ENTRY_VERSION = "1"
DEFAULT_STREAM = "codex-langfuse:events"

KIND_START = "start"
KIND_LINE = "line"
KIND_META = "meta"
KIND_SCORE = "score"
KIND_END = "end"
KINDS = (KIND_START, KIND_LINE, KIND_META, KIND_SCORE, KIND_END)

END_REASON_EXITED = "exited"
END_REASON_EOF = "eof"
END_REASON_CLOSED = "closed"
END_REASONS = (END_REASON_EXITED, END_REASON_EOF, END_REASON_CLOSED)

SCORE_DATA_TYPES = ("NUMERIC", "BOOLEAN", "CATEGORICAL", "TEXT")

# the `end` entry's optional "stderr": at most the last this many characters of Codex's stderr
STDERR_MAX_CHARS = 8192

# keys of a `start` entry's data (every one optional; unknown keys are kept by the ingest side)
START_KEYS = (
    "name", "model", "user_id", "session_id", "tags", "metadata", "environment",
    "prompt", "cwd", "codex_version", "producer", "model_parameters", "parent", "set_trace_attributes",
)

RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")

# field names of a stream entry
F_VERSION, F_RUN, F_SEQ, F_TS, F_KIND, F_DATA, F_TRUNC = "v", "run", "seq", "ts", "kind", "data", "trunc"
# optional: the run instance, 16 lowercase hex characters drawn at random per start of a run, the
# same on all its entries, so two runs that reuse one run id can be told apart
F_INST = "inst"
# Lines up to this many times the line limit are shrunk as JSON (their long strings cut, so
# the line still parses and the item it completes keeps its exit code); longer ones are cut.
SHRINKABLE_FACTOR = 16

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def trace_id(run_id: str) -> str:
    """Langfuse trace id of a run: first 16 bytes of sha256(run_id), 32 lowercase hex characters.

    Equal to `Langfuse.create_trace_id(seed=run_id)`.
    """
    return hashlib.sha256(run_id.encode("utf-8")).digest()[:16].hex()


# W3C trace context, version 00 (https://www.w3.org/TR/trace-context/#traceparent-header): later
# versions may append fields after the flags, which a version-00 parser ignores.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
# Langfuse's environment rule (server: `PublicEnvironmentName` in ingestion/types.ts).
_ENVIRONMENT_PREFIX = re.compile(r"^(?:langfuse[-_]?)+")
_ENVIRONMENT = re.compile(r"[a-z0-9_-]+")
ENVIRONMENT_RULE = ("only a-z, 0-9, '_' and '-' once it is lowercased, a leading 'langfuse' removed and "
                    "cut to 40 characters")


def parse_traceparent(value: object) -> tuple[str, str] | None:
    """(trace id, parent span id) of a W3C `traceparent` value, or None when it is not one (an
    invalid version, all-zero ids, uppercase hex, a version-00 value with extra fields)."""
    if not isinstance(value, str):
        return None
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None:
        return None
    version, trace, span, _flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or set(trace) == {"0"} or set(span) == {"0"}:
        return None
    return trace, span


def normalize_environment(value: str) -> str:
    """The environment as Langfuse stores it: lowercased, every leading `langfuse` (with an optional
    `-` or `_`) removed, cut to 40 characters. ValueError when what is left is not made of
    [a-z0-9_-]: Langfuse would silently store `default` instead."""
    normalized = _ENVIRONMENT_PREFIX.sub("", str(value).lower())[:40]
    if not _ENVIRONMENT.fullmatch(normalized):
        raise ValueError(f"environment {value!r} cannot be used: Langfuse keeps {ENVIRONMENT_RULE}, "
                         "and would store it as 'default'")
    return normalized


def is_valid_run_id(run_id: object) -> bool:
    return isinstance(run_id, str) and RUN_ID_PATTERN.fullmatch(run_id) is not None


# What an `inst` may be: this producer sends 16 lowercase hex; the back end takes anything key-safe.
INST_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")


def new_instance_id() -> str:
    """The `inst` of a run just started: 64 random bits as 16 lowercase hex characters."""
    return os.urandom(8).hex()


def replayed_instance_id(run_id: str) -> str:
    """The `inst` of a run sent again from a record of it (`import`, `verify`): the same each time,
    so that sending it twice is one run sent twice, not a second run reusing its id."""
    return hashlib.sha256(f"replayed/{run_id}".encode("utf-8")).hexdigest()[:16]


def new_run_id() -> str:
    """A random (version 4) UUID in its usual spelling, the default run id. Formatted here because
    `import uuid` costs the bridge ~10 ms of startup (it imports platform)."""
    value = bytearray(os.urandom(16))
    value[6] = (value[6] & 0x0F) | 0x40  # version 4
    value[8] = (value[8] & 0x3F) | 0x80  # the RFC 4122 variant
    text = value.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def now_us() -> int:
    return time.time_ns() // 1000


def encode_json(data: Mapping[str, Any]) -> bytes:
    """`data` of a non-line entry: compact JSON in UTF-8 (strings that cannot be UTF-8 get U+FFFD)."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _LONE_SURROGATE.sub("\ufffd", text).encode("utf-8")


def strip_line_ending(line: bytes) -> bytes:
    if line.endswith(b"\r\n"):
        return line[:-2]
    if line.endswith(b"\n"):
        return line[:-1]
    return line


def entry_fields(
    run: str, seq: int, kind: str, data: bytes, ts: int, trunc: int | None = None, inst: str | None = None,
) -> dict:
    """The fields of one XADD, exactly as the README specifies them."""
    fields = {F_VERSION: ENTRY_VERSION, F_RUN: run, F_SEQ: str(seq), F_TS: str(ts), F_KIND: kind, F_DATA: data}
    if trunc is not None:
        fields[F_TRUNC] = str(trunc)
    if inst is not None:
        fields[F_INST] = inst
    return fields


class _Object(list):
    """A JSON object as its (key, value) pairs: order and duplicate keys survive re-encoding
    (Codex prints web_search items with "id" twice)."""


def _encode(value: Any) -> str:
    if isinstance(value, _Object):
        return "{" + ",".join(f"{json.dumps(k, ensure_ascii=False)}:{_encode(v)}" for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_encode(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def _cut_strings(value: Any, longest: int) -> Any:
    if isinstance(value, str):
        if len(value) <= longest:
            return value
        return f"{value[:longest]}…[{len(value) - longest} characters cut by codex-langfuse]"
    if isinstance(value, _Object):
        return _Object((k, _cut_strings(v, longest)) for k, v in value)
    if isinstance(value, list):
        return [_cut_strings(v, longest) for v in value]
    return value


def shrink_json_line(line: bytes, limit: int) -> bytes | None:
    """`line` (a JSON object) re-encoded within `limit` bytes by cutting its longest strings, or
    None when it is not JSON or cannot fit that way. Costs a parse: call it off the caller's thread."""
    try:
        document = json.loads(line, object_pairs_hook=_Object)
    except (ValueError, RecursionError):
        return None
    if not isinstance(document, _Object):
        return None
    low, high, best = 64, len(line), None
    while low <= high:  # the longest string length that still fits
        middle = (low + high) // 2
        encoded = _encode(_cut_strings(document, middle)).encode("utf-8", "surrogateescape")
        if len(encoded) <= limit:
            best, low = encoded, middle + 1
        else:
            high = middle - 1
    return best


def fit_line(line: bytes, trunc: int | None, limit: int) -> tuple[bytes, int | None]:
    """A line within `limit` bytes and its original length when it had to be cut (`trunc` if the
    caller cut it already). A whole line up to SHRINKABLE_FACTOR times the limit is shrunk as JSON
    first, so it still parses; anything else is cut."""
    if len(line) <= limit:
        return line, trunc
    shrunk = None
    if trunc is None and len(line) <= limit * SHRINKABLE_FACTOR:
        shrunk = shrink_json_line(line, limit)
    return (shrunk if shrunk is not None else line[:limit]), max(trunc or 0, len(line))


def decode_fields(fields: Mapping[Any, Any]) -> dict:
    """A stream entry as read back from Redis (bytes keys/values) -> plain values.

    Returns {"v", "run", "seq": int, "ts": int, "kind", "data": bytes for `line` else the decoded
    JSON object, "trunc": int | None, "inst": str | None}. Raises ValueError on an entry that breaks
    the contract.
    """
    raw = {_text(key): value for key, value in fields.items()}
    try:
        kind = _text(raw[F_KIND])
        data = raw[F_DATA]
        data = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        decoded = {
            F_VERSION: _text(raw[F_VERSION]),
            F_RUN: _text(raw[F_RUN]),
            F_SEQ: int(_text(raw[F_SEQ])),
            F_TS: int(_text(raw[F_TS])),
            F_KIND: kind,
            F_DATA: data if kind == KIND_LINE else json.loads(data),
            F_TRUNC: int(_text(raw[F_TRUNC])) if F_TRUNC in raw else None,
            F_INST: _text(raw[F_INST]) if F_INST in raw else None,
        }
    except (KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"not a codex-langfuse stream entry: {exc}") from exc
    return decoded


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else str(value)
