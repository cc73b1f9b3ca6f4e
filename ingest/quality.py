"""The quality gate: documents that would harm answers are quarantined, not indexed."""

from __future__ import annotations

import re
import unicodedata

__all__ = ["quality_problem"]

_INJECTION = [
    re.compile(p, re.IGNORECASE | re.MULTILINE)
    for p in (
        r"\b(ignore|disregard|forget|override)\b.{0,40}\b(previous|prior|above|earlier|all|any)\b"
        r".{0,40}\b(instructions?|prompts?|rules|directions)\b",
        r"\byou are now\b.{0,60}\b(assistant|ai|bot|model|dan|mode)\b",
        r"\b(reveal|print|show|repeat)\b.{0,30}\b(system|hidden|secret)\s+(prompt|instructions?)\b",
        r"<\|(im_start|im_end|system|endoftext)\|>",
        r"^\s*#{0,3}\s*(system|assistant)\s*(prompt)?\s*:",
        r"\bdo anything now\b|\bjailbreak\b",
        r"\[\s*(INST|SYS)\s*\]|<<\s*SYS\s*>>",
    )
]


def quality_problem(content: str, *, min_chars: int) -> str | None:
    """Why ``content`` must not be indexed, or None when it may be."""
    visible = content.strip()
    if len(visible) < min_chars:
        return f"too short: {len(visible)} characters, at least {min_chars} required"
    bad = [ch for ch in content if unicodedata.category(ch) == "Cc" and ch not in "\n\r\t"]
    if bad:
        return f"control characters: {len(bad)} (first U+{ord(bad[0]):04X})"
    for pattern in _INJECTION:
        match = pattern.search(content)
        if match:
            return f"prompt-injection marker: {match.group(0)[:80]!r}"
    return None
