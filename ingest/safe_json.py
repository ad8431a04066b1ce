"""JSON from outside (Codex's lines, a producer's entries), read so that nothing in it can raise
later.

`load` never raises: text that is not JSON, or nested too deep for the parser, comes back as a
problem to report. What it returns is bounded before anyone walks it: containers nested deeper
than `MAX_DEPTH` are replaced by a marker string, integers and floats beyond what a float holds
exactly (`MAX_NUMBER`), and NaN/Infinity, are kept as their text (`BigNumber`). So no later
recursion, float conversion or JSON encoding of a value read here can overflow.
"""

from __future__ import annotations

import json
from typing import Any, Callable

MAX_DEPTH = 64
MAX_NUMBER = 2**53  # beyond it a float is no longer exact; usage, exit codes and scores never get there
DEEPER = f"…[nested deeper than {MAX_DEPTH} levels: cut by codex-langfuse]"


class BigNumber(str):
    """A number of the JSON text that a float cannot hold exactly (or NaN/Infinity), kept as its
    text: a string everywhere, and recognisable where a number was expected."""


def _int(text: str) -> int | str:
    # Python refuses to parse integers of more than 4,300 digits (ValueError); never try.
    if len(text) > 17:
        return BigNumber(text)
    value = int(text)
    return value if -MAX_NUMBER <= value <= MAX_NUMBER else BigNumber(text)


def _float(text: str) -> float | str:
    value = float(text)
    return value if -MAX_NUMBER <= value <= MAX_NUMBER else BigNumber(text)  # also False for inf and nan


def _constant(text: str) -> str:
    return BigNumber(text)  # NaN, Infinity, -Infinity: not JSON


def load(text: str | bytes, object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None
         ) -> tuple[Any, str | None]:
    """(value, None), or (None, why it is not JSON)."""
    try:
        value = json.loads(text, object_pairs_hook=object_pairs_hook, parse_int=_int, parse_float=_float,
                           parse_constant=_constant)
    except RecursionError:
        return None, "not JSON: nested too deep to read"
    except (ValueError, TypeError) as exc:
        return None, f"not JSON: {exc}"
    if isinstance(value, (dict, list)) and _may_be_deep(text):
        value = _cut_deep(value)
    return value, None


def _may_be_deep(text: str | bytes) -> bool:
    # Cheap (C speed): fewer brackets than the limit cannot nest deeper than it.
    if isinstance(text, bytes):
        return text.count(b"[") + text.count(b"{") > MAX_DEPTH
    return text.count("[") + text.count("{") > MAX_DEPTH


def _cut_deep(root: dict | list) -> Any:
    """`root` with every container below MAX_DEPTH replaced by `DEEPER` (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.items() if isinstance(node, dict) else enumerate(node)
        for key, child in list(children):
            if isinstance(child, (dict, list)):
                if depth >= MAX_DEPTH:
                    node[key] = DEEPER
                else:
                    stack.append((child, depth + 1))
    return root
