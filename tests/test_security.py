"""Whoever can write to Redis must not run code in a worker, and runners can only append to the
stream (issue 8): the allow-list of job functions (ingest/own_jobs.py) with a real worker
process, the Redis users of `codex-langfuse acl` (ingest/acl.py) on a real redis-server, and the
local sink writing only inside its directory (ingest/transport.py)."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import redis
from rq import Queue, Retry
from rq.callbacks import Callback
from rq.job import JobStatus
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from codex_langfuse.ingest.context import WorkerContext, use_context
from codex_langfuse.ingest.job import process_run
from codex_langfuse.ingest.observations import trace_id
from codex_langfuse.ingest.transport import SinkTransport, file_name
from codex_langfuse.ingest.wake import PROCESS_RUN, PROCESS_WOKEN
from codex_langfuse.producer import Producer
from tests.conftest import CODEX_FIXTURES
from tests.support.stack import Stack

pytestmark = pytest.mark.integration

HANG_GUARD = 60  # seconds; only keeps a broken build from hanging


# ---- workers run only their own job function -----------------------------------------------------


def test_the_attack_from_the_issue_never_runs_and_fails_with_the_reason(stack, tmp_path):
    """Anyone able to write RQ's keys (here: an admin client, as without ACLs) queues
    `subprocess.getoutput`; a real worker process refuses it before importing anything."""
    stack.start("worker", "w")
    marker = tmp_path / "x"
    queue = Queue("codex-langfuse", connection=stack.redis, serializer=JSONSerializer)
    job = queue.enqueue("subprocess.getoutput", f"id > {marker}", retry=Retry(max=3))
    failed = FailedJobRegistry(queue=queue)
    stack.wait(lambda: job.id in failed.get_job_ids(), timeout=HANG_GUARD, what="the foreign job to be failed")
    job.refresh()
    assert job.get_status() == JobStatus.FAILED
    assert job.retries_left == 3  # never retried: a refusal is final
    assert "ForeignJob: refused: function 'subprocess.getoutput' is not one this worker runs " \
           f"({PROCESS_RUN}, {PROCESS_WOKEN})" in job.latest_result().exc_string
    assert f"security: refused job {job.id} on queue codex-langfuse: function 'subprocess.getoutput'" \
        in stack.log_text("w")
    time.sleep(1)  # had it run, `id` would have written the file by now
    assert not marker.exists()


def test_a_forking_worker_refuses_it_in_its_work_horse(tmp_path):
    stack = Stack(tmp_path, worker_class="forking")
    try:
        stack.start("worker", "w")
        marker = tmp_path / "x"
        queue = Queue("codex-langfuse", connection=stack.redis, serializer=JSONSerializer)
        job = queue.enqueue("os.system", f"touch {marker}")
        stack.wait(lambda: job.id in FailedJobRegistry(queue=queue).get_job_ids(), timeout=HANG_GUARD,
                   what="the foreign job to be failed")
        assert "ForeignJob: refused: function 'os.system'" in job.latest_result().exc_string
        assert "security: refused job" in stack.log_text("w")
        assert not marker.exists()
    finally:
        stack.close()


def test_the_own_function_with_anything_else_attached_is_refused_too(stack, tmp_path):
    stack.start("worker", "w")
    marker = tmp_path / "callback-ran"
    queue = Queue("codex-langfuse", connection=stack.redis, serializer=JSONSerializer)
    attempts = {
        "it carries callbacks": queue.enqueue(PROCESS_RUN, "run-a", on_failure=Callback("os.system"),
                                              on_success=Callback("os.system")),
        "its arguments are not one run key": queue.enqueue(PROCESS_RUN, f"touch {marker}"),
        "its arguments are not one run key ": queue.enqueue(PROCESS_RUN, "run-b", extra="x"),
        "its arguments are not one run key  ": queue.enqueue(PROCESS_RUN, "run-c/../../x"),
        "it takes no arguments": queue.enqueue(PROCESS_WOKEN, f"touch {marker}"),
        "it carries callbacks ": queue.enqueue(PROCESS_WOKEN, on_failure=Callback("os.system")),
    }
    failed = FailedJobRegistry(queue=queue)
    stack.wait(lambda: len(failed.get_job_ids()) == len(attempts), timeout=HANG_GUARD, what="the jobs to be failed")
    for reason, job in attempts.items():
        job.refresh()
        assert f"ForeignJob: refused: {reason.strip()}" in job.latest_result().exc_string
    assert not marker.exists()
    # the worker is not disturbed: a real run still goes through it
    stack.start("dispatch")
    stack.feed("after-the-attack", (CODEX_FIXTURES / "real_run_0.169.0_full.jsonl").read_bytes().splitlines())
    stack.wait(lambda: stack.settled(["after-the-attack"]), timeout=HANG_GUARD, what="a real run")
    assert stack.receiver.spans(trace_id("after-the-attack"))


# ---- least privilege in Redis ------------------------------------------------------------------------


def refused(call) -> bool:
    try:
        call()
    except redis.exceptions.NoPermissionError:
        return True
    return False


def test_the_runner_user_can_only_append_to_the_stream(stack):
    runner = stack.runner_redis
    stream = stack.settings().stream
    assert runner.ping()
    assert runner.xadd(stream, {"v": "1", "run": "r", "seq": "0", "ts": "1", "kind": "start", "data": "{}"})
    queue = Queue("codex-langfuse", connection=runner, serializer=JSONSerializer)
    assert refused(lambda: queue.enqueue(PROCESS_RUN, "r"))  # enqueue a job
    assert refused(lambda: runner.rpush("rq:queue:codex-langfuse", "x"))
    assert refused(lambda: runner.xrange(stream))  # read a key, even the stream
    assert refused(lambda: runner.get(stack.keys.state("r")))
    assert refused(lambda: runner.hgetall(stack.keys.dead_letters))
    assert refused(lambda: runner.xadd(stack.keys.poison, {"a": "1"}))  # write elsewhere
    assert refused(lambda: runner.set("anything", "1"))
    assert refused(lambda: runner.eval("return redis.call('set', KEYS[1], 1)", 1, "anything"))
    assert refused(lambda: runner.publish("rq:pubsub:w", "shutdown"))
    assert refused(lambda: runner.config_get("dir"))
    assert stack.redis.exists("anything", "rq:queue:codex-langfuse") == 0


def test_the_whole_pipeline_needs_no_command_or_key_its_users_lack(stack):
    """A run through `tee` (runner), a dispatcher and a worker with its scheduler (back end), a
    delivery retry, `score`, `status` and `replay`: Redis logs no refusal (ACL LOG), not even one a
    client would swallow."""
    stack.receiver.fail("traces", 503, times=1)  # one delivery retry: a job scheduled, then queued by the scheduler
    stack.start("dispatch")
    stack.start("worker")
    lines = (CODEX_FIXTURES / "real_run_0.169.0_full.jsonl").read_bytes()
    assert stack.cli("tee", "--run-id", "acl-clean", stdin=lines).returncode == 0
    stack.wait(lambda: stack.settled(["acl-clean"]), timeout=HANG_GUARD, what="the run")
    assert any(r.status == 503 for r in stack.receiver.requests("traces"))  # the retry did happen
    for command in (["score", "acl-clean", "ci", "true"], ["status", "--json"], ["replay", "--json"]):
        answer = stack.cli(*command)
        assert answer.returncode == 0, answer.stderr
    stack.wait(lambda: stack.settled(["acl-clean"]), timeout=HANG_GUARD, what="the score")
    assert stack.redis.execute_command("ACL", "LOG") == []


def test_the_back_end_user_touches_only_its_own_keys_and_no_admin_command(stack):
    backend = redis.Redis.from_url(stack.env["REDIS_URL"])
    backend.set(stack.keys.state("probe"), "{}")
    assert backend.get(stack.keys.state("probe")) == b"{}"
    assert refused(lambda: backend.set("someone-elses-key", "1"))
    assert refused(lambda: backend.get("someone-elses-key"))
    assert refused(lambda: backend.config_set("dir", "/tmp"))  # CONFIG SET dir: how Redis is made to write files
    assert refused(lambda: backend.flushall())
    assert refused(lambda: backend.keys("*"))
    assert refused(lambda: backend.execute_command("ACL", "LIST"))
    assert refused(lambda: backend.execute_command("MODULE", "LIST"))


def test_the_producer_and_its_spool_work_as_the_runner_user(stack, tmp_path):
    """While Redis is down the producer spools; when it is back the spool is delivered, with no
    command the runner user lacks."""
    stack.redis_server.stop()
    producer = Producer(redis_url=stack.runner_env["REDIS_URL"], spool_dir=tmp_path / "spool")
    run = producer.start_run(run_id="spooled-run", model="gpt-5-codex")
    for line in (CODEX_FIXTURES / "real_run_0.169.0_full.jsonl").read_bytes().splitlines():
        run.emit(line)
    run.finish(0)
    assert producer.flush(HANG_GUARD)
    assert producer.stats()["spooled"] > 0
    stack.redis_server.start()
    stream = stack.settings().stream
    expected = len((CODEX_FIXTURES / "real_run_0.169.0_full.jsonl").read_bytes().splitlines()) + 2
    stack.wait(lambda: stack.redis.xlen(stream) == expected, timeout=HANG_GUARD, what="the spool to be delivered")
    producer.close(5)
    assert producer.stats()["spool_replayed"] == expected


def test_acl_prints_the_rules_and_applies_them(redis_server, tmp_path):
    import subprocess
    import sys

    from tests.support.stack import REPO

    env = {"REDIS_URL": redis_server.url, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO),
           "CODEX_LANGFUSE_RUNNER_PASSWORD": "runner-secret", "CODEX_LANGFUSE_BACKEND_PASSWORD": "backend-secret"}
    printed = subprocess.run([sys.executable, "-m", "codex_langfuse.producer.cli", "acl"], env=env,
                             capture_output=True, text=True, timeout=HANG_GUARD)
    assert printed.returncode == 0, printed.stderr
    runner_rule, backend_rule = printed.stdout.splitlines()
    assert runner_rule.startswith("ACL SETUSER runner reset on #") and "runner-secret" not in printed.stdout
    assert runner_rule.endswith("resetkeys ~codex-langfuse:events resetchannels -@all +xadd +ping")
    assert "~codex-langfuse:* ~rq:* resetchannels &rq:* -@all" in backend_rule and "-@dangerous" in backend_rule
    port = redis_server.port
    assert f"REDIS_URL=redis://runner:runner-secret@127.0.0.1:{port}/0" in printed.stderr
    assert f"REDIS_URL=redis://backend:backend-secret@127.0.0.1:{port}/0" in printed.stderr
    client = redis_server.client()
    assert client.execute_command("ACL", "USERS") == [b"default"]  # printing changed nothing

    applied = subprocess.run([sys.executable, "-m", "codex_langfuse.producer.cli", "acl", "--apply"], env=env,
                             capture_output=True, text=True, timeout=HANG_GUARD)
    assert applied.returncode == 0, applied.stderr
    assert "the default user needs no password" in applied.stderr
    runner = redis.Redis.from_url(f"redis://runner:runner-secret@127.0.0.1:{port}/0")
    assert runner.xadd("codex-langfuse:events", {"v": "1"})
    assert refused(lambda: runner.xlen("codex-langfuse:events"))
    backend = redis.Redis.from_url(f"redis://backend:backend-secret@127.0.0.1:{port}/0")
    assert backend.xlen("codex-langfuse:events") == 1
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(f"redis://runner:wrong@127.0.0.1:{port}/0").ping()


# ---- names never become paths ------------------------------------------------------------------------


TAG = uuid.uuid4().hex[:8]
HOSTILE_NAMES = ["../../../escape-" + TAG, "../../../../escape-" + TAG, "/tmp/absolute-" + TAG, "nul\x00byte", "x" * 10_240,
                 "ünïcødé ✓ 名前", "..", "scores/../../up", ".hidden", "ok_name"]


def all_files(root) -> set:
    return {p for p in root.rglob("*") if p.is_file()}


def test_score_names_never_write_outside_the_sink(stack, tmp_path):
    """Hostile score names through a stream entry (as a runner writes it) and through
    `codex-langfuse score`: each becomes one file inside `<sink>/<trace id>/scores/`, and nothing
    appears where the name, taken as a path, would point."""
    sink = tmp_path / "sink"
    before = all_files(tmp_path.parent)
    stack.start("dispatch")
    lines = (CODEX_FIXTURES / "real_run_0.169.0_full.jsonl").read_bytes().splitlines()
    by_entry, by_cli = "scores-by-entry", "scores-by-cli"
    stack.feed(by_entry, lines)
    stack.feed(by_cli, lines)
    stream, runner = stack.settings().stream, stack.runner_redis
    for seq, name in enumerate(HOSTILE_NAMES, start=len(lines) + 2):  # after the end: late scores still count
        runner.xadd(stream, {"v": "1", "run": by_entry, "seq": str(seq), "ts": str(int(time.time() * 1e6)),
                             "kind": "score", "data": json.dumps({"name": name, "value": 1})})
    cli_names = [name for name in HOSTILE_NAMES if "\x00" not in name]  # no process takes a NUL in its arguments
    stack.wait(lambda: stack.redis.exists(stack.keys.first_instance(by_cli)), timeout=HANG_GUARD,
               what="the run to be filed (score wants a known run)")
    for name in cli_names:
        answer = stack.cli("score", by_cli, name, "0.5")
        assert answer.returncode == 0, answer.stderr
    ctx = WorkerContext.build(stack.settings(), transport=SinkTransport(sink))
    use_context(ctx)
    try:
        def delivered() -> bool:
            process_run(by_entry)
            process_run(by_cli)
            return stack.settled([by_entry, by_cli])
        stack.wait(delivered, timeout=HANG_GUARD, what="the scores to reach the sink")
    finally:
        use_context(None)
    new = all_files(tmp_path.parent) - before
    assert {p for p in new if p.suffix == ".json" and not p.is_relative_to(sink)} == set()
    for run_id, names in ((by_entry, HOSTILE_NAMES), (by_cli, cli_names)):
        scores_dir = sink / trace_id(run_id) / "scores"
        for name in names:
            if "\x00" not in name:
                as_path = (scores_dir / f"{name}.json").resolve()
                assert as_path.is_relative_to(scores_dir) or not as_path.exists(), name
        stored = {json.loads(p.read_text())["name"]: p for p in scores_dir.glob("*.json")}
        assert set(names) <= set(stored)
        for name in names:
            assert stored[name].name == f"{file_name(name)}.json" and len(stored[name].name) <= 100
        assert all(p.parent == scores_dir for p in (sink / trace_id(run_id)).rglob("*.json") if "scores" in p.parts)
