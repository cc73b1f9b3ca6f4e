"""Hypothesis strategies for the wire: arbitrary and hostile JSON, frames and bytes, and
valid messages built from the models' own constraints."""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import strategies as st

from gateway.protocol import SESSION_ID_PATTERN

__all__ = [
    "DEEPER",
    "examples",
    "hostile_bytes",
    "hostile_text",
    "json_values",
    "message_like",
    "nasty_text",
    "session_ids",
    "text_frames",
    "unicode_text",
    "whatsapp_deliveries",
]

#: ``DUET_FUZZ_EXAMPLES``: examples per property when exploring deeper than CI does.
DEEPER = int(os.environ.get("DUET_FUZZ_EXAMPLES", "0") or 0)


def examples(default: int, *, socket: bool = False) -> int:
    """How many examples a property runs: ``default``, or what DUET_FUZZ_EXAMPLES asks."""
    if not DEEPER:
        return default
    return max(1, DEEPER // 4) if socket else DEEPER


#: Characters that break naive code: lone surrogates, NUL, BOM, bidi override, quotes,
#: backslashes, line separators, astral emoji, combining marks.
_NASTY_CHARS = ["\ud800", "\udfff", "\x00", "\ufeff", "\u202e", '"', "\\", "\u2028",
                "\U0001f600", "\u0301", "\r", "\n", "\x7f", "\uffff"]

#: Any text, lone surrogates and other hostile characters included.
nasty_text = st.text(st.characters(exclude_categories=()) | st.sampled_from(_NASTY_CHARS),
                     max_size=40)
#: Text that is valid Unicode (what a websocket text frame or UTF-8 JSON can carry).
unicode_text = st.text(st.characters(exclude_categories=["Cs"]) | st.sampled_from(
    [c for c in _NASTY_CHARS if not "\ud800" <= c <= "\udfff"]), max_size=40)

_scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-2**70,
            max_value=2**70) | st.floats(allow_nan=False, allow_infinity=False)
            | unicode_text)

#: Any JSON value (finite numbers), a few levels deep.
json_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(unicode_text, inner,
                                                                max_size=4),
    max_leaves=12)

session_ids = st.from_regex(SESSION_ID_PATTERN, fullmatch=True)


def message_like(types: list[str], fields: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects shaped like a message: a known (or odd) ``type`` and known (or odd) fields with
    arbitrary values — the inputs that reach the models' validation."""
    return st.builds(
        lambda kind, values, extra: {**({} if kind is None else {"type": kind}), **values,
                                     **extra},
        st.none() | st.sampled_from(types) | json_values,
        st.dictionaries(st.sampled_from(fields), json_values | session_ids, max_size=4),
        st.dictionaries(unicode_text, json_values, max_size=2))


def _deep(depth: int, opener: str) -> str:
    closer = {"[": "]", '{"a":': "}"}[opener]
    return opener * depth + "1" + closer * depth


#: Raw text that is not (quite) JSON, or JSON that stresses the parser.
hostile_text = st.one_of(
    nasty_text,
    st.builds(_deep, st.integers(150, 10_000), st.sampled_from(["[", '{"a":'])),
    st.builds(lambda n: '{"type": "hello", "resume_from": ' + "9" * n + "}",
              st.integers(4000, 6000)),  # integer literals past Python's 4300 digits
    st.sampled_from([
        "NaN", "Infinity", "-Infinity", '{"type": "message", "text": NaN}',
        '{"type": "hello", "resume_from": Infinity}', '{"type": "hello", "resume_from": 1e999}',
        '{"type": "message", "text": "a", "text": "b"}', '{"type": "cancel", "type": "cancel"}',
        "\ufeff{\"type\": \"cancel\"}", '{"type": "message", "text": "\\ud800"}',
        '{"type": "message", "text": "\\udc00\\ud800"}', '{"type": "message", "text": "\\u0000"}',
        '{"type": "hello", "resume_from": -0}', '{"type": "hello", "resume_from": 1.0}',
        '{"type": "hello", "resume_from": 1e2}', "", " ", "null", "[]", '"hello"', "{", "}",
        '{"type": "message", "text": "hi"', "{'type': 'cancel'}", '{"type": "cancel",}',
        '{"type": "message", "text": "hi"}garbage', '{"type": "message"}{"type": "cancel"}',
    ]),
    # a valid-looking message, cut or spliced at a random place
    st.builds(lambda obj, cut, junk: json.dumps(obj)[:cut] + junk + json.dumps(obj)[cut:],
              json_values, st.integers(0, 60), nasty_text),
)


def text_frames(types: list[str], fields: list[str]) -> st.SearchStrategy[str]:
    """Text frames for a socket whose messages have these types and fields."""
    return st.one_of(
        st.builds(json.dumps, message_like(types, fields)),
        st.builds(json.dumps, json_values),
        hostile_text,
    )


#: Binary payloads: random bytes, invalid UTF-8, JSON as bytes, a BOM before JSON.
hostile_bytes = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"\xff\xfe", b"\xc0\xaf", b"\xed\xa0\x80", b"\xef\xbb\xbf{}",
                     b'{"type": "cancel"}', b"[" * 5000, b"\x00" * 7]),
    st.builds(lambda v: json.dumps(v).encode(), json_values),
)

_whatsapp_message = st.fixed_dictionaries(
    {"id": unicode_text, "from": unicode_text},
    optional={"timestamp": unicode_text | st.from_regex(r"[0-9]{1,5000}", fullmatch=True),
              "type": st.sampled_from(["text", "interactive", "button", "audio", "image"])
              | unicode_text,
              "text": st.fixed_dictionaries({}, optional={"body": unicode_text}),
              "interactive": json_values, "button": json_values, "audio": json_values})
#: Webhook bodies of Meta's documented shape with arbitrary values where Meta has any.
whatsapp_deliveries = st.fixed_dictionaries({
    "object": st.just("whatsapp_business_account"),
    "entry": st.lists(st.fixed_dictionaries({"changes": st.lists(st.fixed_dictionaries({
        "field": st.sampled_from(["messages", "statuses"]),
        "value": st.fixed_dictionaries({}, optional={
            "messages": st.lists(_whatsapp_message, max_size=3),
            "contacts": st.lists(json_values, max_size=2),
            "statuses": st.lists(json_values, max_size=2),
            "metadata": json_values})}), max_size=2)}), max_size=2)})
