"""Scores attached to a run after the fact (`codex-langfuse score`, CI results, reviews).

The score goes into the run's outbox and the run is woken up: it is delivered like every other
item of the run (ledger, retries, dead letters), from any machine that can reach Redis. It lands
where the run is: the run's trace (the caller's, on the run's root observation, when the run joined
one) and the run's environment, while the run's state is kept (`DONE_TTL` after it closed).
"""

from __future__ import annotations

import time
from typing import Any

from codex_langfuse.ingest import connections
from codex_langfuse.ingest.delivery import score_payload
from codex_langfuse.ingest.wake import enqueue_runs
from codex_langfuse.ingest.observations import Score, root_id, score_id
from codex_langfuse.ingest.runs import RunStore
from codex_langfuse.ingest.state import RunState
from codex_langfuse.ingest.settings import Settings


def attach_score(settings: Settings, run_id: str, name: str, value: float | str, data_type: str,
                 comment: str | None = None) -> dict[str, Any]:
    connection = connections.redis_client(settings)
    keys = connections.keys(settings)
    store = RunStore(connection, keys, settings.lease_seconds, settings.done_ttl)
    state = store.load_state(run_id) or RunState(run_id=run_id)
    trace = state.trace_id
    on_root = root_id(run_id) if state.parent else None
    # Newer Langfuse servers replace a score with the same id, name and timestamp date: anchored to
    # the run's start, attaching it again on another day replaces it there. Servers up to v4.16
    # drop the timestamp and key by the day they receive it (a new value sent another day adds a
    # row; the ledger sends one value once).
    at_us = state.started_us or int(time.time() * 1e6)
    payload = score_payload(Score(id=score_id(trace, name, on_root), trace_id=trace, observation_id=on_root,
                                  name=name, value=value, data_type=data_type, timestamp_us=at_us, comment=comment,
                                  environment=state.environment or settings.environment,
                                  metadata={"source": "codex-langfuse score"}))
    with connection.pipeline(transaction=True) as pipe:
        store.add_to_outbox(pipe, run_id, [], [payload])
        pipe.zadd(keys.backlog, {run_id: time.time()}, nx=True)
        pipe.execute()
    enqueue_runs(store, connections.queue(settings, connection), [run_id])
    return payload
