"""Scores attached to a run after the fact (`codex-langfuse score`, CI results, reviews).

The score goes into the run's outbox and the run is woken up: it is delivered like every other
item of the run (ledger, retries, dead letters), from any machine that can reach Redis. It lands
where the run is: the run's trace (the caller's, on the run's root observation, when the run joined
one) and the run's environment, while the run's state is kept (`DONE_TTL` after it closed).

The run is named by its run id or its trace id. A run Redis has not seen is refused (a typo would
score a trace that does not exist), unless `force` says its entries come later.
"""

from __future__ import annotations

import re
import time
from typing import Any

from codex_langfuse.ingest import connections
from codex_langfuse.ingest.delivery import score_payload
from codex_langfuse.ingest.observations import Score, root_id, score_id
from codex_langfuse.ingest.runs import RunStore
from codex_langfuse.ingest.state import RunState
from codex_langfuse.ingest.settings import Settings
from codex_langfuse.ingest.wake import wake_runs

TRACE_ID = re.compile(r"[0-9a-f]{32}")


class UnknownRun(Exception):
    pass


def attach_score(settings: Settings, run_or_trace: str, name: str, value: float | str, data_type: str,
                 comment: str | None = None, force: bool = False) -> tuple[dict[str, Any], list[str]]:
    """The score as queued, and notes for the user."""
    connection = connections.redis_client(settings)
    keys = connections.keys(settings)
    store = RunStore(connection, keys, settings.lease_seconds, settings.done_ttl)
    run_id, notes = _resolve(store, run_or_trace, force, settings.ledger_ttl + settings.done_ttl)
    state = store.load_state(run_id) or RunState(run_id=run_id)
    trace = state.trace_id
    if store.was_reused(run_id):
        notes.append(f"run id {run_id} was used by more than one run; the score goes to their one trace {trace}")
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
        store.add_scores(pipe, run_id, [payload])
        pipe.zadd(keys.backlog, {run_id: time.time()}, nx=True)
        pipe.execute()
    wake_runs(store, connections.queue(settings, connection), [run_id])
    return payload, notes


def _resolve(store: RunStore, run_or_trace: str, force: bool, remembered: int) -> tuple[str, list[str]]:
    if store.known_run(run_or_trace):
        return run_or_trace, []
    if TRACE_ID.fullmatch(run_or_trace):
        run_id = store.run_of_trace(run_or_trace)
        if run_id is not None:
            return run_id, [f"{run_or_trace} is the trace of run {run_id}"]
    if force:
        return run_or_trace, [f"run {run_or_trace} is not known yet; the score waits for it"]
    raise UnknownRun(f"no run {run_or_trace!r} is known (no run id or trace id seen in the last "
                     f"{remembered // 86400} days); --force scores a run whose entries come later")
