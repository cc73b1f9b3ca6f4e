"""What the gateway's endpoints share, built once by the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.metrics import Metrics
from core.settings import Settings
from ingest.runtime import KnowledgeRuntime

__all__ = ["AppState"]


@dataclass
class AppState:
    """Settings, metrics, the knowledge runtime, and the chat services added on top."""

    settings: Settings
    metrics: Metrics
    runtime: KnowledgeRuntime
    extras: dict[str, Any] = field(default_factory=dict)
