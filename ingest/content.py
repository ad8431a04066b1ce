"""What of a run's content may leave the worker: secrets redacted, every field capped.

Codex's stream carries command output, file paths and model text verbatim, and those regularly
contain credentials (an `env` in a command, a token in a config file). Everything sent to
Langfuse passes through `ContentPolicy.clean` first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# (name, pattern): the whole match is replaced. `key=value` shapes whose key names a secret are
# handled after these: only the value is replaced.
SECRET_PATTERNS: tuple[tuple[str, str], ...] = (
    ("private_key", r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)"),
    ("openai_key", r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}"),
    ("langfuse_secret_key", r"\bsk-lf-[A-Za-z0-9-]{8,}"),
    ("anthropic_key", r"\bsk-ant-[A-Za-z0-9_-]{20,}"),
    ("github_token", r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{40,})"),
    ("gitlab_token", r"\bglpat-[A-Za-z0-9_-]{20,}"),
    ("aws_access_key_id", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    ("slack_token", r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),
    ("google_api_key", r"\bAIza[0-9A-Za-z_-]{35}"),
    ("stripe_key", r"\b[rs]k_live_[0-9A-Za-z]{20,}"),
    ("jwt", r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
    ("bearer_token", r"(?i)(?<=\bbearer )[A-Za-z0-9._~+/=-]{16,}"),
    ("url_password", r"(?<=://)[^/\s:@]+:[^/\s@]+(?=@)"),
)

# Lower-case text that every match of the patterns above (and of the assignment rule below)
# contains: text holding none of them needs no regex pass at all, and most text holds none.
MARKERS = (
    "-----begin", "sk-", "gh", "glpat-", "akia", "asia", "xox", "aiza", "_live_", "eyj", "bearer", "://",
    "password", "passwd", "secret", "token", "api", "key",
)

_MARKER = re.compile("|".join(map(re.escape, MARKERS)))

_VALUE_AFTER_ASSIGNMENT = re.compile(
    r"(?i)(\b[A-Za-z0-9_.-]*(?:password|passwd|secret|token|api[_-]?key|access[_-]?key)[A-Za-z0-9_.-]*"
    r"[\"']?\s*[:=]\s*[\"']?)((?!\[REDACTED)(?=[^\s\"',;]*[A-Za-z])[^\s\"',;]{6,})"
)


_SECRET_KEY = re.compile(r"(?i)(?:^|[_.-])(?:password|passwd|secret|token|api[_-]?key|access[_-]?key)(?:$|[_.-])")


def _compile(extra: list[str]) -> list[tuple[str, re.Pattern[str]]]:
    compiled = [(name, re.compile(pattern)) for name, pattern in SECRET_PATTERNS]
    compiled += [(f"custom_{i}", re.compile(pattern)) for i, pattern in enumerate(extra)]
    return compiled


@dataclass
class ContentPolicy:
    capture: bool = True  # False: no inputs or outputs leave the worker, only structure and numbers
    max_field_chars: int = 32_000
    redact: bool = True
    extra_patterns: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._memos: dict[str, dict[Any, Any]] = {}
        self._patterns = _compile(self.extra_patterns)

    def memo(self, name: str) -> dict[Any, Any]:
        """A cache of results that depend only on this policy and their input."""
        return self._memos.setdefault(name, {})

    def redact_text(self, text: str) -> str:
        if not self.redact or not text:
            return text
        if not self.extra_patterns and _MARKER.search(text.lower()) is None:
            return text
        for name, pattern in self._patterns:
            text = pattern.sub(f"[REDACTED:{name}]", text)
        return _VALUE_AFTER_ASSIGNMENT.sub(lambda m: f"{m.group(1)}[REDACTED]", text)

    def clean(self, value: Any) -> Any:
        """Redact every string inside `value` and cap each to `max_field_chars`."""
        if isinstance(value, str):
            return self.cap(self.redact_text(value))
        if isinstance(value, dict):
            return {str(k): "[REDACTED]" if self.redact and isinstance(v, str) and v and _SECRET_KEY.search(str(k))
                    else self.clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.clean(v) for v in value]
        return value

    def cap(self, text: str, limit: int | None = None) -> str:
        limit = self.max_field_chars if limit is None else limit
        if limit <= 0 or len(text) <= limit:
            return text
        return f"{text[:limit]}…[{len(text) - limit} characters cut]"
