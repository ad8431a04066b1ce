"""A local stand-in for the OpenAI Responses API, scripted turn by turn, for driving the real Codex.

Codex (0.42.0 and 0.169.0 alike) POSTs ``{base_url}/responses`` with the whole conversation and
its tool list, and reads the answer as server-sent events. Each request consumes the next entry
of the script: a ``ModelTurn`` (the output items the "model" produces, streamed as SSE, with its
token usage) or an ``HttpFault`` (an HTTP error status with a JSON body instead). A tool call in a
turn makes Codex run the tool and POST again with its output, which consumes the next entry.
Every request is recorded, so a test can read what Codex sent back (``function_call_output``...).

Standard library only; listens on 127.0.0.1 on an ephemeral port, in a thread of the test process.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


@dataclass(frozen=True)
class Usage:
    """Token usage of one model call; cached is part of input, reasoning part of output."""

    input_tokens: int = 1000
    output_tokens: int = 50
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_tokens: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "input_tokens_details": {
                "cached_tokens": self.cached_input_tokens,
                "cache_write_tokens": self.cache_write_tokens,
            },
            "output_tokens": self.output_tokens,
            "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
            "total_tokens": self.input_tokens + self.output_tokens,
        }


@dataclass
class ModelTurn:
    """One successful model response: output items streamed in order, then ``response.completed``.

    ``stall_seconds`` holds the stream open after the items and before ``response.completed``
    (a slow model, for interrupting Codex mid-response). ``cut_before_completed`` ends the stream
    there instead, which Codex treats as a disconnect (retried up to ``stream_max_retries``).
    """

    items: list[dict[str, Any]]
    usage: Usage = field(default_factory=Usage)
    stall_seconds: float = 0.0
    cut_before_completed: bool = False  # close the stream without ``response.completed`` (a dropped stream)


@dataclass
class HttpFault:
    """An HTTP error answered instead of a response (consumes one request)."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


ScriptEntry = ModelTurn | HttpFault


# ---- output items (the "model" side of the conversation) -------------------------------------
# Ids are left out here; the server fills ``id``/``call_id`` in when it streams an item, from a
# per-server counter, so they are unique across every run that shares a server (resume).


def reasoning(*summaries: str) -> dict[str, Any]:
    """A reasoning item whose summary parts Codex shows as one ``reasoning`` item each."""
    return {
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": text} for text in summaries],
        "content": None,
        "encrypted_content": None,
    }


def message(text: str) -> dict[str, Any]:
    """An assistant message (an ``agent_message`` in the exec stream)."""
    return {
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def function_call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """A call of any function tool Codex offered (see ``MockResponsesServer.tool_names``)."""
    return {"type": "function_call", "status": "completed", "name": name, "arguments": json.dumps(arguments)}


def exec_command(cmd: str, **extra: Any) -> dict[str, Any]:
    """A shell command through 0.169.0's ``exec_command`` tool (unified exec; ``cmd`` is a string)."""
    return function_call("exec_command", {"cmd": cmd, **extra})


def shell(argv: list[str], **extra: Any) -> dict[str, Any]:
    """A shell command through the older ``shell`` tool (0.42.0; ``command`` is an argv list)."""
    return function_call("shell", {"command": argv, **extra})


def apply_patch(patch: str) -> dict[str, Any]:
    """An ``apply_patch`` call as a freeform custom tool call (how 0.169.0 exposes it)."""
    return {"type": "custom_tool_call", "status": "completed", "name": "apply_patch", "input": patch}


def add_file_patch(path: str, content: str) -> str:
    """The apply_patch text that creates ``path`` (relative to the workspace) with ``content``."""
    body = "".join(f"+{line}\n" for line in content.splitlines())
    return f"*** Begin Patch\n*** Add File: {path}\n{body}*** End Patch\n"


def update_plan(steps: list[tuple[str, str]], explanation: str | None = None) -> dict[str, Any]:
    """An ``update_plan`` call; ``steps`` are ``(text, status)`` with status pending|in_progress|completed."""
    arguments: dict[str, Any] = {"plan": [{"step": step, "status": status} for step, status in steps]}
    if explanation is not None:
        arguments["explanation"] = explanation
    return function_call("update_plan", arguments)


def mcp_call(server: str, tool: str, arguments: dict[str, Any], *, namespaced: bool = True) -> dict[str, Any]:
    """A call of an MCP tool as Codex offers it.

    0.169.0 offers MCP tools in a tool namespace ``mcp__<server>`` and expects the call as
    ``{"name": <tool>, "namespace": "mcp__<server>"}`` (the flat name ``mcp__<server>__<tool>``
    is rejected as "unsupported call"); 0.42.0 offers flat functions named ``<server>__<tool>``
    (``namespaced=False``).
    """
    if namespaced:
        return {**function_call(tool, arguments), "namespace": f"mcp__{server}"}
    return function_call(f"{server}__{tool}", arguments)


def web_search(query: str) -> dict[str, Any]:
    """A hosted web search the model ran itself (Codex only reports it; nothing runs locally)."""
    return {"type": "web_search_call", "status": "completed", "action": {"type": "search", "query": query}}


@dataclass(frozen=True)
class ToolDialect:
    """How one Codex generation wants the model's tool calls shaped (checked on 0.42.0 and 0.169.0).

    0.169.0: shell commands through ``exec_command`` (``cmd`` string), ``apply_patch`` as a freeform
    custom tool, MCP tools in a namespace. 0.42.0: ``shell`` (argv list), ``apply_patch`` by running
    ``["apply_patch", patch]`` through ``shell`` (Codex intercepts it and applies the patch itself),
    MCP tools as flat ``<server>__<tool>`` functions.
    """

    name: str
    unified_exec: bool
    freeform_apply_patch: bool
    namespaced_mcp: bool

    def command(self, cmd: str) -> dict[str, Any]:
        return exec_command(cmd) if self.unified_exec else shell(["bash", "-lc", cmd])

    def patch(self, patch_text: str) -> dict[str, Any]:
        return apply_patch(patch_text) if self.freeform_apply_patch else shell(["apply_patch", patch_text])

    def mcp(self, server: str, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        return mcp_call(server, tool, arguments, namespaced=self.namespaced_mcp)


CURRENT_TOOLS = ToolDialect("0.169.0", unified_exec=True, freeform_apply_patch=True, namespaced_mcp=True)
LEGACY_TOOLS = ToolDialect("0.42.0", unified_exec=False, freeform_apply_patch=False, namespaced_mcp=False)


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("-")[0].split(".") if part.isdigit())


def tools_for_version(version: str) -> ToolDialect:
    """LEGACY_TOOLS for the legacy-stream releases (< 0.44), else CURRENT_TOOLS.

    Only 0.42.0 and 0.169.0 were checked; for a version in between, look at
    ``MockResponsesServer.tool_names()`` of a first request.
    """
    return LEGACY_TOOLS if version_tuple(version) < (0, 44) else CURRENT_TOOLS


def error_body(message: str, *, type_: str = "invalid_request_error", code: str | None = "mock_failure") -> dict[str, Any]:
    """The JSON error body the OpenAI API answers with."""
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


# ---- the server ------------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON when it was JSON, else the raw bytes
    answered_with: str  # "turn", "fault <status>", "exhausted", "not found"


_ID_PREFIX = {
    "reasoning": "rs",
    "message": "msg",
    "function_call": "fc",
    "custom_tool_call": "ctc",
    "web_search_call": "ws",
}


class MockResponsesServer:
    """Serves a script of model turns to Codex. Use as a context manager or call ``close()``."""

    def __init__(self, script: list[ScriptEntry] | None = None, *, model: str = "gpt-5-codex",
                 router: Callable[[Any], ScriptEntry | None] | None = None) -> None:
        """``router(request body)``, when given, answers each request instead of the script: for
        conversations that run side by side (a sub-agent's thread next to its parent's), where the
        order of requests is not fixed; ``client_metadata.thread_id`` says whose request it is."""
        self.model = model
        self.router = router
        self.requests: list[RecordedRequest] = []
        self._script: list[ScriptEntry] = list(script or [])
        self._lock = threading.Lock()
        self._counter = 0
        self._closed = threading.Event()  # ends stalls early so close() never waits for them
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="mock-responses", daemon=True
        )
        self._thread.start()

    # -- public surface --
    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        """What to put in ``[model_providers.mock] base_url`` (Codex appends ``/responses``)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def enqueue(self, *entries: ScriptEntry) -> None:
        """Append entries to the script (e.g. the turns of a resumed run)."""
        with self._lock:
            self._script.extend(entries)

    @property
    def remaining(self) -> int:
        with self._lock:
            return len(self._script)

    def response_requests(self) -> list[dict[str, Any]]:
        """Bodies of the ``POST …/responses`` requests, in order."""
        with self._lock:
            return [r.body for r in self.requests if r.path.rstrip("/").endswith("/responses") and r.method == "POST"]

    def tool_names(self, request_index: int = 0) -> list[str]:
        """Names of the tools Codex offered in one responses request.

        A function tool gives its ``name``, a hosted tool its ``type`` (``web_search``), a tool of a
        namespace ``<namespace>.<name>`` (0.169.0: ``mcp__echo.say``, ``multi_agent_v1.spawn_agent``).
        """
        body = self.response_requests()[request_index]
        names = []
        for tool in body.get("tools", []):
            if tool.get("type") == "namespace":
                names += [f"{tool['name']}.{child.get('name')}" for child in tool.get("tools", [])]
            else:
                names.append(tool.get("name") or tool.get("type"))
        return names

    def tool_outputs(self) -> list[dict[str, Any]]:
        """Every ``function_call_output`` / ``custom_tool_call_output`` Codex sent back (deduplicated by call id)."""
        seen: dict[str, dict[str, Any]] = {}
        for body in self.response_requests():
            for item in body.get("input", []) if isinstance(body, dict) else []:
                if isinstance(item, dict) and item.get("type") in ("function_call_output", "custom_tool_call_output"):
                    seen.setdefault(item.get("call_id"), item)
        return list(seen.values())

    def close(self) -> None:
        self._closed.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> MockResponsesServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals --
    def _next_entry(self, body: Any = None) -> ScriptEntry | None:
        if self.router is not None:
            return self.router(body)
        with self._lock:
            return self._script.pop(0) if self._script else None

    def _stamp(self, item: dict[str, Any]) -> dict[str, Any]:
        """A copy of ``item`` with the ids a real response would carry."""
        with self._lock:
            number = self._counter
            self._counter += 1
        stamped = dict(item)
        stamped.setdefault("id", f"{_ID_PREFIX.get(item['type'], 'item')}_mock_{number}")
        if item["type"] in ("function_call", "custom_tool_call"):
            stamped.setdefault("call_id", f"call_mock_{number}")
        return stamped

    def _response_id(self) -> str:
        with self._lock:
            number = self._counter
            self._counter += 1
        return f"resp_mock_{number}"

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read server.requests
                pass

            def _record(self, body: Any, answered_with: str) -> None:
                with server._lock:
                    server.requests.append(
                        RecordedRequest(self.command, self.path, dict(self.headers.items()), body, answered_with)
                    )

            def _read_body(self) -> Any:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    return json.loads(raw) if raw else None
                except ValueError:
                    return raw

            def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._record(None, "not found")
                self._send_json(404, error_body(f"mock: no route for GET {self.path}", code="not_found"))

            def do_POST(self) -> None:
                body = self._read_body()
                if not self.path.rstrip("/").endswith("/responses"):
                    self._record(body, "not found")
                    self._send_json(404, error_body(f"mock: no route for POST {self.path}", code="not_found"))
                    return
                entry = server._next_entry(body)
                if entry is None:
                    self._record(body, "exhausted")
                    self._send_json(400, error_body("mock: script exhausted (no model turn left)"))
                elif isinstance(entry, HttpFault):
                    self._record(body, f"fault {entry.status}")
                    self._send_json(entry.status, entry.body, entry.headers)
                else:
                    self._record(body, "turn")
                    self._stream_turn(entry)

            def _event(self, event_type: str, payload: dict[str, Any]) -> None:
                data = json.dumps({"type": event_type, **payload})
                self.wfile.write(f"event: {event_type}\ndata: {data}\n\n".encode())
                self.wfile.flush()

            def _stream_turn(self, turn: ModelTurn) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                response_id = server._response_id()
                head = {"id": response_id, "object": "response", "model": server.model}
                try:
                    self._event("response.created", {"response": {**head, "status": "in_progress", "output": []}})
                    output = []
                    for index, item in enumerate(turn.items):
                        item = server._stamp(item)
                        output.append(item)
                        self._stream_item(index, item)
                    if turn.stall_seconds:
                        server._closed.wait(turn.stall_seconds)
                    if turn.cut_before_completed:
                        return
                    self._event(
                        "response.completed",
                        {
                            "response": {
                                **head,
                                "status": "completed",
                                "output": output,
                                "usage": turn.usage.to_wire(),
                            }
                        },
                    )
                except (BrokenPipeError, ConnectionResetError):
                    pass  # Codex went away (interrupted); nothing more to send

            def _stream_item(self, index: int, item: dict[str, Any]) -> None:
                kind = item["type"]
                if kind == "message":
                    self._event("response.output_item.added", {"output_index": index, "item": {**item, "content": []}})
                    for part_index, part in enumerate(item["content"]):
                        self._event(
                            "response.output_text.delta",
                            {"item_id": item["id"], "output_index": index, "content_index": part_index, "delta": part["text"]},
                        )
                elif kind == "reasoning":
                    self._event("response.output_item.added", {"output_index": index, "item": {**item, "summary": []}})
                    for summary_index, part in enumerate(item["summary"]):
                        self._event(
                            "response.reasoning_summary_part.added",
                            {"item_id": item["id"], "output_index": index, "summary_index": summary_index,
                             "part": {"type": "summary_text", "text": ""}},
                        )
                        self._event(
                            "response.reasoning_summary_text.delta",
                            {"item_id": item["id"], "output_index": index, "summary_index": summary_index,
                             "delta": part["text"]},
                        )
                else:
                    self._event("response.output_item.added", {"output_index": index, "item": item})
                self._event("response.output_item.done", {"output_index": index, "item": item})

        return Handler
