"""The Rust `--json` format of Codex up to 0.42: `{"id": "0", "msg": {"type": ...}}` lines.

The stream opens with a config summary (`workdir`, `model`, ...) and `{"prompt": ...}`, reports
usage per model request (`token_count`) and has no terminal event: it just ends. Each model
request becomes a `generation`; tool calls pair `*_begin` and `*_end` by `call_id`.
"""

from __future__ import annotations

import shlex
from typing import Any

from pydantic import ValidationError

from codex_langfuse.ingest.entries import Entry
from codex_langfuse.ingest.events import Format, LegacyTokenUsage, Line
from codex_langfuse.ingest.state import Folder, OpenItem


HEADER_META = {"workdir": "cwd", "provider": "provider"}
# The header's settings shown as the generations' model parameters (names as the producer gives them).
HEADER_PARAMETERS = {"reasoning effort": "reasoning_effort", "reasoning summaries": "reasoning_summary",
                     "sandbox": "sandbox_mode", "approval": "approval_policy"}
# Streaming fragments whose content arrives again, whole, in a later event.
IGNORED = {
    "exec_command_output_delta", "agent_message_delta", "agent_reasoning_delta",
    "agent_reasoning_raw_content_delta", "agent_reasoning_section_break", "turn_diff",
    "session_configured", "background_event",
}


def apply(folder: Folder, line: Line, entry: Entry) -> None:
    obj = line.obj or {}
    state = folder.state
    if line.format is Format.LEGACY_HEADER:
        if "prompt" in obj and not state.meta.get("prompt"):
            state.meta["prompt"] = obj["prompt"]
        if isinstance(obj.get("model"), str):
            state.stream_model = obj["model"]
        for key, meta_key in HEADER_META.items():
            if obj.get(key) is not None and not state.meta.get(meta_key):
                state.meta[meta_key] = obj[key]
        for key, name in HEADER_PARAMETERS.items():
            if isinstance(obj.get(key), str) and obj[key]:
                state.stream_parameters[name] = obj[key]
        return
    msg = obj.get("msg") if isinstance(obj.get("msg"), dict) else {}
    kind = str(msg.get("type", ""))
    if kind in IGNORED:
        return
    if kind != "error":
        folder.release_error()
    handler = HANDLERS.get(kind)
    if handler is None:
        folder.unknown(entry, obj, kind or "unknown")
    else:
        handler(folder, msg, entry)


def task_started(folder: Folder, msg: dict[str, Any], entry: Entry) -> None:
    state = folder.state
    state.turns += 1
    state.turn_started_us = entry.ts
    state.request_started_us = entry.ts


def task_complete(folder: Folder, msg: dict[str, Any], entry: Entry) -> None:
    folder.state.outcome = "completed"
    last = msg.get("last_agent_message")
    if isinstance(last, str) and last:
        folder.state.final_message = last


def turn_aborted(folder: Folder, msg: dict[str, Any], entry: Entry) -> None:
    folder.state.outcome = "aborted"
    folder.state.failure = f"turn aborted: {msg.get('reason', 'unknown')}"


def token_count(folder: Folder, msg: dict[str, Any], entry: Entry) -> None:
    state = folder.state
    info = msg.get("info")
    if isinstance(info, dict):
        total = info.get("total_token_usage")
        last = info.get("last_token_usage")
        if not isinstance(last, dict):
            return
        if isinstance(total, dict):
            if total == state.legacy_total:
                return  # 0.36-0.42 print every token_count twice
            state.legacy_total = total
        reported: Any = last
    elif "input_tokens" in msg:  # 0.20: one flat usage per request
        reported = msg
    else:
        return  # `info: null` before the first request
    try:
        request = LegacyTokenUsage.model_validate(reported)
    except ValidationError:
        folder.warning(f"line/{entry.seq}", "invalid_usage", entry.ts, "token_count with unreadable usage", output=msg)
        return
    state.requests += 1
    start = state.request_started_us or state.turn_started_us or entry.ts
    folder.generation(f"request/{state.requests}", f"model request {state.requests}", start, entry.ts,
                      request.as_usage(), request_input_tokens=max(0, request.input_tokens),
                      input=folder.prompt if state.requests == 1 else None,
                      metadata={"request": state.requests})
    state.request_started_us = entry.ts


def agent_reasoning(folder: Folder, msg: dict[str, Any], entry: Entry) -> None:
    folder.event(f"line/{entry.seq}", "reasoning", entry.ts, output=msg.get("text"))


def agent_message(folder: Folder, msg: dict[str, Any], entry: Entry) -> None:
    text = msg.get("message")
    folder.state.counters.agent_messages += 1
    if isinstance(text, str):
        folder.state.final_message = text
    folder.event(f"line/{entry.seq}", "agent_message", entry.ts, output=text)


def plan_update(folder: Folder, msg: dict[str, Any], entry: Entry) -> None:
    plan = msg.get("plan") if isinstance(msg.get("plan"), list) else []
    steps = [{"text": s.get("step"), "completed": s.get("status") == "completed", "status": s.get("status")}
             for s in plan if isinstance(s, dict)]
    done = sum(1 for s in steps if s["completed"])
    metadata: dict[str, Any] = {"completed": done, "total": len(steps)}
    if msg.get("explanation"):
        metadata["explanation"] = msg["explanation"]
    folder.event(f"line/{entry.seq}", "plan", entry.ts, output=steps, metadata=metadata)


def error(folder: Folder, msg: dict[str, Any], entry: Entry) -> None:
    message = msg.get("message")
    folder.hold_error(entry.ts, entry.seq, message if isinstance(message, str) else str(msg))


def begin(folder: Folder, msg: dict[str, Any], entry: Entry) -> None:
    from codex_langfuse.ingest.fold import OpenItem

    call_id = str(msg.get("call_id") or f"seq{entry.seq}")
    folder.state.open_items[call_id] = OpenItem(started_us=entry.ts, item=msg, format=Format.LEGACY)


def end(folder: Folder, msg: dict[str, Any], entry: Entry) -> None:
    from codex_langfuse.ingest.fold import OpenItem

    call_id = str(msg.get("call_id") or f"seq{entry.seq}")
    opened = folder.state.open_items.pop(call_id, None)
    if opened is None:
        duration = msg.get("duration")
        start = entry.ts
        if isinstance(duration, dict):
            start -= int(duration.get("secs", 0)) * 1_000_000 + int(duration.get("nanos", 0)) // 1000
        opened = OpenItem(started_us=start, item={})
    tool(folder, call_id, opened, msg, entry.ts)


def tool(folder: Folder, call_id: str, opened: OpenItem, end_msg: dict[str, Any] | None, end_us: int) -> None:
    """A `tool` observation from a begin event (`opened.item`) and its end event (None if it never came)."""
    counters = folder.state.counters
    begin_msg = opened.item
    done = end_msg or {}
    kind = str(begin_msg.get("type") or done.get("type") or "")
    metadata: dict[str, Any] = {"call_id": call_id}
    level, status_message = "DEFAULT", None
    if kind.startswith("exec_command"):
        counters.commands += 1
        name = "command"
        argv = begin_msg.get("command") or done.get("command") or []
        tool_input: Any = shlex.join(map(str, argv)) if isinstance(argv, list) else str(argv)
        output = done.get("aggregated_output")
        if not isinstance(output, str):
            output = "".join(v for v in (done.get("stdout"), done.get("stderr")) if isinstance(v, str))
        output = folder.capped(output)
        exit_code = done.get("exit_code")
        metadata.update(exit_code=exit_code, cwd=begin_msg.get("cwd"))
        if end_msg is not None and exit_code not in (0, None):
            level, status_message = "ERROR", f"exit code {exit_code}"
            counters.failed_commands += 1
    elif kind.startswith("patch_apply"):
        counters.file_changes += 1
        name = "file_change"
        changes = begin_msg.get("changes") if isinstance(begin_msg.get("changes"), dict) else {}
        listed = [{"path": path, "kind": next(iter(change), "update") if isinstance(change, dict) else "update"}
                  for path, change in changes.items()]
        if done.get("success") is not False and end_msg is not None:
            folder.track_files(changes)
        tool_input = {"changes": listed}
        output = {"success": done.get("success"), "stdout": done.get("stdout"), "stderr": done.get("stderr")}
        if end_msg is not None and done.get("success") is False:
            level, status_message = "ERROR", "patch failed"
    elif kind.startswith("mcp_tool_call"):
        counters.mcp_calls += 1
        invocation = begin_msg.get("invocation") or done.get("invocation") or {}
        server, tool_name = invocation.get("server", ""), invocation.get("tool", "")
        name = f"{server}.{tool_name}" if server else (tool_name or "mcp_tool_call")
        tool_input = invocation.get("arguments")
        result = done.get("result")
        if isinstance(result, dict) and "Err" in result:
            output, level, status_message = {"error": result["Err"]}, "ERROR", str(result["Err"])[:500]
        else:
            output = result.get("Ok") if isinstance(result, dict) and "Ok" in result else result
        metadata.update(server=server, tool=tool_name)
    else:
        counters.web_searches += 1
        name = "web_search"
        tool_input = {"query": done.get("query") or begin_msg.get("query")}
        output = None
    if end_msg is None:
        level = "WARNING"
        status_message = "not completed: the run ended while it was running"
        metadata["incomplete"] = True
    folder.emit(f"call/{call_id}", "tool", name, opened.started_us, end_us, input=tool_input, output=output,
                level=level, status_message=status_message,
                metadata={k: v for k, v in metadata.items() if v is not None})


def finish_incomplete(folder: Folder, item_id: str, opened: OpenItem, at_us: int) -> None:
    tool(folder, item_id, opened, None, at_us)


HANDLERS = {
    "task_started": task_started,
    "task_complete": task_complete,
    "turn_aborted": turn_aborted,
    "token_count": token_count,
    "agent_reasoning": agent_reasoning,
    "agent_message": agent_message,
    "plan_update": plan_update,
    "error": error,
    "exec_command_begin": begin,
    "exec_command_end": end,
    "patch_apply_begin": begin,
    "patch_apply_end": end,
    "web_search_begin": begin,
    "web_search_end": end,
    "mcp_tool_call_begin": begin,
    "mcp_tool_call_end": end,
}
