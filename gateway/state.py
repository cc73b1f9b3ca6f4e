"""What the gateway's endpoints share, built once by the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.metrics import Metrics
from core.settings import Settings
from gateway.auth import CustomerTokens
from ingest.runtime import KnowledgeRuntime

if TYPE_CHECKING:
    from gateway.service import ChatService

__all__ = ["AppState"]


@dataclass
class AppState:
    """Settings, metrics, identity, the knowledge runtime, and the chat service on top."""

    settings: Settings
    metrics: Metrics
    runtime: KnowledgeRuntime
    #: Verifies customer tokens (the only source of ACL groups).
    customer_tokens: CustomerTokens
    #: The one API of every channel (set by ``gateway.services`` at start-up).
    chat: ChatService | None = None
