"""The tools of a rollout turn, as the live stream shows them (see `current_format.tool`): a call
(`function_call`, `custom_tool_call`, `local_shell_call`) and its output paired by `call_id`.

The rule: a command is `command` (input: the command line; output: what it printed; exit code in
metadata, ERROR when it failed), a patch is `file_change` (the paths and kinds), an MCP call is
`<server>.<tool>`, a sub-agent call `subagent.<tool>`, any other tool its own name. The exit code
and the output come from Codex's completion event when it wrote one before the output reached
the model (`item_completed`, `exec_command_end`), else from the output Codex gave the model. Pure.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

from codex_langfuse.ingest.state import Folder, OpenItem

COMMAND_TOOLS = {"exec_command", "shell", "shell_command", "local_shell", "container.exec"}
SUBAGENT_TOOLS = {"spawn_agent", "wait_agent", "wait", "send_input", "close_agent", "resume_agent"}
EXIT_CODE_PATTERNS = (re.compile(r"Process exited with code (-?\d+)"), re.compile(r"^Exit code: (-?\d+)", re.M))
PATCH_HEADER = re.compile(r"^\*\*\* (Add|Update|Delete) File: (.+)$", re.M)
PATCH_KINDS = {"Add": "add", "Update": "update", "Delete": "delete"}


def close_call(folder: Folder, call_id: str, output_text: str | None, end_us: int) -> None:
    opened = folder.state.open_items.pop(call_id, None)
    if opened is not None:
        tool(folder, call_id, opened, output_text, end_us)


def tool(folder: Folder, call_id: str, opened: OpenItem, output_text: str | None, end_us: int,
         incomplete: bool = False, reason: str | None = None) -> None:
    """One `tool` observation, shaped as the live stream's (see `current_format.tool`)."""
    counters = folder.state.counters
    item = opened.item
    name, namespace, arguments = item.get("name") or "", item.get("namespace"), item.get("arguments")
    done: dict[str, Any] = item.get("done") or {}
    metadata: dict[str, Any] = {"call_id": call_id}
    level, status_message = "DEFAULT", None
    parsed_output, exit_code = _parse_output(output_text)
    if done.get("exit_code") is not None:
        exit_code = done["exit_code"]
    patch = _patch_text(name, arguments)
    if patch is not None or done.get("completion") in ("FileChange", "patch_apply_end"):
        counters.file_changes += 1
        observation = "file_change"
        changes = _changes(done.get("changes"), patch)
        tool_input: Any = {"changes": changes}
        failed = done.get("status") == "failed" or done.get("success") is False or exit_code not in (None, 0)
        output: Any = {"status": done.get("status") or ("failed" if failed else "completed"),
                       "output": folder.capped(parsed_output or "")}
        if failed and not incomplete:
            level, status_message = "ERROR", "patch failed"
        elif not incomplete:
            folder.track_files(change["path"] for change in changes)
    elif name in COMMAND_TOOLS or item.get("sub") == "local_shell_call":
        counters.commands += 1
        observation = "command"
        tool_input = _command_text(arguments)
        aggregated = done.get("aggregated_output")
        output = folder.capped(aggregated if isinstance(aggregated, str) else (parsed_output or ""))
        metadata["exit_code"] = exit_code
        if done.get("status") == "declined":
            level, status_message = "ERROR", "declined"
        elif exit_code is None and "aborted by user" in (output_text or ""):
            level, status_message = "WARNING", "aborted by user"
        elif exit_code not in (None, 0) or done.get("status") == "failed":
            level, status_message = "ERROR", f"exit code {exit_code}" if exit_code is not None else "failed"
        if level == "ERROR" and not incomplete:
            counters.failed_commands += 1
    elif (namespace or "").startswith("mcp__") or ("__" in name and not namespace):
        counters.mcp_calls += 1
        server, tool_name = _mcp_names(name, namespace)
        observation = f"{server}.{tool_name}" if server else tool_name
        tool_input = arguments
        output = _maybe_json(folder.capped(output_text or ""))
        metadata.update(server=server, tool=tool_name)
        error = done.get("error")
        if error or done.get("status") == "failed":
            level = "ERROR"
            status_message = (error.get("message") if isinstance(error, dict) else str(error or "")) or "failed"
    elif name in SUBAGENT_TOOLS and (namespace is None or namespace.startswith("multi_agent")):
        counters.subagent_calls += 1
        observation = f"subagent.{name}"
        tool_input = arguments
        output = _maybe_json(folder.capped(output_text or ""))
        receivers = done.get("receiver_thread_ids")
        if not receivers and isinstance(output, dict) and isinstance(output.get("agent_id"), str):
            receivers = [output["agent_id"]]
        if receivers:
            metadata["receiver_thread_ids"] = receivers
        if done.get("status") == "failed":
            level, status_message = "ERROR", "failed"
    else:
        observation = f"{namespace}.{name}" if namespace else name
        tool_input = arguments
        output = _maybe_json(folder.capped(output_text or ""))
    if incomplete:
        level = "ERROR" if level == "ERROR" else "WARNING"
        status_message = reason or "not completed: the turn ended while it was running"
        metadata["incomplete"] = True
    if done.get("status"):
        metadata["status"] = done["status"]
    folder.emit(f"call/{call_id}", "tool", observation or "tool", opened.started_us, end_us, input=tool_input,
                output=output, level=level, status_message=status_message,
                metadata={k: v for k, v in metadata.items() if v is not None})


def finish_incomplete(folder: Folder, item_id: str, opened: OpenItem, at_us: int, reason: str | None = None) -> None:
    tool(folder, item_id, opened, None, at_us, incomplete=True, reason=reason)


def _parse_output(text: str | None) -> tuple[str | None, int | None]:
    """(the output a tool printed, its exit code) from what Codex gave the model: the shell tool's
    JSON `{"output", "metadata": {"exit_code"}}`, unified exec's `Process exited with code N …
    Output:`, apply_patch's `Exit code: N … Output:`."""
    if text is None:
        return None, None
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            body = json.loads(stripped)
        except ValueError:
            body = None
        if isinstance(body, dict) and "output" in body:
            meta = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
            code = meta.get("exit_code")
            return str(body.get("output") or ""), code if isinstance(code, int) else None
    code = None
    for pattern in EXIT_CODE_PATTERNS:
        match = pattern.search(text)
        if match:
            code = int(match.group(1))
            break
    marker = text.find("Output:\n")
    if marker >= 0 and code is not None:
        return text[marker + len("Output:\n"):], code
    return text, code


def _command_text(arguments: Any) -> str:
    if isinstance(arguments, dict):
        command = arguments.get("cmd") or arguments.get("command")
        if isinstance(command, list):
            return shlex.join(str(part) for part in command)
        if isinstance(command, str):
            return command
    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)


def _patch_text(name: str, arguments: Any) -> str | None:
    if name == "apply_patch":
        if isinstance(arguments, str):
            return arguments
        if isinstance(arguments, dict) and isinstance(arguments.get("input"), str):
            return arguments["input"]
        return ""
    if name in ("shell", "local_shell") and isinstance(arguments, dict):
        command = arguments.get("command")
        if isinstance(command, list) and len(command) >= 2 and command[0] == "apply_patch":
            return str(command[1])  # 0.20-0.42: the patch went through the shell tool
    return None


def _changes(reported: Any, patch: str | None) -> list[dict[str, str]]:
    if isinstance(reported, dict) and reported:
        changes = []
        for path, change in reported.items():
            kind = change.get("type") if isinstance(change, dict) else None
            if not kind and isinstance(change, dict):
                kind = next(iter(change), "update")
            changes.append({"path": str(path), "kind": str(kind or "update")})
        return changes
    return [{"path": path.strip(), "kind": PATCH_KINDS[verb]} for verb, path in PATCH_HEADER.findall(patch or "")]


def _mcp_names(name: str, namespace: str | None) -> tuple[str, str]:
    if namespace:
        return namespace[len("mcp__"):].strip("_"), name
    server, _, tool_name = name.partition("__")
    return server, tool_name


def _maybe_json(text: str) -> Any:
    stripped = text.strip()
    if stripped[:1] in ("{", "["):
        try:
            return json.loads(stripped)
        except ValueError:
            pass
    return text
