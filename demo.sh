#!/usr/bin/env bash
# One command, end to end: a recorded Codex run through a local Redis (started here),
# a dispatcher and a worker, into Langfuse when LANGFUSE_PUBLIC_KEY/SECRET_KEY are set,
# otherwise into the local sink, then shows the trace.
source "$(dirname "$0")/scripts/bootstrap.sh"
exec codex-langfuse demo "$@"
