"""Codex's rollout records (its session files, shipped by `codex-langfuse import`/`follow`) folded
into the same trace shape as a live run: one run is one turn.

The rule, era by era (`producer/rollouts.py` describes the eras):
- the model is the latest `turn_context.model` (per request in 0.98, per turn later);
- one `generation` per model request: a `token_usage_record` (one per response, 0.153+), else a
  `token_count` whose thread total moved (Codex writes each twice in 0.42-0.130 and repeats the
  last one when a turn starts; the total before the turn comes in the start entry), with that
  request's own `last_token_usage`; priced as of the record's date, the long-context tier decided
  by that request's input; 0.20 wrote no usage: its requests are inferred from the transcript
  and carry none;
- tools pair `function_call`/`custom_tool_call`/`local_shell_call` with their output by
  `call_id`; the exit code comes from Codex's completion event (`item_completed`,
  `exec_command_end`) or, failing that, from the output Codex gave the model;
- the input is the user's own prompt (`user_message`, a `UserMessage` item, or the user's
  transcript message that is not context Codex injected: environment, AGENTS.md, notifications);
- reasoning summaries, messages and plans are events; the transcript (`response_item`) is the
  source, since its mirror events (`agent_message`, `agent_reasoning`, `item_completed`) repeat it.
Each function takes a `Folder` (the protocol in `ingest.state`) and does no I/O.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from codex_langfuse.ingest.entries import Entry
from codex_langfuse.ingest.events import Format, LegacyTokenUsage, Line, first_line
from codex_langfuse.ingest.rollout_tools import close_call, finish_incomplete
from codex_langfuse.ingest.state import Folder, OpenItem
from codex_langfuse.producer.rollouts import is_injected, message_text

# Mirrors of transcript items, streaming fragments and bookkeeping: nothing of their own to show.
IGNORED_EVENTS = {
    "agent_message", "agent_reasoning", "agent_reasoning_raw_content", "agent_message_delta",
    "agent_reasoning_delta", "agent_reasoning_raw_content_delta", "agent_reasoning_section_break",
    "exec_command_begin", "exec_command_output_delta", "patch_apply_begin", "mcp_tool_call_begin",
    "web_search_begin", "web_search_end", "turn_diff", "plan_update", "item_started", "item_updated",
    "thread_settings_applied", "background_event", "session_configured", "mcp_list_tools_response",
    "get_history_entry_response", "shutdown_complete", "user_message_delta", "view_image_tool_call",
    "thread_name_updated", "raw_response_item", "token_usage_record",
}
IGNORED_RECORDS = {"session_meta", "world_state", "state"}
COMPLETION_EVENTS = {"exec_command_end", "patch_apply_end", "mcp_tool_call_end"}
__all__ = ["apply", "before_close", "finish_incomplete"]  # what `fold` calls
TOOL_ITEMS = {"CommandExecution", "FileChange", "McpToolCall", "CollabAgentToolCall", "CollabToolCall", "WebSearch",
              "DynamicToolCall"}
MAX_REQUEST_ITEMS = 50
MAX_KEPT_UNKNOWN = 20


def _ro(folder: Folder) -> dict[str, Any]:
    return folder.state.rollout


def begin(folder: Folder, entry: Entry) -> None:
    """The first line: the run's place in its thread (from the start entry), and whether a live
    capture already counted this turn."""
    state = folder.state
    ro = _ro(folder)
    ro["begun"] = True
    state.format = Format.ROLLOUT
    meta = state.meta.get("rollout") if isinstance(state.meta.get("rollout"), dict) else {}
    if isinstance(meta.get("thread_id"), str) and meta["thread_id"]:
        state.thread_id = meta["thread_id"]
    state.turns = 1
    state.turn_started_us = state.started_us or entry.ts
    ro["input_at"] = state.turn_started_us
    total = meta.get("prior_token_total")
    if isinstance(total, dict):
        state.legacy_total = total
    owner = folder.claim_turn(_int(meta.get("started_us"), state.turn_started_us), _int(meta.get("ended_us"), entry.ts))
    if owner is not None and owner != state.run_id:
        state.superseded_by = owner


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def apply(folder: Folder, line: Line, entry: Entry) -> None:
    state = folder.state
    if not _ro(folder).get("begun"):
        begin(folder, entry)
    if state.superseded_by:
        return
    obj = line.obj or {}
    payload = obj.get("payload")
    if isinstance(payload, dict) and isinstance(obj.get("type"), str):
        kind, sub = obj["type"], str(payload.get("type") or "")
    elif "record_type" in obj:
        return  # 0.20's state markers
    else:
        kind, sub, payload = "raw", str(obj.get("type") or ""), obj  # 0.20: the transcript item itself
        _ro(folder)["inferred_requests"] = True
    if kind in ("response_item", "raw"):
        response_item(folder, sub, payload, entry)
    elif kind == "event_msg":
        event_msg(folder, sub, payload, entry)
    elif kind == "turn_context":
        turn_context(folder, payload)
    elif kind == "token_usage_record":
        _ro(folder)["by_records"] = True
        usage = payload.get("usage")
        response = str(payload.get("response_id") or "")
        seen = _ro(folder).setdefault("responses", [])
        if response and response in seen:
            return
        if response:
            seen.append(response)
            del seen[:-200]
        request(folder, entry, usage, key=f"response/{response}" if response else None, response_id=response or None)
    elif kind == "compacted":
        folder.event(f"line/{entry.seq}", "compaction", entry.ts, output=folder.capped(str(payload.get("message") or "")))
    elif kind in IGNORED_RECORDS:
        return
    else:
        unknown(folder, entry, obj, kind)


def turn_context(folder: Folder, payload: dict[str, Any]) -> None:
    state = folder.state
    if isinstance(payload.get("model"), str) and payload["model"]:
        state.stream_model = payload["model"]
    effort = payload.get("effort")
    if not effort and isinstance(payload.get("collaboration_mode"), dict):
        settings = payload["collaboration_mode"].get("settings")
        effort = settings.get("reasoning_effort") if isinstance(settings, dict) else None
    if effort:
        _ro(folder)["effort"] = effort
    tier = payload.get("service_tier")
    if isinstance(tier, str) and tier and not state.meta.get("service_tier"):
        state.meta["service_tier"] = tier


# ---- event_msg ---------------------------------------------------------------------------------


def event_msg(folder: Folder, sub: str, payload: dict[str, Any], entry: Entry) -> None:
    state = folder.state
    ro = _ro(folder)
    if sub == "token_count":
        if ro.get("by_records"):
            return
        info = payload.get("info")
        if not isinstance(info, dict):
            return
        total, last = info.get("total_token_usage"), info.get("last_token_usage")
        if isinstance(total, dict):
            if total == state.legacy_total:
                return  # written twice (0.42-0.130), or repeated at the start of a turn
            state.legacy_total = total
        if isinstance(last, dict):
            request(folder, entry, last)
    elif sub == "task_started":
        state.turn_started_us = state.turn_started_us or entry.ts
        ro["input_at"] = max(ro.get("input_at") or 0, entry.ts)
    elif sub == "task_complete":
        finish_requests(folder, entry.ts)
        if state.outcome is None:
            state.outcome = "failed" if ro.get("error") and not state.final_message else "completed"
            if state.outcome == "failed":
                state.failure = ro["error"]
        last = payload.get("last_agent_message")
        if isinstance(last, str) and last and not state.final_message:
            state.final_message = last
    elif sub == "turn_aborted":
        finish_requests(folder, entry.ts)
        state.outcome = "aborted"
        state.failure = f"turn aborted: {payload.get('reason') or 'unknown reason'}"
    elif sub == "user_message":
        message = payload.get("message")
        if isinstance(message, str):
            user_text(folder, message, entry)
    elif sub == "item_completed":
        item_completed(folder, payload.get("item"), entry)
    elif sub in COMPLETION_EVENTS:
        call_id = str(payload.get("call_id") or "")
        if call_id:
            completion(folder, call_id, {**payload, "completion": sub})
    elif sub == "error":
        message = str(payload.get("message") or payload)
        state.counters.errors += 1
        ro["error"] = message
        folder.event(f"line/{entry.seq}", "error", entry.ts, output=message, level="ERROR",
                     status_message=first_line(message))
    elif sub in ("stream_error", "warning"):
        message = str(payload.get("message") or payload)
        folder.warning(f"line/{entry.seq}", sub, entry.ts, first_line(message), output=message)
    elif sub == "context_compacted":
        folder.event(f"line/{entry.seq}", "compaction", entry.ts)
    elif sub in IGNORED_EVENTS:
        return
    else:
        unknown(folder, entry, payload, f"event_msg:{sub or 'unknown'}")


def item_completed(folder: Folder, item: Any, entry: Entry) -> None:
    if not isinstance(item, dict):
        return
    kind = str(item.get("type") or "")
    if kind == "UserMessage":
        text = message_text(item)
        if text:
            user_text(folder, text, entry)
    elif kind in TOOL_ITEMS and item.get("id"):
        completion(folder, str(item["id"]), {**item, "completion": kind})


def completion(folder: Folder, call_id: str, info: dict[str, Any]) -> None:
    """What Codex reports when a tool finished (exit code, output, changes): kept with the call
    until its output reaches the model, or held for a call that is not open yet."""
    opened = folder.state.open_items.get(call_id)
    if opened is not None:
        opened.item["done"] = _slim(info)
        return
    held = _ro(folder).setdefault("done", {})
    held[call_id] = _slim(info)
    for stale in list(held)[:-50]:
        del held[stale]


def _slim(info: dict[str, Any]) -> dict[str, Any]:
    keep = ("completion", "status", "exit_code", "aggregated_output", "stdout", "stderr", "formatted_output",
            "changes", "success", "receiver_thread_ids", "receiver_agents", "agents_states", "error", "result",
            "server", "tool", "invocation", "duration", "tool")
    return {key: info[key] for key in keep if key in info}


def user_text(folder: Folder, text: str, entry: Entry) -> None:
    """The user's own words: the first become the run's input, later different ones are events."""
    if is_injected(text):
        return
    state = folder.state
    ro = _ro(folder)
    ro["input_at"] = max(ro.get("input_at") or 0, entry.ts)
    if ro.get("last_user_text") == text:
        return  # the same message as transcript item and as event
    ro["last_user_text"] = text
    if state.meta.get("prompt") is None:
        state.meta["prompt"] = text
        return
    folder.event(f"line/{entry.seq}", "user_message", entry.ts, output=text)


# ---- response_item -------------------------------------------------------------------------------


def response_item(folder: Folder, sub: str, payload: dict[str, Any], entry: Entry) -> None:
    state = folder.state
    ro = _ro(folder)
    if sub == "message":
        role = payload.get("role")
        text = message_text(payload)
        if role == "assistant":
            model_output(folder, entry, {"type": "message", "text": folder.capped(text)})
            state.counters.agent_messages += 1
            state.final_message = text
            folder.event(f"line/{entry.seq}", "agent_message", entry.ts, output=text)
        elif role == "user":
            end_inferred_request(folder, entry)
            user_text(folder, text, entry)
        return
    if sub == "reasoning":
        texts = [part.get("text") for part in payload.get("summary") or [] if isinstance(part, dict)]
        text = "\n\n".join(t for t in texts if isinstance(t, str) and t)
        model_output(folder, entry, {"type": "reasoning", "text": folder.capped(text)})
        if text:
            folder.event(f"line/{entry.seq}", "reasoning", entry.ts, output=text)
        return
    if sub in ("function_call", "custom_tool_call", "local_shell_call"):
        open_call(folder, sub, payload, entry)
        return
    if sub in ("function_call_output", "custom_tool_call_output"):
        end_inferred_request(folder, entry)
        ro["input_at"] = max(ro.get("input_at") or 0, entry.ts)
        call_id = str(payload.get("call_id") or "")
        output = payload.get("output")
        text = output if isinstance(output, str) else json.dumps(output, ensure_ascii=False)
        opened = state.open_items.get(call_id)
        if opened is None:
            return  # the output of a call made in an earlier turn, or a plan update already shown
        close_call(folder, call_id, text, entry.ts)
        return
    if sub == "web_search_call":
        model_output(folder, entry, {"type": "web_search"})
        action = payload.get("action") if isinstance(payload.get("action"), dict) else {}
        query = action.get("query") or payload.get("query")
        state.counters.web_searches += 1
        key = f"ws/{payload.get('id') or entry.seq}"
        folder.emit(key, "tool", "web_search", entry.ts, entry.ts, input={"query": query, "action": action or None},
                    metadata={k: v for k, v in {"call_id": payload.get("id"), "status": payload.get("status")}.items() if v})
        return
    unknown(folder, entry, payload, f"response_item:{sub or 'unknown'}")


def model_output(folder: Folder, entry: Entry, item: dict[str, Any]) -> None:
    """What the model produced, kept for its request's generation; the first output of a request
    dates its start (the input just before it), the last its end."""
    ro = _ro(folder)
    items = ro.setdefault("items", [])
    if len(items) < MAX_REQUEST_ITEMS:
        items.append(item)
    if ro.get("output_at") is None:
        ro["request_from"] = max(folder.state.request_started_us or 0, ro.get("input_at") or 0) or None
    ro["output_at"] = entry.ts


def open_call(folder: Folder, sub: str, payload: dict[str, Any], entry: Entry) -> None:
    state = folder.state
    name = str(payload.get("name") or ("local_shell" if sub == "local_shell_call" else sub))
    namespace = payload.get("namespace") if isinstance(payload.get("namespace"), str) else None
    call_id = str(payload.get("call_id") or payload.get("id") or f"seq{entry.seq}")
    arguments: Any = payload.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            pass
    if sub == "custom_tool_call":
        arguments = payload.get("input")
    if sub == "local_shell_call":
        arguments = payload.get("action")
    model_output(folder, entry, {"type": "tool_call", "name": name if not namespace else f"{namespace}.{name}",
                                 "call_id": call_id})
    if name == "update_plan" and isinstance(arguments, dict):
        plan_event(folder, arguments, call_id, entry)
        return
    item = {"sub": sub, "name": name, "namespace": namespace, "arguments": arguments}
    held = _ro(folder).get("done", {}).pop(call_id, None)
    if held is not None:
        item["done"] = held
    state.open_items[call_id] = OpenItem(started_us=entry.ts, item=item, format=Format.ROLLOUT)


def plan_event(folder: Folder, arguments: dict[str, Any], call_id: str, entry: Entry) -> None:
    plan = arguments.get("plan") if isinstance(arguments.get("plan"), list) else []
    steps = [{"text": s.get("step"), "completed": s.get("status") == "completed", "status": s.get("status")}
             for s in plan if isinstance(s, dict)]
    metadata: dict[str, Any] = {"completed": sum(1 for s in steps if s["completed"]), "total": len(steps)}
    if arguments.get("explanation"):
        metadata["explanation"] = arguments["explanation"]
    folder.event(f"plan/{call_id}", "plan", entry.ts, output=steps, metadata=metadata)


# ---- model requests -----------------------------------------------------------------------------


def request(folder: Folder, entry: Entry, usage: Any, key: str | None = None, response_id: str | None = None) -> None:
    """One model request's generation, from the usage Codex recorded for it."""
    try:
        counted = LegacyTokenUsage.model_validate(usage) if isinstance(usage, dict) else None
    except ValidationError:
        counted = None
        folder.warning(f"line/{entry.seq}", "invalid_usage", entry.ts, "usage record with unreadable counts",
                       output=usage)
        return
    generation(folder, entry.ts, counted, key, response_id)


def generation(folder: Folder, end_us: int, usage: LegacyTokenUsage | None, key: str | None = None,
               response_id: str | None = None) -> None:
    state = folder.state
    ro = _ro(folder)
    state.requests += 1
    number = state.requests
    output_at = ro.pop("output_at", None)
    start = ro.pop("request_from", None) or max(state.request_started_us or 0, ro.get("input_at") or 0) \
        or state.turn_started_us or end_us
    if output_at is not None and (ro.get("input_at") or 0) > output_at:
        end_us = output_at  # the usage was written after the tool the model called had run
    metadata: dict[str, Any] = {"request": number}
    if response_id:
        metadata["response_id"] = response_id
    if ro.get("effort"):
        metadata["reasoning_effort"] = ro["effort"]
    if usage is None:
        metadata["usage_note"] = "this Codex version recorded no token usage"
    items = ro.pop("items", None) or None
    folder.generation(
        key or f"request/{number}", f"model request {number}", min(start, end_us), end_us,
        usage.as_usage() if usage is not None else None,
        request_input_tokens=max(0, usage.input_tokens) if usage is not None else None,
        input=folder.prompt if number == 1 else None, output=items, metadata=metadata,
    )
    state.request_started_us = end_us


def end_inferred_request(folder: Folder, entry: Entry) -> None:
    """0.20 recorded no usage: a request ends where the model's output gives way to input."""
    ro = _ro(folder)
    if ro.get("inferred_requests") and ro.get("output_at") is not None:
        generation(folder, ro["output_at"], None)


def finish_requests(folder: Folder, at_us: int) -> None:
    ro = _ro(folder)
    if ro.get("inferred_requests") and ro.get("output_at") is not None:
        generation(folder, ro["output_at"], None)


# ---- the end -------------------------------------------------------------------------------------


def before_close(folder: Folder, at_us: int) -> None:
    """The turn's outcome where its records did not say: from how the importer saw it end."""
    state = folder.state
    finish_requests(folder, at_us)
    meta = state.meta.get("rollout") if isinstance(state.meta.get("rollout"), dict) else {}
    status = meta.get("status")
    if state.outcome is None:
        if status in ("completed", "ended"):
            state.outcome = "failed" if _ro(folder).get("error") and not state.final_message else "completed"
            if state.outcome == "failed":
                state.failure = _ro(folder)["error"]
        else:
            state.outcome = "aborted"
            state.failure = {
                "superseded": "turn did not complete: a new turn started before Codex marked this one complete",
                "abandoned": "turn did not complete: no record for the idle timeout (given up)",
            }.get(status, f"turn did not complete ({status or 'no end recorded'})")
    if state.requests == 0 and state.outcome == "completed" and not state.final_message:
        # Codex marks a turn whose model request failed complete, with no message and no usage:
        # the rollout keeps no error, only the absence of any response.
        state.outcome = "failed"
        state.failure = "no model response recorded for this turn (the request failed or was cancelled)"
        state.counters.errors += 1


def unknown(folder: Folder, entry: Entry, obj: dict[str, Any], name: str) -> None:
    """A record type this version does not know: counted; the first of each type kept as an event,
    the others in the run's summary of what was not shown."""
    state = folder.state
    state.counters.unknown_events += 1
    kept = _ro(folder).setdefault("unknown_kept", [])
    show = name not in kept and len(kept) < MAX_KEPT_UNKNOWN
    if show:
        kept.append(name)
    folder.problem(f"line/{entry.seq}", name, entry.ts, f"unknown record type {name!r}", output=obj,
                   metadata={"unknown_type": True, "seq": entry.seq}, level=None, show=show)

