"""A Redis client whose connection calls a test's function before each write: the producer's
sender can be held there (a hung Redis, without waiting out a timeout) or made to fail (a refusing
one), with fakeredis or a real server behind it."""

from __future__ import annotations

from typing import Any, Callable


class InterceptedClient:
    """Wraps a redis-py (or fakeredis) client; `before_send()` runs before every command written."""

    def __init__(self, real: Any, before_send: Callable[[], None]):
        self.real = real
        self.connection_pool = _Pool(real.connection_pool, before_send)

    def close(self) -> None:
        self.real.close()


class _Pool:
    def __init__(self, real: Any, before_send: Callable[[], None]):
        self.real = real
        self.before_send = before_send

    def get_connection(self, *args, **kwargs) -> "_Connection":
        return _Connection(self.real.get_connection(*args, **kwargs), self.before_send)

    def disconnect(self) -> None:
        self.real.disconnect()


class _Connection:
    def __init__(self, real: Any, before_send: Callable[[], None]):
        self.real = real
        self.before_send = before_send

    def send_packed_command(self, command, check_health: bool = True) -> None:
        self.before_send()
        self.real.send_packed_command(command, check_health=check_health)

    def read_response(self, *args, **kwargs):
        return self.real.read_response(*args, **kwargs)

    def disconnect(self) -> None:
        self.real.disconnect()
