"""Logging of the back-end processes: text for people, or JSON (`LOG_FORMAT=json`) for machines.

In JSON every line logged while a run is being worked on carries its run id (`run_id`), set once
per job through `for_run`, so a run's story can be selected out of any worker's log; text lines
about a run start with `run <id>:` already.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
import sys
from typing import Iterator

_run_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("codex_langfuse_run_id", default=None)

TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
JSON_FIELDS = "%(asctime)s %(name)s %(levelname)s %(message)s %(process)d"


# RQ logs a job by its description, outside the job itself: `process_run <run key>` for a job of
# one run (ingest.wake); a job of several runs has no one run id.
_RQ_JOB = re.compile(r"process_run (\S+)")


class _RunIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        run_id = getattr(record, "run_id", None) or _run_id.get()
        if run_id is None and record.name.startswith("rq."):
            found = _RQ_JOB.search(record.getMessage())
            run_id = found.group(1) if found else None
        record.run_id = run_id
        return True


def setup(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RunIdFilter())
    if fmt == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(JsonFormatter(JSON_FIELDS, rename_fields={"levelname": "level", "asctime": "time",
                                                                       "name": "logger", "process": "pid"},
                                           static_fields={}))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


@contextlib.contextmanager
def for_run(run_id: str) -> Iterator[None]:
    token = _run_id.set(run_id)
    try:
        yield
    finally:
        _run_id.reset(token)
