"""`codex-langfuse import` of a 200 MB rollout: memory stays flat.

A rollout of --mb megabytes (200 by default) is built from a real Codex 0.169 session
(tests/fixtures/codex/rollout_0.169.0_resumed_two_turns.jsonl): its header once, then its two
turns again and again with fresh turn ids and times, each turn also carrying one large command
output (--output-kb, 64 KB by default, like a build log). A baseline rollout of the same turns,
1% of the size, is built the same way. Each is imported by `codex-langfuse import` in a child
process into a real redis-server on 127.0.0.1 (no dispatcher: the entries stay in the stream and
are counted there). The child reports its peak RSS (VmHWM) at the end.

Target: peak RSS importing the large file ≤ 1.25× the peak importing the baseline (memory does
not grow with the file), and every turn of both files is in the stream, each run once.

    .venv/bin/python benchmarks/import_memory.py [--quick] [--mb N] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import _common
from _common import REPO, Report

from tests.support.redis_server import RedisServer

SOURCE = REPO / "tests" / "fixtures" / "codex" / "rollout_0.169.0_resumed_two_turns.jsonl"
TURN_ID = re.compile(rb"01a213[0-9a-f]{2}-[0-9a-f]{4}-7[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}")
TARGET_RATIO = 1.25

CHILD = r'''
import json, sys
from codex_langfuse.producer.rollout_cli import main
code = main(["import", *sys.argv[1:]])
status = dict(line.split(":", 1) for line in open("/proc/self/status") if line.startswith(("VmHWM", "VmRSS")))
print(json.dumps({"code": code, "hwm_kib": int(status["VmHWM"].split()[0]), "rss_kib": int(status["VmRSS"].split()[0])}))
'''


def build_rollout(path: Path, megabytes: float, output_kb: int) -> int:
    """Write a rollout of about `megabytes` MB; returns the number of turns."""
    lines = SOURCE.read_bytes().splitlines(keepends=True)
    header, body = lines[0], lines[1:]
    thread = json.loads(header)["payload"]["id"]
    big = json.dumps({"timestamp": "2026-11-25T16:35:48.000Z", "type": "response_item", "payload": {
        "type": "function_call_output", "call_id": "call_mock_1",
        "output": "Process exited with code 0\nOutput:\n" + ("build log line ........\n" * (output_kb * 1024 // 24))}})
    target = int(megabytes * 1_000_000)
    turns = 0
    with path.open("wb") as out:
        out.write(header)
        written = len(header)
        while written < target:
            fresh = {old: uuid.uuid4().hex.encode() for old in set(TURN_ID.findall(b"".join(body)))}
            for line in body:
                for old, new in fresh.items():
                    line = line.replace(old, b"01a21390-" + new[:4] + b"-7" + new[5:8] + b"-" + new[8:12] + b"-" + new[12:24])
                out.write(line)
                written += len(line)
                if b'"function_call_output"' in line and b"call_mock_1" in line:
                    out.write(big.encode() + b"\n")
                    written += len(big) + 1
            turns += 2
    assert thread
    return turns


def import_once(redis: RedisServer, path: Path, state: Path, spool: Path) -> dict:
    env = {"REDIS_URL": redis.url, "CODEX_LANGFUSE_SPOOL_DIR": str(spool), "PATH": "/usr/bin:/bin",
           "CODEX_LANGFUSE_LOG_LEVEL": "WARNING"}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", CHILD, str(path), "--state", str(state), "--json",
                           "--idle-timeout", "1"], env=env, capture_output=True, text=True, cwd=REPO)
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"import failed: {done.stderr[-2000:]}")
    report, measured = (json.loads(line) for line in done.stdout.strip().splitlines()[-2:])
    return {**report, **measured, "seconds": elapsed}


def stream_runs(redis: RedisServer) -> dict[bytes, int]:
    client = redis.client()
    starts: dict[bytes, int] = {}
    last = "-"
    while True:
        batch = client.xrange("codex-langfuse:events", min=last, count=10_000)
        if last != "-":
            batch = batch[1:]
        if not batch:
            return starts
        for _, fields in batch:
            if fields[b"kind"] == b"start":
                starts[fields[b"run"]] = starts.get(fields[b"run"], 0) + 1
        last = batch[-1][0].decode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=200.0)
    parser.add_argument("--output-kb", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="20 MB instead")
    parser.add_argument("--json")
    args = parser.parse_args()
    _common.require_redis_server()
    megabytes = 20.0 if args.quick else args.mb
    report = Report("import_memory", " ".join(["benchmarks/import_memory.py", *sys.argv[1:]]))
    with tempfile.TemporaryDirectory(prefix="import-memory-") as tmp:
        tmp_path = Path(tmp)
        rows, results = [], {}
        for label, size in (("baseline", megabytes / 100), ("large", megabytes)):
            folder = tmp_path / label
            folder.mkdir()
            path = folder / f"rollout-2026-11-25T16-35-47-{label}.jsonl"
            turns = build_rollout(path, size, args.output_kb)
            redis = RedisServer().start()
            try:
                result = import_once(redis, path, folder / "state.sqlite3", folder / "spool")
                starts = stream_runs(redis)
            finally:
                redis.close()
            file_mb = path.stat().st_size / 1e6
            once = len(starts) == turns and set(starts.values()) == {1}
            results[label] = (result, turns, once)
            rows.append((label, round(file_mb, 1), turns, result["sent"], len(starts), "yes" if once else "NO",
                         round(result["hwm_kib"] / 1024, 1), round(result["seconds"], 1),
                         round(file_mb / result["seconds"], 1)))
            path.unlink()
        report.table("import of one rollout file", ("file", "MB", "turns", "sent", "runs in stream", "each once",
                                                     "peak RSS MB", "seconds", "MB/s"), rows)
        base, large = results["baseline"][0], results["large"][0]
        ratio = large["hwm_kib"] / base["hwm_kib"]
        report.check("peak RSS importing the large file (MB)", round(large["hwm_kib"] / 1024, 1),
                     f"<= {TARGET_RATIO}x the baseline", ratio <= TARGET_RATIO,
                     baseline=f"{base['hwm_kib'] / 1024:.1f} MB (1% of the size)", ratio=f"{ratio:.2f}x")
        report.check("every turn in the stream, each run once", 1.0, "all", all(r[2] for r in results.values()))
    return report.finish(args.json)


if __name__ == "__main__":
    sys.exit(main())
