"""Per-source freshness profiles (``configs/freshness.yaml``): relevance × freshness."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field

__all__ = ["FreshnessProfile", "FreshnessProfiles"]


class FreshnessProfile(BaseModel):
    """How a source's documents lose weight with age."""

    kind: Literal["exponential", "window"] = Field("exponential", description="Decay shape.")
    half_life_days: float = Field(180.0, gt=0, description="Exponential: weight halves by then.")
    window_days: float = Field(30.0, gt=0, description="Window: full weight inside, floor after.")
    floor: float = Field(0.6, ge=0, le=1, description="Weight an arbitrarily old document keeps.")

    def weight(self, age_days: float) -> float:
        """Freshness weight in [floor, 1] for a document ``age_days`` old."""
        age = max(age_days, 0.0)
        if self.kind == "window":
            return 1.0 if age <= self.window_days else self.floor
        decay = math.exp(-math.log(2) * age / self.half_life_days)
        return self.floor + (1.0 - self.floor) * decay


class FreshnessProfiles(BaseModel):
    """The default profile and one per source."""

    default: FreshnessProfile = Field(default_factory=FreshnessProfile, description="Fallback.")
    sources: dict[str, FreshnessProfile] = Field(default_factory=dict, description="By source.")

    def for_source(self, source: str) -> FreshnessProfile:
        """The profile of a source, or the default."""
        return self.sources.get(source, self.default)

    @classmethod
    def load(cls, path: Path) -> FreshnessProfiles:
        """Read a YAML file; a missing file means the defaults."""
        if not path.exists():
            return cls()
        return cls.model_validate(yaml.safe_load(path.read_text()) or {})
