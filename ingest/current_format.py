"""The current stream format (Codex 0.44 -> today): thread/turn/item events.

Each function takes a `Folder` (the protocol in `ingest.state`) and one line; none does I/O.
"""

from __future__ import annotations

import re
from typing import Any

from codex_langfuse.ingest.entries import Entry
from codex_langfuse.ingest.events import (
    DUPLICATE_KEYS,
    Format,
    AgentMessage,
    CollabToolCall,
    CommandExecution,
    ErrorItem,
    FileChange,
    Item,
    Line,
    McpToolCall,
    Reasoning,
    TodoList,
    Usage,
    WebSearch,
    first_line,
    parse_item,
)
from codex_langfuse.ingest.observations import trace_id
from codex_langfuse.ingest.state import Folder, OpenItem


# Codex 0.42 --experimental-json named a few item types differently.
EXPERIMENTAL_ITEM_TYPES = {"assistant_message": "agent_message"}
# Usage is thread-cumulative since 0.98; these keys exist only in versions after that (0.125, 0.145).
CUMULATIVE_ONLY_KEYS = ("reasoning_output_tokens", "cache_write_input_tokens")
CUMULATIVE_SINCE = (0, 98)


def apply(folder: Folder, line: Line, entry: Entry) -> None:
    obj = line.obj or {}
    kind = line.type
    state = folder.state
    if kind != "error" and kind != "turn.failed":
        folder.release_error()
    if kind in ("thread.started", "session.created"):
        thread = obj.get("thread_id") or obj.get("session_id")
        if isinstance(thread, str) and thread:
            state.thread_id = thread
    elif kind == "turn.started":
        state.turns += 1
        state.turn_open = True
        state.turn_started_us = entry.ts
        state.turn_message = None
    elif kind in ("item.started", "item.updated", "item.completed"):
        raw = obj.get("item")
        if isinstance(raw, dict) and isinstance(raw.get("item_type"), str) and "type" not in raw:
            raw = {**raw, "type": EXPERIMENTAL_ITEM_TYPES.get(raw["item_type"], raw["item_type"])}
        item = parse_item(raw)
        item_id = item.id or f"seq{entry.seq}"
        if kind == "item.completed":
            complete_item(folder, item, item_id, entry)
        else:
            begin_item(folder, item, item_id, entry, raw if isinstance(raw, dict) else {})
    elif kind == "error":
        message = obj.get("message")
        folder.hold_error(entry.ts, entry.seq, message if isinstance(message, str) else str(obj))
    elif kind == "turn.completed":
        state.outcome = "completed"
        end_turn(folder, entry, usage_of(obj), obj.get("usage"), extra={k: v for k, v in obj.items() if k not in ("type", "usage")})
    elif kind == "turn.failed":
        if state.held_error is None:
            state.counters.errors += 1  # otherwise the error line before it is this failure, counted once
        folder.release_error(fatal=True)
        error = obj.get("error")
        message = error.get("message") if isinstance(error, dict) else None
        state.outcome = "failed"
        state.failure = message if isinstance(message, str) else str(error)
        end_turn(folder, entry, usage_of(obj), obj.get("usage"), failure=state.failure)
    else:
        folder.unknown(entry, obj, kind or "unknown")


def usage_of(obj: dict[str, Any]) -> Usage | None:
    raw = obj.get("usage")
    if not isinstance(raw, dict):
        return None
    try:
        return Usage.model_validate(raw)
    except ValueError:
        return None


def begin_item(folder: Folder, item: Item, item_id: str, entry: Entry, raw: dict[str, Any]) -> None:
    from codex_langfuse.ingest.fold import OpenItem

    state = folder.state
    if isinstance(item, TodoList):
        plan_event(folder, item, item_id, entry)
        return
    opened = state.open_items.get(item_id)
    started = opened.started_us if opened else entry.ts
    state.open_items[item_id] = OpenItem(started_us=started, item=raw, format=Format.CURRENT)


def complete_item(folder: Folder, item: Item, item_id: str, entry: Entry) -> None:
    state = folder.state
    opened = state.open_items.pop(item_id, None)
    start = opened.started_us if opened else entry.ts
    key = f"item/{item_id}"
    extra = {k: v for k, v in (item.model_extra or {}).items() if k != DUPLICATE_KEYS}
    kept = {"metadata": {"extra_fields": extra}} if extra else {}
    if isinstance(item, AgentMessage):
        state.counters.agent_messages += 1
        state.final_message = item.text
        state.turn_message = item.text
        folder.event(key, "agent_message", entry.ts, output=item.text, **kept)
    elif isinstance(item, Reasoning):
        folder.event(key, "reasoning", entry.ts, output=item.text, **kept)
    elif isinstance(item, TodoList):
        plan_event(folder, item, item_id, entry)
    elif isinstance(item, ErrorItem):
        folder.warning(key, "warning", entry.ts, item.message, output=item.message)
    elif isinstance(item, (CommandExecution, FileChange, McpToolCall, CollabToolCall, WebSearch)):
        tool(folder, item, key, start, entry.ts)
    else:
        extra = item.model_extra or {}
        folder.unknown(entry, extra.get("raw") or item.model_dump(), f"item:{item.type or 'unknown'}")


def plan_event(folder: Folder, item: TodoList, item_id: str, entry: Entry) -> None:
    steps = [{"text": step.text, "completed": step.completed} for step in item.items]
    if folder.state.plans.get(item_id) == steps:
        return  # Codex repeats the final plan on item.completed
    folder.state.plans[item_id] = steps
    done = sum(1 for step in steps if step["completed"])
    folder.event(f"plan/{item_id}/{entry.seq}", "plan", entry.ts, output=steps,
                 metadata={"completed": done, "total": len(steps)})


def tool(folder: Folder, item: Item, key: str, start_us: int, end_us: int, incomplete: bool = False,
         reason: str | None = None) -> None:
    """One `tool` observation for a command, file change, MCP call, sub-agent call or web search."""
    counters = folder.state.counters
    metadata: dict[str, Any] = {"item_id": item.id, "status": item.status}
    extra = {k: v for k, v in (item.model_extra or {}).items() if k != DUPLICATE_KEYS}
    duplicates = (item.model_extra or {}).get(DUPLICATE_KEYS)
    level, status_message = "DEFAULT", None
    if isinstance(item, CommandExecution):
        counters.commands += 1
        name = "command"
        command = item.command if isinstance(item.command, str) else " ".join(item.command)
        tool_input: Any = command
        output: Any = folder.capped(item.aggregated_output)
        metadata["exit_code"] = item.exit_code
        if item.status == "declined":
            level, status_message = "ERROR", "declined"
        elif item.status == "failed" or (item.exit_code not in (None, 0)):
            level, status_message = "ERROR", f"exit code {item.exit_code}" if item.exit_code is not None else "failed"
        if level == "ERROR" and not incomplete:
            counters.failed_commands += 1
    elif isinstance(item, FileChange):
        counters.file_changes += 1
        name = "file_change"
        tool_input = {"changes": [change.model_dump() for change in item.changes]}
        output = {"status": item.status}
        if item.status == "failed":
            level, status_message = "ERROR", "patch failed"
        elif not incomplete:
            folder.track_files(change.path for change in item.changes)
    elif isinstance(item, McpToolCall):
        counters.mcp_calls += 1
        name = f"{item.server}.{item.tool}" if item.server else (item.tool or "mcp_tool_call")
        tool_input = item.arguments
        output = item.result if item.error is None else {"error": item.error.message}
        metadata.update(server=item.server, tool=item.tool)
        if item.error is not None or item.status == "failed":
            level = "ERROR"
            status_message = item.error.message if item.error is not None else "failed"
    elif isinstance(item, CollabToolCall):
        counters.subagent_calls += 1
        name = f"subagent.{item.tool}" if item.tool else "subagent"
        tool_input = {"prompt": item.prompt, "receiver_thread_ids": item.receiver_thread_ids}
        output = item.agents_states
        metadata.update(sender_thread_id=item.sender_thread_id, receiver_thread_ids=item.receiver_thread_ids)
        if item.status == "failed":
            level, status_message = "ERROR", "failed"
    else:
        assert isinstance(item, WebSearch)
        counters.web_searches += 1
        name = "web_search"
        tool_input = {"query": item.query, "action": item.action} if item.action else {"query": item.query}
        output = None
        if isinstance(duplicates, dict) and "id" in duplicates:
            metadata["call_id"] = duplicates["id"]
    if incomplete:
        level = "ERROR" if level == "ERROR" else "WARNING"
        status_message = reason or "not completed: the run ended while it was running"
        metadata["incomplete"] = True
    if extra:
        metadata["extra_fields"] = extra
    folder.emit(key, "tool", name, start_us, end_us, input=tool_input, output=output, level=level,
                status_message=status_message, metadata={k: v for k, v in metadata.items() if v is not None})


def finish_incomplete(folder: Folder, item_id: str, opened: OpenItem, at_us: int, reason: str | None = None) -> None:
    item = parse_item(opened.item)
    if isinstance(item, (CommandExecution, FileChange, McpToolCall, CollabToolCall, WebSearch)):
        tool(folder, item, f"item/{item_id}", opened.started_us, at_us, incomplete=True, reason=reason)


def end_turn(folder: Folder, entry: Entry, reported: Usage | None, raw_usage: Any,
             failure: str | None = None, extra: dict | None = None) -> None:
    state = folder.state
    metadata: dict[str, Any] = {}
    if extra:
        metadata["extra_fields"] = extra
    if reported is not None and reported.model_extra:
        metadata["usage_extra_fields"] = reported.model_extra
    usage = None
    if reported is not None:
        usage = this_runs_usage(folder, reported, raw_usage if isinstance(raw_usage, dict) else {})
        if usage != reported:
            metadata["usage_reported_by_codex"] = reported.model_dump()
            metadata["usage_note"] = "Codex reports usage cumulated over the thread; this run's share is shown"
    if state.thread_id:
        metadata["thread_id"] = state.thread_id
    if usage is not None:
        # An import of the same thread's rollout may have counted this turn already (`turn_claims`).
        owner = folder.claim_turn(state.started_us or entry.ts, entry.ts)
        if owner is not None and owner != state.run_id:
            metadata.update(usage_counted_by={"run_id": owner, "trace_id": trace_id(owner)},
                            usage_not_counted=usage.model_dump())
            usage = None
    turn = max(state.turns, 1)
    folder.generation(
        f"turn/{turn}", f"turn {turn}", state.turn_started_us or entry.ts, entry.ts, usage,
        input=folder.prompt if turn == 1 else None,
        output=state.turn_message,
        level="ERROR" if failure else "DEFAULT",
        status_message=first_line(failure) if failure else None,
        metadata=metadata,
    )
    state.turn_open = False


def _version(text: Any) -> tuple[int, ...] | None:
    match = re.match(r"^\D*(\d+)\.(\d+)", str(text or ""))
    return (int(match.group(1)), int(match.group(2))) if match else None


def this_runs_usage(folder: Folder, reported: Usage, raw_usage: dict[str, Any]) -> Usage:
    """Codex >= 0.98 reports usage cumulated over the thread; keep only what this run added."""
    state = folder.state
    version = _version(state.meta.get("codex_version"))
    if version is not None:
        cumulative = version >= CUMULATIVE_SINCE
    else:
        cumulative = any(key in raw_usage for key in CUMULATIVE_ONLY_KEYS) or None
    if cumulative is False:
        return reported
    previous = state.thread_seen
    if previous is None and not state.baseline_loaded and state.thread_id:
        previous = folder.ctx.thread_baseline(state.thread_id)
        state.baseline_loaded = True
    if state.thread_id:
        folder.remember_thread_total(state.thread_id, reported)
    state.thread_seen = reported
    if previous is None or not reported.covers(previous):
        # Nothing earlier, or the counters went down: not a continuation, take it as reported.
        return reported
    return reported.minus(previous)
