"""Customer journeys (``configs/journeys.yaml``): the documents usually asked about next."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from core.errors import ValidationError
from core.settings import CONFIGS_DIR

__all__ = ["Journeys"]


class Journeys:
    """``doc_id`` → likely next ``doc_id``s, most likely first."""

    def __init__(self, mapping: Mapping[str, Sequence[str]] | None = None) -> None:
        self._next = {str(k): tuple(str(v) for v in vs if str(v) != str(k))
                      for k, vs in (mapping or {}).items()}

    @classmethod
    def load(cls, path: Path | None = None) -> Journeys:
        """Read a journeys file (default: ``configs/journeys.yaml``)."""
        path = path or CONFIGS_DIR / "journeys.yaml"
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(raw, dict) or not all(isinstance(v, list) for v in raw.values()):
            raise ValidationError(f"{path}: expected a mapping of doc_id to a list of doc_ids")
        return cls(raw)

    def next(self, doc_id: str) -> tuple[str, ...]:
        """The documents customers usually ask about after ``doc_id``."""
        return self._next.get(doc_id, ())

    def __len__(self) -> int:
        return len(self._next)
