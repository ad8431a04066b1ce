#!/usr/bin/env bash
# The whole test suite: unit tests, integration tests against a real redis-server, fault tests
# with real processes and signals, and the real Codex binaries (downloaded once into
# ~/.cache/codex-langfuse, outside the repository).
source "$(dirname "$0")/scripts/bootstrap.sh"
python -m tests.support.codex_install 0.169.0 0.42.0
exec python -m pytest "$@"
