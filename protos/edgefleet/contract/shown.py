"""How an offending value appears in an error message or a log line: never whole.

A caller's value can be megabytes, hold control characters or bidi overrides, or be a secret. Messages and
logs show ``shown(value)``: the ``repr`` of at most the first ``SHOWN_CHARS`` characters (so NUL, U+202E and
newlines are escaped, never rendered), and, when it was cut, the full length. Bytes are shown by length only.
"""

from __future__ import annotations

#: How many characters of a value an error message or a log line shows.
SHOWN_CHARS = 80


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """``'abc'``; ``'aaaa…' (7340032 chars)`` when cut; ``<7340032 bytes>`` for bytes."""
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return repr(text) if isinstance(value, str) else text
    head = repr(text[:limit]) if isinstance(value, str) else text[:limit]
    return f"{head}… ({len(text)} chars)"
