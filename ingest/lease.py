"""Short leases in Redis: one holder at a time, renewed while working, lost when it stalls.

A lease is a key holding the holder's random token with an expiry; only the holder can renew or
release it (compare-and-set in Lua), so a holder that stalled past the expiry cannot clobber the
next one's lease.
"""

from __future__ import annotations

import uuid

import redis

RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class LeaseLost(Exception):
    """Someone else holds it now; the former holder must stop without writing."""


class Leases:
    def __init__(self, connection: redis.Redis, seconds: float):
        self.redis = connection
        self.ms = int(seconds * 1000)
        self._renew = connection.register_script(RENEW)
        self._release = connection.register_script(_RELEASE)

    def acquire(self, key: str, owner: str = "") -> str | None:
        """The holder's token (`owner` + a random part), or None when someone holds it."""
        token = f"{owner}{uuid.uuid4().hex}"
        return token if self.redis.set(key, token, nx=True, px=self.ms) else None

    def renew(self, key: str, token: str) -> None:
        if not self._renew(keys=[key], args=[token, self.ms]):
            raise LeaseLost(key)

    def release(self, key: str, token: str) -> bool:
        """True when `token` held it and it is released now."""
        return bool(self._release(keys=[key], args=[token]))

    def holder(self, key: str) -> str | None:
        value = self.redis.get(key)
        return value.decode() if value is not None else None
