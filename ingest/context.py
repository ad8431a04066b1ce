"""The worker's composition root: every object a job needs, built once per process from the
settings (a forked work horse inherits its parent's)."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from rq import Queue

from codex_langfuse.ingest import connections
from codex_langfuse.ingest.content import ContentPolicy
from codex_langfuse.ingest.deadletters import DeadLetters
from codex_langfuse.ingest.delivery import Delivery
from codex_langfuse.ingest.fold import FoldContext
from codex_langfuse.ingest.keys import Keys
from codex_langfuse.ingest.ledger import Ledger
from codex_langfuse.ingest.pricing import PriceTable
from codex_langfuse.ingest.retry import RetryPolicy
from codex_langfuse.ingest.runs import RunStore
from codex_langfuse.ingest.settings import Settings, get_settings
from codex_langfuse.ingest.transport import Transport, make_transport
from codex_langfuse.ingest.turn_claims import TurnClaims


@dataclass
class WorkerContext:
    settings: Settings
    redis: redis.Redis
    keys: Keys
    store: RunStore
    ledger: Ledger
    dead_letters: DeadLetters
    transport: Transport
    delivery: Delivery
    queue: Queue
    prices: PriceTable
    policy: ContentPolicy
    retry: RetryPolicy
    claims: TurnClaims

    @classmethod
    def build(cls, settings: Settings, transport: Transport | None = None) -> "WorkerContext":
        connection = connections.redis_client(settings)
        keys = connections.keys(settings)
        ledger = Ledger(connection, keys, settings.ledger_ttl, settings.destination_id())
        transport = transport or make_transport(settings)
        return cls(
            settings=settings,
            redis=connection,
            keys=keys,
            store=RunStore(connection, keys, settings.lease_seconds, settings.done_ttl,
                           id_ttl=settings.ledger_ttl + settings.done_ttl),
            ledger=ledger,
            dead_letters=DeadLetters(connection, keys),
            transport=transport,
            delivery=Delivery(transport, ledger, settings.batch_max_spans, settings.batch_max_bytes,
                              in_doubt_wait=settings.in_doubt_wait),
            queue=connections.queue(settings, connection),
            prices=PriceTable.load(settings.prices_file),
            policy=ContentPolicy(capture=settings.capture_content, max_field_chars=settings.max_field_chars,
                                 redact=settings.redact, extra_patterns=settings.redact_patterns),
            retry=RetryPolicy(base=settings.retry_base, cap=settings.retry_cap, retry_for=settings.retry_for),
            claims=TurnClaims(connection, keys, settings.ledger_ttl),
        )

    def fold_context(self) -> FoldContext:
        return FoldContext(prices=self.prices, thread_baseline=self.store.thread_baseline, claim_turn=self.claims.claim,
                           trace_name=self.settings.trace_name, environment=self.settings.environment,
                           release=self.settings.release, max_output_chars=self.settings.max_output_chars,
                           max_problem_events=self.settings.max_problem_events,
                           max_observations=self.settings.max_observations)


_context: WorkerContext | None = None


def context() -> WorkerContext:
    """The process's context, built on first use."""
    global _context
    if _context is None:
        _context = WorkerContext.build(get_settings())
    return _context


def use_context(ctx: WorkerContext | None) -> None:
    global _context
    _context = ctx
