"""What the gateway's endpoints share, built once by the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.metrics import Metrics
from core.settings import Settings
from ingest.runtime import KnowledgeRuntime

if TYPE_CHECKING:
    from gateway.chat import ChatService

__all__ = ["AppState"]


@dataclass
class AppState:
    """Settings, metrics, the knowledge runtime, and the chat services added on top."""

    settings: Settings
    metrics: Metrics
    runtime: KnowledgeRuntime
    #: Sessions, router and escalation queue (set by ``gateway.services`` at start-up).
    chat: ChatService | None = None
