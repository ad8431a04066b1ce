"""When a failed delivery is tried again, and when it is given up: one pure policy.

`transport` says whether a failure is transient (connection, timeout, 408/425/429, 5xx) and what
Langfuse asked for (Retry-After); this module alone decides what follows. A transient failure
is retried with exponential backoff and full jitter around each step, never sooner than Langfuse
asked, until `retry_for` seconds have passed since the first failure of the streak; then what was
not delivered goes to the dead letters as `retries_exhausted`. Permanent failures are never
retried here: they go to the dead letters at once.

A job that crashes (a worker killed, a Redis hiccup) is re-run by RQ (`JOB_RETRY`); past that the
dispatcher's sweep wakes the run again, so no run depends on one job surviving.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from rq import Retry

JOB_RETRY = Retry(max=3, interval=[5, 30, 120])


@dataclass(frozen=True)
class RetryPolicy:
    base: float = 2.0  # the first step, in seconds
    cap: float = 300.0  # no step is longer
    retry_for: float = 6 * 3600.0  # a streak of failures longer than this is given up

    def delay(self, attempts: int, retry_after: float | None,
              jitter: Callable[[float, float], float] = random.uniform) -> float:
        """Seconds until attempt `attempts + 1`: the step doubles per attempt up to the cap, drawn
        from [0.5, 1.5) of it so failing workers spread out, and never below `retry_after`."""
        step = min(self.cap, self.base * 2 ** max(attempts - 1, 0))
        return max(step * jitter(0.5, 1.5), retry_after or 0.0)

    def gives_up(self, first_failure: float, now: float) -> bool:
        return now - first_failure >= self.retry_for


def not_before(moment: float) -> datetime:
    """A scheduled job's time: RQ's scheduler keeps whole seconds (it truncates), so round up and
    never run early."""
    return datetime.fromtimestamp(math.ceil(moment), tz=timezone.utc)
