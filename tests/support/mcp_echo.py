"""A tiny MCP server over stdio with one tool, ``say(text)``, for driving Codex's MCP tool calls.

Newline-delimited JSON-RPC 2.0 on stdin/stdout (the MCP stdio transport), standard library only.
``say`` answers with text content ``"echo: <text>"`` and structured content ``{"echoed": <text>}``.
Configure it in Codex with ``[mcp_servers.echo] command = "<python>"``,
``args = ["-m", "tests.support.mcp_echo"]`` (repository root on ``PYTHONPATH`` or as ``cwd``) or
``args = ["<path of this file>"]``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

SERVER_INFO = {"name": "echo", "version": "1.0.0"}
DEFAULT_PROTOCOL_VERSION = "2025-06-18"

SAY_TOOL = {
    "name": "say",
    "title": "Say",
    "description": "Echo the given text back.",
    "inputSchema": {
        "type": "object",
        "properties": {"text": {"type": "string", "description": "What to echo."}},
        "required": ["text"],
        "additionalProperties": False,
    },
    "outputSchema": {
        "type": "object",
        "properties": {"echoed": {"type": "string"}},
        "required": ["echoed"],
    },
}


class RpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def call_tool(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    if name != "say":
        raise RpcError(-32602, f"unknown tool: {name}")
    text = arguments.get("text")
    if not isinstance(text, str):
        return {"content": [{"type": "text", "text": "say needs a string `text`"}], "isError": True}
    return {
        "content": [{"type": "text", "text": f"echo: {text}"}],
        "structuredContent": {"echoed": text},
        "isError": False,
    }


def handle(method: str, params: dict[str, Any]) -> dict[str, Any]:
    if method == "initialize":
        return {
            "protocolVersion": params.get("protocolVersion") or DEFAULT_PROTOCOL_VERSION,
            "capabilities": {"tools": {"listChanged": False}},
            "serverInfo": SERVER_INFO,
        }
    if method == "ping":
        return {}
    if method == "tools/list":
        return {"tools": [SAY_TOOL]}
    if method == "tools/call":
        return call_tool(params.get("name", ""), params.get("arguments") or {})
    if method in ("resources/list", "resources/templates/list", "prompts/list"):
        key = {"resources/list": "resources", "resources/templates/list": "resourceTemplates", "prompts/list": "prompts"}
        return {key[method]: []}
    raise RpcError(-32601, f"method not found: {method}")


def reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def serve() -> None:
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            request = json.loads(line)
        except ValueError:
            reply({"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "parse error"}})
            continue
        if not isinstance(request, dict) or "method" not in request:
            continue  # a response to something we never ask, or garbage: nothing to answer
        if "id" not in request:
            continue  # notifications (notifications/initialized, cancelled, ...) need no answer
        try:
            result = handle(request["method"], request.get("params") or {})
        except RpcError as error:
            reply({"jsonrpc": "2.0", "id": request["id"], "error": {"code": error.code, "message": error.message}})
        else:
            reply({"jsonrpc": "2.0", "id": request["id"], "result": result})


if __name__ == "__main__":
    serve()
