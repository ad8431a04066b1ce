"""Stream entries as the ingest side reads them (the format is in README, "Stream entry format").

The dispatcher turns each stream entry into an `Entry` (`from_stream`) and files it in its run's
log; workers read entries back from there (`pack`/`unpack` is the compact JSON kept in the log).

A run's books are kept under its *run key*: the run id for the first instance of a run id, and
`<run id>/<inst>` for a later one that reused the id (`/` is never part of a run id), so two runs
with one id never share a log (`run_key`, `split_run_key`).

The rule: an entry is checked here, at the edge, before anything trusts it. An envelope that
cannot be filed under a run (unknown `v`, no usable run id, sequence number or time) raises
`InvalidEntry` with a reason that names the field, and goes to the poison stream. The `data` of
`start`, `meta`, `score` and `end` is read field by field (`RunMeta`, `ScoreData`, `EndData`):
a field that does not fit is dropped and named, so the fold can show it as an event and go on.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from codex_langfuse.ingest import safe_json
from codex_langfuse.producer.entries import (
    ENTRY_VERSION, F_DATA, F_INST, F_KIND, F_RUN, F_SEQ, F_TRUNC, F_TS, F_VERSION, INST_PATTERN, is_valid_run_id,
)

# Times outside these are not microseconds since the epoch (seconds or nanoseconds by mistake, or junk).
MIN_TS_US = 946_684_800_000_000  # 2000-01-01
MAX_TS_US = 4_102_444_800_000_000  # 2100-01-01
MAX_SEQ = 10**9  # no run has a billion entries; beyond this a gap could not be waited out
MAX_TRUNC = 2**53
KIND_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # unknown kinds are folded as events; junk is not a kind
MAX_NAME_CHARS = 1000  # trace name, user, session, model, ...: repeated on every span
# The instance of entries that carry no `inst` (a producer that does not send one).
NO_INST = "-"


def run_key(run: str, inst: str | None, first_inst: str) -> str:
    """Where an entry of instance `inst` is filed, given the instance that used the run id first."""
    inst = inst or NO_INST
    return run if inst == first_inst else f"{run}/{inst}"


def split_run_key(key: str) -> tuple[str, str | None]:
    """(run id, instance) of a run key; the instance is None for a run id's first instance."""
    run, _, inst = key.partition("/")
    return run, inst or None


def is_run_key(key: object) -> bool:
    """A run id, or `<run id>/<inst>`: what a job may name."""
    if not isinstance(key, str):
        return False
    run, slash, inst = key.partition("/")
    return is_valid_run_id(run) and (not slash or INST_PATTERN.fullmatch(inst) is not None)


# The kind of what the dispatcher files in place of an entry it moved to the poison stream, when
# the entry's run and sequence number were readable: the run shows it and goes on, waiting for nothing.
KIND_INVALID = "_invalid"


_RUN, _SEQ, _TS, _KIND, _DATA, _TRUNC, _INST, _VERSION = (
    name.encode() for name in (F_RUN, F_SEQ, F_TS, F_KIND, F_DATA, F_TRUNC, F_INST, F_VERSION))


class InvalidEntry(ValueError):
    """A stream entry that cannot be filed as it is; the message names the field. `run` and `seq`
    are set when they were readable (a placeholder can then take the entry's place)."""

    def __init__(self, message: str, run: str | None = None, seq: int | None = None, inst: str | None = None):
        super().__init__(message)
        self.run = run
        self.seq = seq
        self.inst = inst

    def placeholder(self, ts: int) -> "Entry | None":
        if self.run is None or self.seq is None:
            return None
        return Entry(run=self.run, seq=self.seq, ts=ts, kind=KIND_INVALID, data=str(self), inst=self.inst)


_DIGITS = re.compile(r"\d{1,20}")


def _shown(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}…"


def _integer(name: str, text: str | None, maximum: int) -> int:
    if text is None:
        raise InvalidEntry(f"{name}: missing")
    if not _DIGITS.fullmatch(text):
        raise InvalidEntry(f"{name}: {_shown(text)} is not a non-negative decimal integer")
    value = int(text)
    if value > maximum:
        raise InvalidEntry(f"{name}: {value} is beyond {maximum}")
    return value


def _timestamp(text: str | None) -> int:
    if text is None:
        raise InvalidEntry("ts: missing")
    try:
        # Digits are read exactly; anything else (a float from another language's producer) as a float.
        value = int(text) if _DIGITS.fullmatch(text) else float(text) if len(text) <= 40 else math.nan
    except ValueError:
        raise InvalidEntry(f"ts: {_shown(text)} is not a number") from None
    if not math.isfinite(value):
        raise InvalidEntry(f"ts: {_shown(text)} is not a finite number")
    if not MIN_TS_US <= value < MAX_TS_US:
        raise InvalidEntry(f"ts: {_shown(text)} is not a time between 2000 and 2100 in microseconds since the epoch")
    return int(value)


class Entry(BaseModel):
    model_config = ConfigDict(frozen=True)

    run: str
    seq: int
    ts: int  # microseconds since the epoch, when the producer read the line
    kind: str
    data: str = ""
    binary: bool = False  # the line was not valid UTF-8 (decoded with replacement characters)
    trunc: int | None = None  # original length in bytes when the producer cut the line
    inst: str | None = None  # the run instance, when the producer sends one

    @field_validator("run")
    @classmethod
    def _run_id(cls, value: str) -> str:
        if not is_valid_run_id(value):
            raise ValueError("run id must be 1-128 characters of [A-Za-z0-9._:-]")
        return value

    @field_validator("inst")
    @classmethod
    def _inst(cls, value: str | None) -> str | None:
        if value is not None and not INST_PATTERN.fullmatch(value):
            raise ValueError("inst must be 1-64 characters of [A-Za-z0-9._-]")
        return value

    @field_validator("seq")
    @classmethod
    def _seq(cls, value: int) -> int:
        if value < 0:
            raise ValueError("seq must be >= 0")
        return value

    @classmethod
    def from_stream(cls, fields: dict[bytes, bytes]) -> "Entry":
        """The entry of a stream entry's fields; raises `InvalidEntry` naming the field at fault. Every
        field is checked here by hand (a dispatcher reads tens of thousands a second), so the model
        is built without validating again."""
        def text(name: bytes) -> str | None:
            raw = fields.get(name)
            return None if raw is None else raw.decode("utf-8", "replace")

        version = text(_VERSION)
        if version != ENTRY_VERSION:
            raise InvalidEntry(f"v: missing (the entry format version, {ENTRY_VERSION!r})" if version is None else
                               f"v: entry format version {_shown(version)} is not one this back end reads "
                               f"({ENTRY_VERSION!r})")
        run = text(_RUN)
        if not is_valid_run_id(run):
            raise InvalidEntry("run: missing" if run is None else
                               f"run: {_shown(run)} is not 1-128 characters of [A-Za-z0-9._:-]")
        seq = _integer(F_SEQ, text(_SEQ), MAX_SEQ)
        inst = text(_INST) or None
        if inst is not None and not INST_PATTERN.fullmatch(inst):
            raise InvalidEntry(f"inst: {_shown(inst)} is not 1-64 characters of [A-Za-z0-9._-]")
        try:
            ts = _timestamp(text(_TS))
            kind = text(_KIND)
            if kind is None or not KIND_PATTERN.fullmatch(kind) or kind == KIND_INVALID:
                raise InvalidEntry("kind: missing" if kind is None else
                                   f"kind: {_shown(kind)} is not 1-64 characters of [A-Za-z0-9_.-]")
            trunc_text = text(_TRUNC)
            trunc = _integer(F_TRUNC, trunc_text, MAX_TRUNC) if trunc_text else None
        except InvalidEntry as exc:
            raise InvalidEntry(str(exc), run, seq, inst) from None
        raw_data = fields.get(_DATA, b"")
        try:
            data, binary = raw_data.decode("utf-8"), False
        except UnicodeDecodeError:
            data, binary = raw_data.decode("utf-8", "replace"), True
        return cls._trusted(run, seq, ts, kind, data, binary, trunc, inst)

    @classmethod
    def _trusted(cls, run: str, seq: int, ts: int, kind: str, data: str, binary: bool, trunc: int | None,
                 inst: str | None) -> "Entry":
        """An entry of fields already checked (`from_stream`) or written by `pack`: what
        `model_construct` makes, at a third of its cost (a dispatcher makes tens of thousands a
        second). Equal to the validated model (tests/test_entries.py)."""
        entry = cls.__new__(cls)
        _set(entry, "__dict__", {"run": run, "seq": seq, "ts": ts, "kind": kind, "data": data, "binary": binary,
                                 "trunc": trunc, "inst": inst})
        _set(entry, "__pydantic_fields_set__", set(_ENTRY_FIELDS))
        _set(entry, "__pydantic_extra__", None)
        _set(entry, "__pydantic_private__", None)
        return entry

    def digest(self) -> str:
        """What tells two entries filed under one run key and sequence number apart: everything
        else (two instances of a run id are filed under run keys of their own) but the sending
        process of a start or meta (`producer`): a history imported again by another process is
        the same entry."""
        data = self.data
        if self.kind in ("start", "meta") and '"producer"' in data:
            value, problem = safe_json.load(data)
            if problem is None and isinstance(value, dict):
                value.pop("producer", None)
                data = json.dumps(value, ensure_ascii=False, sort_keys=True)
        # `kind` holds no "|" (KIND_PATTERN): the fields cannot run into each other
        digest = hashlib.blake2b(f"{self.ts}|{self.kind}|{int(self.binary)}|{self.trunc}|".encode(), digest_size=8)
        digest.update(data.encode("utf-8", "surrogatepass"))
        return digest.hexdigest()

    def pack(self) -> bytes:
        body: dict[str, Any] = {"t": self.ts, "k": self.kind, "d": self.data}
        if self.binary:
            body["b"] = 1
        if self.trunc is not None:
            body["x"] = self.trunc
        return orjson.dumps(body)

    @classmethod
    def unpack(cls, key: str, seq: int, packed: str | bytes) -> "Entry":
        """The entry filed as `seq` in the log of run key `key` (as `pack` wrote it: not checked again)."""
        body = orjson.loads(packed)
        run, inst = split_run_key(key)
        return cls._trusted(run, seq, body["t"], body["k"], body["d"], bool(body.get("b")), body.get("x"), inst)

    def payload(self) -> dict[str, Any]:
        """The JSON object of a start/meta/score/end entry; {} when it is not one (`data_object`
        says why)."""
        return self.data_object()[0]

    def data_object(self) -> tuple[dict[str, Any], str | None]:
        """The JSON object of a start/meta/score/end entry ({} when `data` is empty), and what
        is wrong with it: ({}, why) when it is not a JSON object."""
        if not self.data:
            return {}, None
        value, problem = safe_json.load(self.data)
        if problem is not None:
            return {}, f"data: {problem}"
        if not isinstance(value, dict):
            return {}, f"data: JSON {type(value).__name__}, not an object"
        return value, None


_set = object.__setattr__
_ENTRY_FIELDS = frozenset(Entry.model_fields)


# ---- the data of start/meta, score and end entries ----------------------------------------------


def _problems(error: ValidationError) -> list[tuple[str, str]]:
    """(top-level field, "field.path: message") for each error."""
    out = []
    for item in error.errors():
        loc = item.get("loc") or ("data",)
        message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
        out.append((str(loc[0]), f"{'.'.join(str(part) for part in loc)}: {message}"))
    return out


def _read(model: type[BaseModel], payload: dict[str, Any]) -> tuple[BaseModel | None, list[str]]:
    """`payload` validated as `model`, without the fields that do not fit (named in the problems)."""
    problems: list[str] = []
    data = dict(payload)
    dropped: set[str] = set()
    for _ in range(3):
        try:
            return model.model_validate(data), problems
        except ValidationError as exc:
            for field, text in _problems(exc):
                if field not in dropped:  # not again as "Field required" once it was dropped
                    problems.append(text)
                dropped.add(field)
                data.pop(field, None)
    return None, problems  # a required field did not fit


def _name(value: Any) -> Any:
    return value[:MAX_NAME_CHARS] if isinstance(value, str) else value


class RunMeta(BaseModel):
    """`data` of `start` and `meta`: every key optional; unknown keys kept."""

    model_config = ConfigDict(extra="allow")

    name: str | None = None
    model: str | None = None
    user_id: str | None = None
    session_id: str | None = None
    environment: str | None = None
    codex_version: str | None = None
    service_tier: str | None = None
    cwd: str | None = None
    repository: str | None = None
    branch: str | None = None
    commit: str | None = None
    tags: list[str] | None = None
    metadata: dict[str, Any] | None = None

    @field_validator("name", "model", "user_id", "session_id", "environment", "codex_version", "service_tier")
    @classmethod
    def _cap(cls, value: Any) -> Any:
        return _name(value)

    @field_validator("tags", mode="before")
    @classmethod
    def _scalar_tags(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [str(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else t for t in value]
        return value

    @classmethod
    def read(cls, payload: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        model, problems = _read(cls, payload)
        return (model.model_dump(exclude_unset=True) if model is not None else {}), problems


class ScoreData(BaseModel):
    """`data` of `score`: a value Langfuse can store, its type told or inferred."""

    model_config = ConfigDict(extra="allow")

    name: str
    value: bool | int | float | str
    data_type: Literal["NUMERIC", "BOOLEAN", "CATEGORICAL", "TEXT"] | None = None
    comment: str | None = None

    @field_validator("name")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value:
            raise ValueError("must not be empty")
        return value

    @field_validator("value", mode="before")
    @classmethod
    def _bounded(cls, value: Any) -> Any:
        if isinstance(value, safe_json.BigNumber):
            raise ValueError(f"the number {_shown(str(value), 24)} is not finite or beyond ±2^53")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("not a finite number")
        if not isinstance(value, (bool, int, float, str)):
            raise ValueError("missing" if value is None else f"a JSON {type(value).__name__}, not a number, "
                             "boolean or string")
        return value

    def typed(self) -> tuple[float | str, str]:
        """(value, data type) as Langfuse takes them; raises ValueError naming `value` when the
        value does not fit its type."""
        value, data_type = self.value, self.data_type
        if data_type is None:
            if isinstance(value, bool):
                data_type = "BOOLEAN"
            elif isinstance(value, (int, float)):
                data_type = "NUMERIC"
            else:
                data_type = "CATEGORICAL"
        if data_type in ("NUMERIC", "BOOLEAN"):
            try:
                number = float(value)
            except (TypeError, ValueError, OverflowError):
                raise ValueError(f"value: {_shown(value)} is not a number ({data_type})") from None
            if not math.isfinite(number) or abs(number) > safe_json.MAX_NUMBER:
                raise ValueError(f"value: {_shown(value)} is not a finite number within ±2^53")
            if data_type == "BOOLEAN" and number not in (0.0, 1.0):
                raise ValueError(f"value: {_shown(value)} is not a boolean (0, 1, true or false)")
            return number, data_type
        return str(value), data_type

    @classmethod
    def read(cls, payload: dict[str, Any]) -> tuple["ScoreData | None", list[str]]:
        return _read(cls, payload)  # type: ignore[return-value]


class EndData(BaseModel):
    """`data` of `end`."""

    model_config = ConfigDict(extra="allow")

    exit_code: int | None = None
    signal: int | None = None
    reason: str | None = None
    stderr: str | None = None  # the tail of Codex's stderr (`run`)

    @field_validator("reason")
    @classmethod
    def _cap(cls, value: Any) -> Any:
        return _name(value)

    @classmethod
    def read(cls, payload: dict[str, Any]) -> tuple["EndData", list[str]]:
        model, problems = _read(cls, payload)
        return (model if model is not None else cls()), problems  # type: ignore[return-value]
