"""`codex-langfuse show RUN_ID`: a run's trace as the local sink holds it, as a tree."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from codex_langfuse.ingest.observations import trace_id

ATTRIBUTE = "langfuse.observation."


def load_trace(sink_dir: Path, run_or_trace: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
    trace = run_or_trace if re.fullmatch(r"[0-9a-f]{32}", run_or_trace) else trace_id(run_or_trace)
    folder = Path(sink_dir) / trace
    if not folder.is_dir():
        return None
    spans = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    scores = [json.loads(p.read_text()) for p in sorted((folder / "scores").glob("*.json"))]
    return spans, scores


def attributes(span: dict[str, Any]) -> dict[str, str]:
    return {a["key"]: next(iter(a["value"].values()), None) for a in span.get("attributes", [])}


def _short(text: str | None, limit: int = 70) -> str:
    if text is None:
        return ""
    one_line = " ".join(str(text).split())
    return one_line if len(one_line) <= limit else one_line[: limit - 1] + "…"


def describe(span: dict[str, Any], t0: int) -> str:
    attrs = attributes(span)
    kind = attrs.get(f"{ATTRIBUTE}type", "span")
    level = attrs.get(f"{ATTRIBUTE}level", "DEFAULT")
    start = (int(span["startTimeUnixNano"]) - t0) / 1e9
    duration = (int(span["endTimeUnixNano"]) - int(span["startTimeUnixNano"])) / 1e9
    parts = [f"{kind:<10} {span['name']}", f"+{start:.3f}s"]
    if duration:
        parts.append(f"{duration:.3f}s")
    if level != "DEFAULT":
        parts.append(f"[{level}] {_short(attrs.get(f'{ATTRIBUTE}status_message'), 60)}")
    if kind == "generation":
        parts.append(f"model={attrs.get(f'{ATTRIBUTE}model.name')}")
        usage = json.loads(attrs.get(f"{ATTRIBUTE}usage_details") or "null")
        cost = json.loads(attrs.get(f"{ATTRIBUTE}cost_details") or "null")
        if usage:
            parts.append("usage " + " ".join(f"{k}={v}" for k, v in usage.items()))
        parts.append(f"cost ${cost['total']:.6f}" if cost else "cost: not priced")
    elif kind in ("tool", "agent"):
        if attrs.get(f"{ATTRIBUTE}input"):
            parts.append(f"in: {_short(attrs.get(f'{ATTRIBUTE}input'), 50)}")
        if attrs.get(f"{ATTRIBUTE}output"):
            parts.append(f"out: {_short(attrs.get(f'{ATTRIBUTE}output'), 50)}")
    elif attrs.get(f"{ATTRIBUTE}output"):
        parts.append(_short(attrs.get(f"{ATTRIBUTE}output"), 60))
    return "  ".join(parts)


def render_trace(sink_dir: Path, run_or_trace: str, as_json: bool = False) -> str | None:
    loaded = load_trace(sink_dir, run_or_trace)
    if loaded is None:
        return None
    spans, scores = loaded
    if as_json:
        return json.dumps({"spans": spans, "scores": scores}, indent=1)
    children: dict[str | None, list[dict[str, Any]]] = {}
    ids = {s["spanId"] for s in spans}
    for span in spans:
        parent = span.get("parentSpanId")
        children.setdefault(parent if parent in ids else None, []).append(span)
    for siblings in children.values():
        siblings.sort(key=lambda s: (int(s["startTimeUnixNano"]), s["name"]))
    t0 = min((int(s["startTimeUnixNano"]) for s in spans), default=0)
    lines = [f"trace {spans[0]['traceId'] if spans else ''} ({len(spans)} observations)"]

    def walk(parent: str | None, depth: int) -> None:
        for span in children.get(parent, []):
            lines.append("  " * depth + describe(span, t0))
            walk(span["spanId"], depth + 1)

    walk(None, 1)
    if scores:
        lines.append("scores: " + ", ".join(f"{s['name']}={s['value']}" for s in sorted(scores, key=lambda s: s["name"])))
    return "\n".join(lines)
