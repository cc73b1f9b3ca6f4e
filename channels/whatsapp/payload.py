"""What Meta posts to the webhook: signature check and the documented payload shapes.

A delivery is ``{"object": "whatsapp_business_account", "entry": [{"id", "changes": [{"field":
"messages", "value": {"metadata", "contacts", "messages", "statuses"}}]}]}``. Messages are
reduced to :class:`Inbound` (text, interactive and quick-reply buttons as their titles, voice
notes and every other type as a kind without text), statuses to :class:`Status`. Unknown
fields are ignored: Meta adds fields without notice.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Delivery", "Inbound", "Status", "parse_delivery", "sign", "signature_ok"]

_PREFIX = "sha256="


def sign(secret: bytes, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value Meta sends for ``body``."""
    return _PREFIX + hmac.new(secret, body, hashlib.sha256).hexdigest()


def signature_ok(secret: bytes, body: bytes, header: str | None) -> bool:
    """Whether ``header`` is the HMAC-SHA256 of the raw body (constant-time compare)."""
    if not header or not header.startswith(_PREFIX):
        return False
    return hmac.compare_digest(sign(secret, body).encode(), header.strip().encode())


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Text(_Loose):
    body: str = ""


class _Reply(_Loose):
    id: str = ""
    title: str = ""


class _Interactive(_Loose):
    type: str = ""
    button_reply: _Reply | None = None
    list_reply: _Reply | None = None


class _Button(_Loose):
    text: str = ""
    payload: str | None = None


class _Audio(_Loose):
    id: str | None = None
    voice: bool = False


class _Message(_Loose):
    id: str
    sender: str = Field(alias="from")
    timestamp: str = "0"
    type: str = "unknown"
    text: _Text | None = None
    interactive: _Interactive | None = None
    button: _Button | None = None
    audio: _Audio | None = None


class _StatusError(_Loose):
    code: int | None = None
    title: str | None = None


class _Status(_Loose):
    id: str
    status: str
    timestamp: str = "0"
    recipient_id: str | None = None
    errors: list[_StatusError] = Field(default_factory=list)


class _Profile(_Loose):
    name: str | None = None


class _Contact(_Loose):
    wa_id: str | None = None
    profile: _Profile | None = None


class _Metadata(_Loose):
    phone_number_id: str | None = None


class _Value(_Loose):
    messaging_product: str | None = None
    metadata: _Metadata | None = None
    contacts: list[_Contact] = Field(default_factory=list)
    messages: list[_Message] = Field(default_factory=list)
    statuses: list[_Status] = Field(default_factory=list)


class _Change(_Loose):
    field: str = ""
    value: _Value = Field(default_factory=_Value)


class _Entry(_Loose):
    id: str | None = None
    changes: list[_Change] = Field(default_factory=list)


class _Webhook(_Loose):
    object: str = ""
    entry: list[_Entry] = Field(default_factory=list)


@dataclass(frozen=True)
class Inbound:
    """One customer message."""

    #: Meta's message id (``wamid.…``): the idempotency key.
    id: str
    #: The sender's number, digits only (``wa_id``).
    sender: str
    #: Seconds since the epoch, as Meta stamped it.
    timestamp: int
    #: ``text``, ``interactive``, ``button``, ``voice``, ``audio``, ``image``, ...
    kind: str
    #: What the customer wrote or picked; None for kinds without text.
    text: str | None
    #: The name on the customer's WhatsApp profile, if sent.
    profile_name: str | None = None
    #: The business number it was sent to (``metadata.phone_number_id``).
    phone_number_id: str | None = None
    #: Audio (voice notes): the Graph API media id of the file.
    media_id: str | None = None


@dataclass(frozen=True)
class Status:
    """A delivery receipt of a message we sent."""

    id: str
    status: str
    recipient: str | None
    error_codes: tuple[int, ...] = ()


@dataclass(frozen=True)
class Delivery:
    """Everything one webhook POST carried."""

    messages: list[Inbound]
    statuses: list[Status]


def _inbound(message: _Message, names: dict[str, str], to: str | None) -> Inbound:
    kind, text = message.type, None
    if kind == "text" and message.text is not None:
        text = message.text.body
    elif kind == "interactive" and message.interactive is not None:
        reply = message.interactive.button_reply or message.interactive.list_reply
        text = reply.title if reply else None
    elif kind == "button" and message.button is not None:
        text = message.button.text or message.button.payload
    elif kind == "audio" and message.audio is not None and message.audio.voice:
        kind = "voice"
    try:
        stamp = int(message.timestamp)
    except ValueError:
        stamp = 0
    return Inbound(id=message.id, sender=message.sender, timestamp=stamp, kind=kind,
                   text=text.strip() if text and text.strip() else None,
                   profile_name=names.get(message.sender), phone_number_id=to,
                   media_id=message.audio.id if message.audio is not None else None)


def parse_delivery(data: bytes | str | dict[str, Any]) -> Delivery:
    """The messages and statuses of a webhook body (raises ``ValueError`` if not JSON of
    the documented shape)."""
    hook = (_Webhook.model_validate(data) if isinstance(data, dict)
            else _Webhook.model_validate_json(data))
    messages: list[Inbound] = []
    statuses: list[Status] = []
    for entry in hook.entry:
        for change in entry.changes:
            if change.field != "messages":
                continue
            value = change.value
            names = {c.wa_id: c.profile.name for c in value.contacts
                     if c.wa_id and c.profile and c.profile.name}
            to = value.metadata.phone_number_id if value.metadata else None
            messages.extend(_inbound(m, names, to) for m in value.messages)
            statuses.extend(Status(id=s.id, status=s.status, recipient=s.recipient_id,
                                   error_codes=tuple(e.code for e in s.errors if e.code))
                            for s in value.statuses)
    return Delivery(messages=messages, statuses=statuses)
