"""The shapes Codex prints, read tolerantly.

One stdout line of `codex exec --json` becomes a `Line`: the decoded JSON object (or why it is
not one) and which of Codex's formats it belongs to. Pydantic models describe the fields we
read; every model keeps unknown fields, because future Codex versions add them.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from codex_langfuse.ingest import safe_json


class Format(str, Enum):
    CURRENT = "current"  # 0.44 -> today: {"type": "thread.started" | "item.completed" | ...}
    LEGACY = "legacy"  # Rust --json up to 0.42: {"id": "0", "msg": {"type": ...}}
    LEGACY_HEADER = "legacy_header"  # first lines of the legacy stream: config summary, prompt
    EXPERIMENTAL = "experimental"  # 0.42 --experimental-json: session.created, item_type
    ROLLOUT = "rollout"  # Codex's session files, shipped by `import`/`follow` (start entry says so)
    UNKNOWN = "unknown"  # JSON, but no format we know
    INVALID = "invalid"  # not a JSON object at all


class Tolerant(BaseModel):
    model_config = ConfigDict(extra="allow")


# ---- current format (0.44 -> 0.169) ----------------------------------------------------------


class Usage(Tolerant):
    """`usage` of turn.completed. Cached is a subset of input, reasoning a subset of output."""

    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_output_tokens: int = 0
    cache_write_input_tokens: int = 0

    @field_validator("*", mode="before")
    @classmethod
    def _null_is_zero(cls, value: Any) -> Any:
        return 0 if value is None else value

    def minus(self, earlier: "Usage") -> "Usage":
        return Usage(
            input_tokens=self.input_tokens - earlier.input_tokens,
            cached_input_tokens=self.cached_input_tokens - earlier.cached_input_tokens,
            output_tokens=self.output_tokens - earlier.output_tokens,
            reasoning_output_tokens=self.reasoning_output_tokens - earlier.reasoning_output_tokens,
            cache_write_input_tokens=self.cache_write_input_tokens - earlier.cache_write_input_tokens,
        )

    def covers(self, earlier: "Usage") -> bool:
        """True when every counter is at least `earlier`'s: this can be a later cumulative total."""
        return all(getattr(self, f) >= getattr(earlier, f) for f in USAGE_FIELDS)

    def plus(self, other: "Usage") -> "Usage":
        return Usage(**{f: getattr(self, f) + getattr(other, f) for f in USAGE_FIELDS})

    def is_zero(self) -> bool:
        return not any(getattr(self, f) for f in USAGE_FIELDS)


USAGE_FIELDS = (
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "reasoning_output_tokens",
    "cache_write_input_tokens",
)


class Item(Tolerant):
    id: str = ""
    type: str = ""
    status: str | None = None

    @field_validator("id", "type", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return value if isinstance(value, str) else ("" if value is None else json.dumps(value))


class AgentMessage(Item):
    text: str = ""


class Reasoning(Item):
    text: str = ""


class CommandExecution(Item):
    command: str | list[str] = ""
    aggregated_output: str = ""
    exit_code: int | None = None


class FileChangeEntry(Tolerant):
    path: str = ""
    kind: str = ""


class FileChange(Item):
    changes: list[FileChangeEntry] = []


class McpError(Tolerant):
    message: str = ""


class McpToolCall(Item):
    server: str = ""
    tool: str = ""
    arguments: Any = None
    result: Any = None
    error: McpError | None = None


class CollabToolCall(Item):
    tool: str = ""
    sender_thread_id: str | None = None
    receiver_thread_ids: list[str] = []
    prompt: str | None = None
    agents_states: Any = None


class WebSearch(Item):
    query: str = ""
    action: dict[str, Any] | None = None


class TodoEntry(Tolerant):
    text: str = ""
    completed: bool = False


class TodoList(Item):
    items: list[TodoEntry] = []


class ErrorItem(Item):
    message: str = ""


ITEM_MODELS: dict[str, type[Item]] = {
    "agent_message": AgentMessage,
    "reasoning": Reasoning,
    "command_execution": CommandExecution,
    "file_change": FileChange,
    "mcp_tool_call": McpToolCall,
    "collab_tool_call": CollabToolCall,
    "web_search": WebSearch,
    "todo_list": TodoList,
    "error": ErrorItem,
}


def parse_item(raw: Any) -> Item:
    """The typed item, or a plain `Item` when the type is new or the fields do not fit."""
    if not isinstance(raw, dict):
        return Item(type="invalid", raw=raw)
    model = ITEM_MODELS.get(str(raw.get("type", "")), Item)
    try:
        return model.model_validate(raw)
    except ValidationError:
        return Item.model_validate({k: v for k, v in raw.items() if k in ("id", "type")} | {"raw": raw})


# ---- legacy format (Rust --json <= 0.42) ----------------------------------------------------


class LegacyTokenUsage(Usage):
    """One model request's usage in `token_count` (the same counters, plus a total)."""

    total_tokens: int = 0

    def as_usage(self) -> Usage:
        return Usage(**{name: getattr(self, name) for name in USAGE_FIELDS})


# ---- one line ---------------------------------------------------------------------------------


class Line(BaseModel):
    """One stdout line, decoded. `obj` is None when the line is not a JSON object."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    format: Format
    obj: dict[str, Any] | None = None
    problem: str | None = None  # why the line could not be read, for the WARNING event

    @property
    def type(self) -> str:
        if self.obj is None:
            return ""
        if self.format is Format.LEGACY:
            msg = self.obj.get("msg")
            return str(msg.get("type", "")) if isinstance(msg, dict) else ""
        return str(self.obj.get("type", ""))


DUPLICATE_KEYS = "_duplicate_keys"


def _keep_first(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Codex >= 0.98 prints web_search items with "id" twice ({"id":"item_5",...,"id":"ws_..."});
    # json.loads would keep the second and break started/completed pairing. Keep the first and
    # keep the later ones aside, so nothing the line said is lost.
    obj: dict[str, Any] = dict(pairs)
    if len(obj) == len(pairs):  # no key twice (nearly always): built at C speed
        return obj
    obj = {}
    duplicates: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            duplicates[key] = value
        else:
            obj[key] = value
    if duplicates:
        obj[DUPLICATE_KEYS] = duplicates
    return obj


def detect_format(obj: dict[str, Any]) -> Format:
    kind = obj.get("type")
    if isinstance(kind, str):
        if kind.startswith(("thread.", "turn.", "item.")) or kind == "error":
            return Format.CURRENT
        item = obj.get("item")
        if kind.startswith("session.") or (isinstance(item, dict) and "item_type" in item):
            return Format.EXPERIMENTAL
        return Format.UNKNOWN
    if "msg" in obj and "id" in obj:
        return Format.LEGACY
    if ("workdir" in obj and "model" in obj) or set(obj) == {"prompt"}:
        return Format.LEGACY_HEADER
    return Format.UNKNOWN


def parse_line(text: str) -> Line:
    stripped = text.strip()
    if not stripped:
        return Line(format=Format.INVALID, problem="empty line")
    obj, problem = safe_json.load(stripped, object_pairs_hook=_keep_first)
    if problem is not None:
        return Line(format=Format.INVALID, problem=problem)
    if not isinstance(obj, dict):
        return Line(format=Format.INVALID, problem=f"JSON {type(obj).__name__}, not an object")
    return Line(format=detect_format(obj), obj=obj)


def first_line(text: str, limit: int = 500) -> str:
    """A status message: the provider's own message when Codex passed its JSON error through."""
    text = text.strip()
    body = safe_json.load(text)[0] if text.startswith("{") else None
    if isinstance(body, dict):
        error = body.get("error") if isinstance(body.get("error"), dict) else body
        if isinstance(error.get("message"), str) and error["message"].strip():
            text = error["message"].strip()
    first = text.splitlines()[0] if text else ""
    return first[:limit]
