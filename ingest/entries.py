"""Stream entries as the ingest side reads them (the format is in README, "Stream entry format").

The dispatcher turns each stream entry into an `Entry` and files it in its run's log; workers
read entries back from there. `pack`/`unpack` is the compact JSON kept in the run log.

A run's books are kept under its *run key*: the run id for the first instance of a run id, and
`<run id>/<inst>` for a later one that reused the id (`/` is never part of a run id), so two runs
with one id never share a log (`run_key`, `split_run_key`).
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, field_validator

from codex_langfuse.producer.entries import F_DATA, F_INST, F_KIND, F_RUN, F_SEQ, F_TRUNC, F_TS, is_valid_run_id

# What an `inst` may be: the producer sends 16 lowercase hex; anything key-safe is taken.
INST_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
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

_RUN, _SEQ, _TS, _KIND, _DATA, _TRUNC, _INST = (name.encode() for name in (F_RUN, F_SEQ, F_TS, F_KIND, F_DATA,
                                                                             F_TRUNC, F_INST))


class InvalidEntry(ValueError):
    """A stream entry that cannot be filed under a run (no usable run id or sequence number)."""


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
        """The entry of a stream entry's fields, checked as the model's validators check it (by hand:
        a dispatcher reads tens of thousands a second)."""
        def text(name: bytes) -> str | None:
            raw = fields.get(name)
            return None if raw is None else raw.decode("utf-8", "replace")

        raw_data = fields.get(_DATA, b"")
        try:
            data, binary = raw_data.decode("utf-8"), False
        except UnicodeDecodeError:
            data, binary = raw_data.decode("utf-8", "replace"), True
        run, inst, trunc = text(_RUN) or "", text(_INST) or None, text(_TRUNC)
        try:
            seq, ts = int(text(_SEQ) or ""), int(float(text(_TS) or ""))
            entry = cls.model_construct(run=cls._run_id(run), seq=cls._seq(seq), ts=ts, kind=text(_KIND) or "",
                                        data=data, binary=binary, trunc=int(trunc) if trunc else None,
                                        inst=cls._inst(inst))
        except ValueError as exc:
            raise InvalidEntry(str(exc).splitlines()[0]) from None
        return entry

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
        return cls.model_construct(
            run=run, seq=seq, ts=body["t"], kind=body["k"], data=body["d"],
            binary=bool(body.get("b")), trunc=body.get("x"), inst=inst,
        )

    def payload(self) -> dict[str, Any]:
        """The JSON object of a start/meta/score/end entry; {} when it is not one."""
        try:
            value = json.loads(self.data) if self.data else {}
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}
