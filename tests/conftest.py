from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support.langfuse_receiver import PROFILES
from tests.support.redis_server import RedisServer

FIXTURES = Path(__file__).parent / "fixtures"
CODEX_FIXTURES = FIXTURES / "codex"

# The Langfuse server generations the integration tests run against (tests/support/langfuse_receiver.py).
# A test that proves profile-specific behaviour runs against each (`@every_profile`); the others run
# against DEFAULT_PROFILE, the self-hosted v4 line that differs most from the 5.x client's API.
ALL_PROFILES = tuple(PROFILES)
DEFAULT_PROFILE = "v4.16"
every_profile = pytest.mark.parametrize("stack", ALL_PROFILES, indirect=True)


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
def stack(request, tmp_path):
    """A whole pipeline of real processes (tests/support/stack.py), torn down by pid, against the
    receiver profile given by `@every_profile` (indirect parametrisation), else DEFAULT_PROFILE."""
    from tests.support.stack import Stack

    stack = Stack(tmp_path, profile=getattr(request, "param", DEFAULT_PROFILE))
    try:
        yield stack
    finally:
        stack.close()


@pytest.fixture(scope="module")
def pipeline(request, tmp_path_factory):
    """One whole pipeline kept running for a module (redis-server, a dispatcher and a worker
    process, the receiver), stopped by pid at the end; its tests use run ids of their own. The
    receiver's profile: the module's `PIPELINE_PROFILE`, else DEFAULT_PROFILE."""
    from tests.support.stack import Stack

    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed; run .ci/run or apt-get install -y redis-server")
    profile = getattr(request.module, "PIPELINE_PROFILE", DEFAULT_PROFILE)
    pipeline = Stack(tmp_path_factory.mktemp("pipeline"), profile=profile)
    try:
        pipeline.start("dispatch")
        pipeline.start("worker")
        yield pipeline
    finally:
        pipeline.close()
