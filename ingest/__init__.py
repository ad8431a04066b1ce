"""The back end of codex-langfuse: from the Redis stream to Langfuse.

`dispatcher` checks stream entries at the edge (`entries`, `safe_json`), files them under their
run (`runs`) and wakes runs (`wake`: one RQ job per run touched, which workers run only as
`own_jobs` allows); `job.process_run` folds a run's new entries (`fold` over `state`, with
`current_format`, `legacy_format` and, for turns imported from Codex's session files,
`rollout_format` + `rollout_tools`; pure; `turn_claims` says whether a live capture or an import
counts a turn) into observations, prices them (`pricing`), encodes
them as OTLP spans (`otlp`, with `content` redaction) and delivers its outbox (`outbox`) exactly
once (`delivery`, `ledger`, `transport`), retrying as `retry` decides and keeping what Langfuse
refuses in `deadletters` for `replay`; `verify` checks imported turns against the ledger and
Langfuse. `context` builds what a worker needs, once per process; `acl` the Redis users that keep
runners to appending to the stream.

Around them: `settings` (validated at start), `worker` (the RQ worker, checked at start, restarted
through Redis outages), `registry` (who runs, by heartbeat), `status` and `doctor` (what runs and
what to fix), `metrics` and `logs` (for operators), `cli` (every mistake as one line and an exit code).
"""
