"""The edge: stream entries and their data checked before anything trusts them (ingest/entries.py,
ingest/safe_json.py). A reason always names the field at fault."""

from __future__ import annotations

import json

import pytest

from codex_langfuse.ingest import safe_json
from codex_langfuse.ingest.entries import EndData, Entry, InvalidEntry, RunMeta, ScoreData

TS = 1_795_624_547_000_000


def fields(**overrides) -> dict[bytes, bytes]:
    base = {"v": "1", "run": "r-1", "seq": "3", "ts": str(TS), "kind": "line", "data": "{}"}
    base.update(overrides)
    return {k.encode(): (v if isinstance(v, bytes) else str(v).encode()) for k, v in base.items() if v is not None}


def test_a_good_entry_is_read_as_it_was_written():
    entry = Entry.from_stream(fields(data=b"\xff not utf-8", trunc="99"))
    assert (entry.run, entry.seq, entry.ts, entry.kind, entry.binary, entry.trunc) == ("r-1", 3, TS, "line", True, 99)
    assert Entry.from_stream(fields(ts="1.795624547e15")).ts == TS  # a float from another language is fine


def test_an_entry_read_from_the_stream_or_the_log_is_the_validated_model():
    """`from_stream` and `unpack` build entries without validating twice: they must be the same model."""
    read = Entry.from_stream(fields(data='{"a": 1}', trunc="99", inst="0123456789abcdef"))
    validated = Entry(run="r-1", seq=3, ts=TS, kind="line", data='{"a": 1}', trunc=99, inst="0123456789abcdef")
    unpacked = Entry.unpack("r-1/0123456789abcdef", 3, read.pack())
    for entry in (read, unpacked):
        assert entry == validated and hash(entry) == hash(validated)
        assert entry.model_dump() == validated.model_dump() and entry.model_dump_json() == validated.model_dump_json()
        with pytest.raises(ValueError):
            entry.seq = 4  # frozen, like the validated model


@pytest.mark.parametrize("change, reason", [
    ({"v": None}, "v: missing"),
    ({"v": "2"}, "v: entry format version '2' is not one this back end reads ('1')"),
    ({"run": None}, "run: missing"),
    ({"run": "../x"}, "run: '../x' is not 1-128 characters of [A-Za-z0-9._:-]"),
    ({"run": "r" * 129}, "run: 'rrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrr… is not 1-128"),
    ({"seq": None}, "seq: missing"),
    ({"seq": "-1"}, "seq: '-1' is not a non-negative decimal integer"),
    ({"seq": "1e3"}, "seq: '1e3' is not a non-negative decimal integer"),
    ({"seq": "1" * 400}, "seq: '111111111111111111111111111111111111111… is not a non-negative decimal integer"),
    ({"seq": str(10**9 + 1)}, "seq: 1000000001 is beyond 1000000000"),
    ({"ts": None}, "ts: missing"),
    ({"ts": "inf"}, "ts: 'inf' is not a finite number"),
    ({"ts": "nan"}, "ts: 'nan' is not a finite number"),
    ({"ts": "-5"}, "ts: '-5' is not a time between 2000 and 2100"),
    ({"ts": "1795624547"}, "ts: '1795624547' is not a time between 2000 and 2100"),  # seconds, not µs
    ({"ts": "1e300"}, "ts: '1e300' is not a time between 2000 and 2100"),
    ({"ts": "9" * 400}, "ts: '999999999999999999999999999999999999999… is not a finite number"),
    ({"ts": "soon"}, "ts: 'soon' is not a number"),
    ({"kind": None}, "kind: missing"),
    ({"kind": "x" * 65}, "kind: 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx… is not 1-64 characters"),
    ({"kind": "li ne"}, "kind: 'li ne' is not 1-64 characters of [A-Za-z0-9_.-]"),
    ({"trunc": "-3"}, "trunc: '-3' is not a non-negative decimal integer"),
])
def test_an_entry_that_cannot_be_filed_says_which_field(change, reason):
    with pytest.raises(InvalidEntry) as raised:
        Entry.from_stream(fields(**change))
    assert str(raised.value).startswith(reason)


def test_an_unknown_kind_within_version_1_is_filed_for_the_fold_to_show():
    assert Entry.from_stream(fields(kind="telemetry")).kind == "telemetry"


def test_safe_json_never_raises_and_bounds_what_it_returns():
    assert safe_json.load("[" * 100_000) == (None, "not JSON: nested too deep to read")
    value, problem = safe_json.load('{"a": ' + "9" * 5000 + ', "b": 1e999, "c": NaN, "d": 12, "e": 0.5}')
    assert problem is None
    assert isinstance(value["a"], safe_json.BigNumber) and len(value["a"]) == 5000
    assert (value["b"], value["c"], value["d"], value["e"]) == ("1e999", "NaN", 12, 0.5)
    deep, problem = safe_json.load("[" * 600 + "]" * 600)
    depth = 0
    while isinstance(deep, list):
        deep, depth = deep[0], depth + 1
    assert (problem, depth, deep) == (None, safe_json.MAX_DEPTH, safe_json.DEEPER)
    assert safe_json.load("{not json")[1].startswith("not JSON: ")


def test_run_meta_keeps_what_fits_and_names_what_does_not():
    meta, problems = RunMeta.read({"user_id": 5, "name": "nightly", "tags": [1, "ci", {"x": 1}],
                                   "metadata": "not a dict", "custom": {"kept": True}, "model": "m" * 5000})
    assert meta == {"name": "nightly", "custom": {"kept": True}, "model": "m" * 1000}
    assert problems == ["user_id: Input should be a valid string", "tags.2: Input should be a valid string",
                        "metadata: Input should be a valid dictionary"]


@pytest.mark.parametrize("payload, problem", [
    ({"value": 1}, "name: Field required"),
    ({"name": "", "value": 1}, "name: must not be empty"),
    ({"name": "n", "value": None}, "value: missing"),
    ({"name": "n", "value": [1]}, "value: a JSON list, not a number, boolean or string"),
])
def test_a_score_without_a_usable_name_or_value_is_refused_with_the_field(payload, problem):
    score, problems = ScoreData.read(payload)
    assert score is None and problems[0] == problem


def test_a_score_value_out_of_range_is_refused_before_any_float_conversion():
    payload, _ = safe_json.load('{"name": "n", "value": ' + "4" * 400 + "}")
    score, problems = ScoreData.read(payload)
    assert score is None
    assert problems == ["value: the number '44444444444444444444444… is not finite or beyond ±2^53"]
    with pytest.raises(ValueError, match=r"value: 'maybe' is not a number \(BOOLEAN\)"):
        ScoreData.read({"name": "n", "value": "maybe", "data_type": "BOOLEAN"})[0].typed()
    assert ScoreData.read({"name": "n", "value": "3.5", "data_type": "NUMERIC"})[0].typed() == (3.5, "NUMERIC")


def test_end_data_keeps_the_fields_that_fit():
    end, problems = EndData.read({"exit_code": "x", "signal": 9, "reason": "exited"})
    assert (end.exit_code, end.signal, end.reason) == (None, 9, "exited")
    assert problems == ["exit_code: Input should be a valid integer, unable to parse string as an integer"]


def test_data_that_is_not_a_json_object_says_so():
    entry = Entry(run="r", seq=0, ts=TS, kind="start", data="[" * 100_000)
    assert entry.data_object() == ({}, "data: not JSON: nested too deep to read")
    assert Entry(run="r", seq=0, ts=TS, kind="end", data="[1]").data_object() == ({}, "data: JSON list, not an object")
    assert Entry(run="r", seq=0, ts=TS, kind="end", data=json.dumps({"a": 1})).data_object() == ({"a": 1}, None)


def test_the_digest_tells_other_data_apart():
    entry = Entry(run="r", seq=4, ts=TS, kind="line", data="hello")
    assert entry.digest() == entry.model_copy().digest()
    assert entry.digest() != entry.model_copy(update={"data": "hullo"}).digest()
    assert entry.digest() != entry.model_copy(update={"ts": TS + 1}).digest()
    assert entry.digest() != entry.model_copy(update={"kind": "meta"}).digest()
    # the process that sent a start is not what it says (an import run again elsewhere)
    start = Entry(run="r", seq=0, ts=TS, kind="start", data='{"name": "n", "producer": {"pid": 1}}')
    assert start.digest() == start.model_copy(update={"data": '{"producer": {"pid": 2}, "name": "n"}'}).digest()
    assert start.digest() != start.model_copy(update={"data": '{"name": "m", "producer": {"pid": 1}}'}).digest()


def test_an_inst_is_read_and_checked():
    assert Entry.from_stream(fields(inst="0123456789abcdef")).inst == "0123456789abcdef"
    with pytest.raises(InvalidEntry) as raised:
        Entry.from_stream(fields(inst="../../x"))
    assert str(raised.value) == "inst: '../../x' is not 1-64 characters of [A-Za-z0-9._-]"
    assert raised.value.placeholder(TS) is None  # an entry of no knowable run key leaves no placeholder
    with pytest.raises(InvalidEntry) as raised:
        Entry.from_stream(fields(inst="abc", ts="inf"))
    assert raised.value.placeholder(TS).inst == "abc"  # the placeholder goes to the entry's own run instance
