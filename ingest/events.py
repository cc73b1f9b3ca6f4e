"""The document change event of the wire contract (shared/PROTOCOL.md §2)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

__all__ = [
    "DOC_ID_PATTERN",
    "DocumentEvent",
    "DocumentMetadata",
    "MAX_VERSION",
    "EventType",
    "ReviewStatus",
    "event_subject",
]

#: doc ids are also keys of the JetStream KV registry, so they use its alphabet.
DOC_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_\-]*(\.[A-Za-z0-9_\-]+)*$"
_SOURCE_PATTERN = r"^[a-z0-9][a-z0-9_\-]{0,63}$"
#: sources that name subjects of the worker's own, never a document source.
RESERVED_SOURCES = frozenset({"dlq", "results"})

#: the largest version: exact in a JSON number everywhere (IEEE double), and far beyond any
#: real counter, so one event cannot pin a document forever with a huge version.
MAX_VERSION = 2**53

DocId = Annotated[str, StringConstraints(pattern=DOC_ID_PATTERN, min_length=1, max_length=200)]


class EventType(StrEnum):
    """What the event does to the document."""

    CREATE = "CREATE"
    UPDATE = "UPDATE"
    DELETE = "DELETE"


class ReviewStatus(StrEnum):
    """Editorial state of the document."""

    reviewed = "reviewed"
    unreviewed = "unreviewed"


class DocumentMetadata(BaseModel):
    """Metadata carried by a document event."""

    model_config = ConfigDict(extra="allow")

    title: str | None = Field(None, max_length=500, description="Title shown in citations.")
    url: str | None = Field(None, max_length=2000, description="Link shown in citations.")
    source: str = Field(
        "default", pattern=_SOURCE_PATTERN, description="Origin system; picks freshness profile."
    )
    acl: list[Annotated[str, StringConstraints(min_length=1, max_length=100)]] | None = Field(
        None, max_length=100,
        description="Groups allowed to retrieve it; absent or empty: pending ACL (never public)."
    )
    review_status: ReviewStatus = Field(ReviewStatus.reviewed, description="Editorial state.")
    tier: int = Field(1, ge=0, le=9, description="Authority tier (1 = most authoritative).")

    @field_validator("source")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in RESERVED_SOURCES:
            raise ValueError(f"source {value!r} is reserved")
        return value


class DocumentEvent(BaseModel):
    """One CREATE, UPDATE or DELETE of a document."""

    model_config = ConfigDict(extra="forbid")

    event_type: EventType = Field(description="CREATE, UPDATE or DELETE.")
    doc_id: DocId = Field(description="Stable id of the document.")
    version: int = Field(ge=0, le=MAX_VERSION,
                         description="Monotonic version (0..2**53); older than applied is discarded.")
    content: str | None = Field(
        None, description="Markdown text; absent for DELETE, or for a metadata-only UPDATE."
    )
    metadata: DocumentMetadata = Field(
        default_factory=DocumentMetadata, description="Title, url, source, ACL, review state."
    )
    timestamp: datetime = Field(
        default_factory=lambda: datetime.now(UTC), description="When the change happened (UTC)."
    )

    @field_validator("timestamp")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    @model_validator(mode="after")
    def _content_rules(self) -> DocumentEvent:
        if self.event_type is EventType.CREATE and self.content is None:
            raise ValueError("a CREATE needs content")
        if self.event_type is EventType.DELETE and self.content is not None:
            raise ValueError("a DELETE carries no content")
        return self

    @property
    def source(self) -> str:
        """The document's source (subject suffix)."""
        return self.metadata.source

    def content_hash(self) -> str:
        """Hash of everything that changes what is indexed (content and metadata)."""
        payload: dict[str, Any] = {
            "content": self.content,
            "metadata": self.metadata.model_dump(mode="json"),
        }
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()


def event_subject(event: DocumentEvent) -> str:
    """The JetStream subject an event is published on: ``docs.<source>``."""
    return f"docs.{event.source}"
