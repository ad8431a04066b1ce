"""The back end of codex-langfuse: from the Redis stream to Langfuse.

`dispatcher` files stream entries under their run and queues RQ jobs; `jobs.process_run` folds a
run's new entries (`fold`, pure) into observations, prices them (`pricing`), encodes them as
OTLP spans (`otlp`, with `content` redaction) and delivers them exactly once (`delivery`,
`ledger`, `transport`), keeping what Langfuse refuses in `deadletters` for `replay`.
"""
