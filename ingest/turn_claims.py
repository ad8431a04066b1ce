"""Who counts a turn of a Codex thread: a live capture (`codex-langfuse run`/`tee`) or an import of
the rollout file (`codex-langfuse import`/`follow`). Both may see the same turn, in either order.

The rule: the first run to claim a time window of a thread owns every turn of the thread that
overlaps it. A live run claims [turn start, turn end] as it read them when its turn completes; an
imported turn claims [its first record, its last record] when its worker starts folding it. Codex
runs one turn of a thread at a time and both clocks are the machine's where Codex ran, so the two
windows of one turn overlap and windows of different turns do not. The loser does not count the
turn: an import sends nothing for it, a live run still sends its trace (its id is promised to the
caller) with the turn's generation carrying no usage and naming the run that counted it.

One hash per thread (`Keys.thread_claims`): run id -> "start end" in µs. A claim is one Lua
script, so two workers claiming at once cannot both win; claiming again with the same run is
idempotent (a retried fold gets the same answer) and widens that run's window.
"""

from __future__ import annotations

import redis

from codex_langfuse.ingest.keys import Keys

_CLAIM = """
local claims = redis.call('HGETALL', KEYS[1])
local run, start, finish = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local mine_start, mine_finish = start, finish
for i = 1, #claims, 2 do
  local owner = claims[i]
  local s, f = string.match(claims[i + 1], '^(%-?%d+) (%-?%d+)$')
  s, f = tonumber(s), tonumber(f)
  if owner == run then
    mine_start, mine_finish = math.min(s, start), math.max(f, finish)
  elseif s <= finish and start <= f then
    return owner
  end
end
redis.call('HSET', KEYS[1], run, string.format('%d %d', mine_start, mine_finish))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
return run
"""


class TurnClaims:
    def __init__(self, connection: redis.Redis, keys: Keys, ttl: int = 30 * 86400):
        self.redis = connection
        self.keys = keys
        self.ttl = ttl
        self._script = connection.register_script(_CLAIM)

    def claim(self, thread: str, run: str, start_us: int, end_us: int) -> str:
        """The run that counts the turns of `thread` overlapping [start_us, end_us]: `run`, unless
        another run claimed an overlapping window first."""
        start, end = min(start_us, end_us), max(start_us, end_us)
        owner = self._script(keys=[self.keys.thread_claims(thread)], args=[run, start, end, self.ttl])
        return owner.decode() if isinstance(owner, bytes) else str(owner)

    def owner(self, thread: str, start_us: int, end_us: int) -> str | None:
        """Who claimed a window overlapping this one, without claiming (read only)."""
        for run, window in self.redis.hgetall(self.keys.thread_claims(thread)).items():
            first, last = (int(part) for part in window.split())
            if first <= end_us and start_us <= last:
                return run.decode()
        return None
