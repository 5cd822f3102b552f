"""The Python half of the Lua `req` object: header lookup and argument conversion.

Lua calls into Python only through a handful of plain functions (never by
indexing Python objects), and everything it gets back is a Lua value, so a
script never holds a Python object it could climb out of.
"""

from __future__ import annotations

from typing import Any

# RFC 3261 §7.3.3 compact forms, plus the ones later RFCs registered
# (RFC 3515 Refer-To, RFC 3892 Referred-By, RFC 3841 Accept-/Reject-Contact and
# Request-Disposition, RFC 4028 Session-Expires, RFC 6665 Event/Allow-Events,
# RFC 8224 Identity). The core expands them on the wire; a route may still ask
# for a header by its compact name.
COMPACT_FORMS = {
    "i": "call-id", "m": "contact", "e": "content-encoding", "l": "content-length",
    "c": "content-type", "f": "from", "s": "subject", "k": "supported", "t": "to",
    "v": "via", "r": "refer-to", "b": "referred-by", "a": "accept-contact",
    "j": "reject-contact", "d": "request-disposition", "x": "session-expires",
    "o": "event", "u": "allow-events", "y": "identity",
}

# Deep enough for relay opts, reply headers as {{name, value}, ...}, and vars.
MAX_DEPTH = 4


def canonical_header_name(name: str) -> str:
    """Lower-case name with a compact form expanded: "F" and "From" both give "from"."""
    low = name.lower()
    return COMPACT_FORMS.get(low, low)


def header_values(headers, name: str, all_values: bool):
    """First value (or None) or a tuple of every value of header `name`.

    `headers` is the event's [[name, value], ...] list in wire order.
    """
    want = canonical_header_name(name)
    if not headers:
        return () if all_values else None
    if all_values:
        return tuple(v for n, v in headers if n.lower() == want
                     or COMPACT_FORMS.get(n.lower()) == want)
    for n, v in headers:
        low = n.lower()
        if low == want or COMPACT_FORMS.get(low) == want:
            return v
    return None


def to_python(value: Any, table_type: type, depth: int = 0) -> Any:
    """Turn a Lua table (a lupa table object) into a list or a dict.

    A table whose keys are exactly 1..n becomes a list (an empty table an
    empty list); any other table a dict. Anything else is returned unchanged,
    and the Recorder rejects what it cannot use with a VerbError.
    """
    if type(value) is not table_type:
        return value
    if depth >= MAX_DEPTH:
        raise ValueError("table nested too deeply")
    items = list(value.items())
    keys = [k for k, _ in items]
    if all(type(k) is int for k in keys) and sorted(keys) == list(range(1, len(keys) + 1)):
        return [to_python(v, table_type, depth + 1) for _, v in sorted(items)]
    return {k: to_python(v, table_type, depth + 1) for k, v in items}
