"""The intent catalog (``configs/intents.yaml``) with its example embeddings computed once.

The catalog holds only what is not knowledge: greetings, thanks, asking for a person,
complaints. What the customer asks *about* comes from the knowledge base itself
(:mod:`ingest.topics`). An intent is recognised by the cosine similarity of a message to
the *centroid* of its examples' embeddings (the examples of an intent are varied on
purpose, and their mean is the steadier description of it); a message that is nearly one
of the examples still wins that intent: the score is
``max(centroid similarity, nearest-example similarity - 0.15)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from core.errors import ValidationError
from core.settings import CONFIGS_DIR
from ingest.embeddings import Embedder

__all__ = ["NEAR_EXAMPLE_MARGIN", "SOCIAL_INTENTS", "Intent", "IntentCatalog", "IntentMatch"]

#: How much a near-verbatim example match is discounted against the centroid.
NEAR_EXAMPLE_MARGIN = 0.15

#: Intents that are conversation rather than a question about the knowledge base.
SOCIAL_INTENTS = frozenset({"greeting", "thanks", "human_request", "complaint"})


@dataclass(frozen=True)
class Intent:
    """One intent: its name, the phrase its acknowledgments name, examples and templates."""

    name: str
    topic: str
    examples: tuple[str, ...]
    acks: tuple[str, ...]

    @property
    def social(self) -> bool:
        """Whether this intent is small talk or a request about the conversation itself."""
        return self.name in SOCIAL_INTENTS


@dataclass(frozen=True)
class IntentMatch:
    """An intent and the message's cosine similarity to it."""

    intent: Intent
    similarity: float


class IntentCatalog:
    """Intents with one unit-length centroid each; matching is a single matrix product."""

    def __init__(self, intents: Sequence[Intent], embedder: Embedder) -> None:
        if not intents:
            raise ValidationError("the intent catalog is empty")
        self.intents: tuple[Intent, ...] = tuple(intents)
        self.embedder = embedder
        examples = [e for intent in self.intents for e in intent.examples]
        vectors = embedder.embed(examples)
        centroids = np.zeros((len(self.intents), vectors.shape[1]), dtype=np.float32)
        row = 0
        for i, intent in enumerate(self.intents):
            centroids[i] = vectors[row:row + len(intent.examples)].mean(axis=0)
            row += len(intent.examples)
        norms = np.linalg.norm(centroids, axis=1, keepdims=True)
        self._centroids = centroids / np.clip(norms, 1e-12, None)
        self._examples = vectors
        self._labels = np.repeat(np.arange(len(self.intents)),
                                 [len(intent.examples) for intent in self.intents])
        self._by_name = {intent.name: intent for intent in self.intents}

    @classmethod
    def load(cls, embedder: Embedder, path: Path | None = None) -> IntentCatalog:
        """Read and embed a catalog file (default: ``configs/intents.yaml``). Blocking."""
        path = path or CONFIGS_DIR / "intents.yaml"
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or []
        intents: list[Intent] = []
        for entry in raw:
            try:
                intent = Intent(name=str(entry["name"]), topic=str(entry["topic"]),
                                examples=tuple(str(e) for e in entry["examples"]),
                                acks=tuple(str(a) for a in entry["acks"]))
            except (KeyError, TypeError) as exc:
                raise ValidationError(f"{path}: bad intent entry {entry!r}: {exc}") from exc
            if not intent.examples or not intent.acks:
                raise ValidationError(f"{path}: intent {intent.name} needs examples and acks")
            intents.append(intent)
        return cls(intents, embedder)

    def get(self, name: str) -> Intent | None:
        """The intent of that name, if any."""
        return self._by_name.get(name)

    def match(self, vector: np.ndarray, *, names: Iterable[str] | None = None) -> list[IntentMatch]:
        """Every intent (or only ``names``) by similarity to a unit vector, best first."""
        vector = np.asarray(vector, dtype=np.float32)
        nearest = np.full(len(self.intents), -1.0, dtype=np.float32)
        np.maximum.at(nearest, self._labels, self._examples @ vector)
        sims = np.maximum(self._centroids @ vector, nearest - NEAR_EXAMPLE_MARGIN)
        wanted = None if names is None else set(names)
        matches = [IntentMatch(intent, float(sims[i])) for i, intent in enumerate(self.intents)
                   if wanted is None or intent.name in wanted]
        return sorted(matches, key=lambda m: m.similarity, reverse=True)
