from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support.redis_server import RedisServer

FIXTURES = Path(__file__).parent / "fixtures"
CODEX_FIXTURES = FIXTURES / "codex"


@pytest.fixture
def redis_server():
    """A fresh real redis-server per test (integration tests)."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed; run .ci/run or apt-get install -y redis-server")
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def stack(tmp_path):
    """A whole pipeline of real processes (tests/support/stack.py), torn down by pid."""
    from tests.support.stack import Stack

    stack = Stack(tmp_path)
    try:
        yield stack
    finally:
        stack.close()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """One whole pipeline kept running for a module (redis-server, a dispatcher and a worker
    process, the receiver), stopped by pid at the end; its tests use run ids of their own."""
    from tests.support.stack import Stack

    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed; run .ci/run or apt-get install -y redis-server")
    pipeline = Stack(tmp_path_factory.mktemp("pipeline"))
    try:
        pipeline.start("dispatch")
        pipeline.start("worker")
        yield pipeline
    finally:
        pipeline.close()
