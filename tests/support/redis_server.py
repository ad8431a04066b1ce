"""The integration tests' real redis-server (the same class the demo starts)."""

from codex_langfuse.ingest.local_redis import LocalRedis as RedisServer, free_port

__all__ = ["RedisServer", "free_port"]
