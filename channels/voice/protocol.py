"""The voice socket's client messages (docs/protocol.md §4).

Text frames are the chat socket's (``hello``, ``message``, ``cancel``, ``handoff``); the
voice ``hello`` may also announce the caller's audio: ``sample_rate`` (default 16000; phone
lines send 8000) — any rate from 8 to 48 kHz is resampled to the models' 16 kHz. Binary
frames are 16-bit little-endian mono PCM at that rate.
"""

from __future__ import annotations

from typing import Literal

import pydantic
from pydantic import Field

from gateway.errors import validation_message
from gateway.protocol import (
    ChannelName,
    ClientMessage,
    ErrorCode,
    Hello,
    ProtocolError,
    load_json,
    parse_client_message,
)

__all__ = ["MAX_FRAME_BYTES", "VoiceErrorCode", "VoiceHello", "parse_voice_message"]

#: The largest binary frame accepted (1 s of 48 kHz audio).
MAX_FRAME_BYTES = 96_000


class VoiceErrorCode:
    """Error codes the voice socket adds to the chat socket's."""

    invalid_audio = "invalid_audio"
    unsupported_audio = "unsupported_audio"
    busy = "busy"
    idle_timeout = "idle_timeout"
    speech_unavailable = "speech_unavailable"


class VoiceHello(Hello):
    """Open or resume a session for a call, and say what audio comes."""

    channel: ChannelName = Field("voice", description="Channel the customer uses.")
    sample_rate: int = Field(16000, ge=8000, le=48000,
                             description="Sample rate (Hz) of the caller's PCM frames.")
    encoding: Literal["pcm_s16le"] = Field("pcm_s16le", description="Encoding of the frames.")


def parse_voice_message(raw: str) -> ClientMessage:
    """A text frame of the voice socket; raises :class:`ProtocolError` with a precise code."""
    try:
        data = load_json(raw)
    except ProtocolError:
        data = None  # parse_client_message says what is wrong
    if isinstance(data, dict) and data.get("type") == "hello":
        try:
            return VoiceHello.model_validate(data)
        except pydantic.ValidationError as exc:
            detail = validation_message(exc)
            code = (VoiceErrorCode.unsupported_audio
                    if any(e["loc"][:1] in (("sample_rate",), ("encoding",))
                           for e in exc.errors()) else ErrorCode.invalid_message)
            raise ProtocolError(code, detail) from exc
    return parse_client_message(raw)
