"""Every Redis key the ingest side uses, in one place (a prefix keeps them apart from others)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "codex-langfuse"

    # per run
    def log(self, run: str) -> str:  # HASH seq -> packed entry, waiting to be folded
        return f"{self.prefix}:run:{run}:log"

    def state(self, run: str) -> str:  # STRING RunState JSON
        return f"{self.prefix}:run:{run}:state"

    def outbox(self, run: str) -> str:  # HASH span id / "score:<id>" -> JSON, complete but not yet accepted
        return f"{self.prefix}:run:{run}:outbox"

    def lease(self, run: str) -> str:  # STRING token: the one worker folding this run
        return f"{self.prefix}:run:{run}:lease"

    def delivery(self, run: str) -> str:  # HASH attempts, first/last failure, next attempt, in flight
        return f"{self.prefix}:run:{run}:delivery"

    def first_instance(self, run: str) -> str:  # STRING: the instance that used a run id first
        return f"{self.prefix}:run:{run}:first"

    def trace_run(self, trace: str) -> str:  # STRING: the run id of a trace id (for `score TRACE_ID`)
        return f"{self.prefix}:trace:{trace}:run"

    def seqs(self, run: str) -> str:  # HASH seq -> digest of the entry first filed under it
        return f"{self.prefix}:run:{run}:seqs"

    def conflicts(self, run: str) -> str:  # HASH "<seq>:<digest>" -> JSON of an entry filed again, different
        return f"{self.prefix}:run:{run}:conflicts"

    def faults(self, run: str) -> str:  # HASH fold/job -> failures in a row (expires): a run never loops
        return f"{self.prefix}:run:{run}:faults"

    # across runs
    @property
    def reused(self) -> str:  # ZSET run id -> when a second run instance reused it
        return f"{self.prefix}:runs:reused"

    @property
    def active(self) -> str:  # ZSET run -> time of its last entry (open runs)
        return f"{self.prefix}:runs:active"

    @property
    def backlog(self) -> str:  # ZSET run -> time since which it has had something undelivered
        return f"{self.prefix}:runs:backlog"

    @property
    def woken(self) -> str:  # ZSET run -> when a worker is to advance it (now, or at its next delivery attempt)
        return f"{self.prefix}:runs:woken"

    @property
    def drain(self) -> str:  # STRING: a job is queued to work through the woken runs
        return f"{self.prefix}:runs:drain"

    @property
    def retrying(self) -> str:  # ZSET run -> time of its next delivery attempt
        return f"{self.prefix}:runs:retrying"

    def thread_usage(self, thread: str) -> str:  # STRING cumulative Usage JSON of a Codex thread
        return f"{self.prefix}:thread:{thread}:usage"

    def thread_claims(self, thread: str) -> str:  # HASH run -> "start end" µs: who counts a thread's turns
        return f"{self.prefix}:thread:{thread}:claims"

    def ledger(self, destination: str, trace: str) -> str:  # SET of what a destination accepted for a trace
        return f"{self.prefix}:ledger:{destination}:{trace}"

    def doubts(self, destination: str, trace: str) -> str:  # HASH span id -> when a send whose outcome is unknown began
        return f"{self.prefix}:ledger:{destination}:{trace}:doubts"

    @property
    def dead_letters(self) -> str:  # HASH id -> DeadLetter JSON
        return f"{self.prefix}:deadletters"

    @property
    def dead_letter_index(self) -> str:  # ZSET id -> time of last failure
        return f"{self.prefix}:deadletters:index"

    @property
    def replay_lock(self) -> str:  # STRING lease: one replay at a time
        return f"{self.prefix}:replay:lock"

    @property
    def poison(self) -> str:  # STREAM of stream entries the dispatcher could not file
        return f"{self.prefix}:events:poison"

    @property
    def processes(self) -> str:  # HASH name -> registration JSON of a worker or dispatcher
        return f"{self.prefix}:processes"

    def alive(self, name: str) -> str:  # STRING with a short TTL, renewed by the process's heartbeat
        return f"{self.prefix}:process:{name}:alive"

    @property
    def group(self) -> str:  # consumer group of the dispatchers on the event stream
        return f"{self.prefix}:dispatchers"
