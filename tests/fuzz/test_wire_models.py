"""Every wire model against arbitrary and hostile input (issue #11): a valid model or the
module's clear error — never another exception, never a hang — and valid messages built
from the models' own rules come back unchanged from their JSON form."""

from __future__ import annotations

import base64
import json
from datetime import UTC
from typing import Any

import jwt
import pydantic
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from channels.chat_http import ChatRequest
from channels.voice.protocol import VoiceHello, parse_voice_message
from channels.whatsapp.payload import Delivery, parse_delivery
from core import errors as core_errors
from core.errors import UnauthorizedError
from core.settings import Settings
from gateway.auth import CustomerTokens, Identity
from gateway.errors import error_response, status_for, validation_message
from gateway.events import (
    AgentJoined,
    AgentLeft,
    AgentRef,
    CitationOut,
    Delta,
    Done,
    ErrorEvent,
    Escalated,
    ServerEvent,
    SessionOpened,
    Timings,
    UserMessage,
    parse_event,
)
from gateway.protocol import (
    MAX_TEXT_CHARS,
    ProtocolError,
    SendMessage,
    load_json,
    parse_client_message,
)
from gateway.supervisor import parse_supervisor_message
from ingest.events import DocumentEvent
from tests.fuzz.strategies import (
    examples,
    hostile_bytes,
    hostile_text,
    json_values,
    message_like,
    nasty_text,
    session_ids,
    text_frames,
    unicode_text,
    whatsapp_deliveries,
)

pytestmark = pytest.mark.unit

CLIENT_TYPES = ["hello", "message", "cancel", "handoff"]
CLIENT_FIELDS = ["session_id", "customer_token", "resume_token", "customer", "channel",
                 "resume_from", "text", "id", "reason", "sample_rate", "encoding"]
SUPERVISOR_TYPES = ["claim", "message", "release", "close"]
SUPERVISOR_FIELDS = ["session_id", "text"]
ERROR_CODES = {"invalid_json", "invalid_message", "unknown_type", "empty_message",
               "message_too_long", "unsupported_audio"}

frames = st.one_of(text_frames(CLIENT_TYPES + SUPERVISOR_TYPES,
                               CLIENT_FIELDS + SUPERVISOR_FIELDS), hostile_bytes)


def _clear(exc: ProtocolError) -> None:
    assert exc.code in ERROR_CODES, exc.code
    assert isinstance(exc.message, str) and exc.message.strip()
    assert len(exc.message) <= 2000  # a bounded answer, whatever came in
    exc.message.encode()  # the message itself is valid text


# --- client frames: chat, supervisor and voice sockets -----------------------------------

@settings(max_examples=examples(200))
@given(frames)
def test_a_chat_frame_is_a_message_or_a_clear_error(raw: str | bytes) -> None:
    try:
        message = parse_client_message(raw)
    except ProtocolError as exc:
        _clear(exc)
        return
    # what is accepted can be written back as JSON and means the same
    assert parse_client_message(message.model_dump_json(exclude_none=True)) == message
    if isinstance(message, SendMessage):
        assert message.text.strip() and len(message.text) <= MAX_TEXT_CHARS


@settings(max_examples=examples(150))
@given(frames)
def test_a_supervisor_frame_is_a_message_or_a_clear_error(raw: str | bytes) -> None:
    try:
        message = parse_supervisor_message(raw)  # type: ignore[arg-type]
    except ProtocolError as exc:
        _clear(exc)
        return
    assert parse_supervisor_message(message.model_dump_json()) == message


@settings(max_examples=examples(150))
@given(frames)
def test_a_voice_text_frame_is_a_message_or_a_clear_error(raw: str | bytes) -> None:
    try:
        message = parse_voice_message(raw)  # type: ignore[arg-type]
    except ProtocolError as exc:
        _clear(exc)
        return
    assert parse_voice_message(message.model_dump_json(exclude_none=True)) == message


@settings(max_examples=examples(200))
@given(hostile_text | hostile_bytes)
def test_hostile_json_never_escapes_as_another_exception(raw: str | bytes) -> None:
    try:
        load_json(raw)
    except ProtocolError as exc:
        assert exc.code == "invalid_json"


@pytest.mark.parametrize("raw", [
    "[" * 10_000 + "]" * 10_000, '{"a":' * 10_000 + "1" + "}" * 10_000,
    '{"type": "hello", "resume_from": ' + "1" * 5000 + "}",
    '{"type": "message", "text": NaN}', '{"type": "message", "text": "\\ud800 hi"}',
    '{"type": "message", "text": "\ud800 hi"}', "\ufeff{\"type\": \"cancel\"}",
])
def test_the_classic_breakers_are_invalid_json(raw: str) -> None:
    for parse in (parse_client_message, parse_supervisor_message, parse_voice_message):
        with pytest.raises(ProtocolError) as refused:
            parse(raw)
        assert refused.value.code == "invalid_json"


def test_a_key_given_twice_keeps_its_last_value() -> None:
    message = parse_client_message('{"type": "message", "text": "a", "text": "b"}')
    assert isinstance(message, SendMessage) and message.text == "b"


_hello = st.fixed_dictionaries({"type": st.just("hello")}, optional={
    "session_id": session_ids, "customer_token": st.text(min_size=1, max_size=50),
    "resume_token": st.text(min_size=1, max_size=50),
    "customer": st.fixed_dictionaries({"id": st.text(min_size=1, max_size=20)}, optional={
        "groups": st.lists(st.text(min_size=1, max_size=10), max_size=3)}),
    "channel": st.from_regex(r"[a-z][a-z0-9_\-]{0,31}", fullmatch=True),
    "resume_from": st.integers(min_value=0, max_value=2**63)})
_message = st.fixed_dictionaries(
    {"type": st.just("message"),
     "text": unicode_text.filter(lambda t: t.strip()) | st.text(min_size=1, max_size=4000)
     .filter(lambda t: t.strip())},
    optional={"id": st.text(min_size=1, max_size=128)})
_handoff = st.fixed_dictionaries({"type": st.just("handoff")},
                                 optional={"reason": st.text(max_size=500)})
valid_client = st.one_of(_hello, _message, _handoff, st.just({"type": "cancel"}))


@settings(max_examples=examples(200))
@given(valid_client)
def test_every_valid_client_message_is_accepted_as_sent(data: dict[str, Any]) -> None:
    for parse in (parse_client_message, parse_voice_message):
        message = parse(json.dumps(data))
        assert message.model_dump(exclude_unset=True) == data
        assert parse(json.dumps(data, ensure_ascii=False).encode()) == message


@settings(max_examples=examples(100))
@given(st.fixed_dictionaries({
    "type": st.sampled_from(SUPERVISOR_TYPES), "session_id": session_ids}),
    st.text(min_size=1, max_size=200).filter(lambda t: t.strip()))
def test_every_valid_supervisor_message_is_accepted_as_sent(data: dict[str, Any],
                                                            text: str) -> None:
    if data["type"] == "message":
        data = {**data, "text": text}
    assert parse_supervisor_message(json.dumps(data)).model_dump() == data


@settings(max_examples=examples(50))
@given(st.integers(min_value=8000, max_value=48000))
def test_a_voice_hello_keeps_its_sample_rate(rate: int) -> None:
    hello = parse_voice_message(json.dumps({"type": "hello", "sample_rate": rate}))
    assert isinstance(hello, VoiceHello) and hello.sample_rate == rate


@settings(max_examples=examples(100))
@given(st.one_of(nasty_text, st.from_regex(r"[a-z][a-z0-9_\-]{0,40}", fullmatch=True),
                 st.builds(lambda n: "v" * n, st.integers(30, 100_000))))
def test_the_voice_hello_names_a_channel_as_the_chat_hello_does(channel: str) -> None:
    frame = json.dumps({"type": "hello", "channel": channel})
    outcomes = []
    for parse in (parse_client_message, parse_voice_message):
        try:
            outcomes.append(parse(frame).channel)  # type: ignore[union-attr]
        except ProtocolError as exc:
            outcomes.append(exc.code)
    assert outcomes[0] == outcomes[1]


# --- validation messages -----------------------------------------------------------------

@settings(max_examples=examples(50))
@given(st.dictionaries(unicode_text, json_values, max_size=30), st.integers(1, 3000))
def test_a_validation_message_is_bounded_whatever_the_input(extra: dict[str, Any],
                                                            key_chars: int) -> None:
    data = {"type": "message", "text": 5, **extra, "k" * key_chars: 1,
            **{f"extra{i}": i for i in range(200)}}
    with pytest.raises(pydantic.ValidationError) as failed:
        SendMessage.model_validate(data)
    message = validation_message(failed.value)
    assert message and len(message) <= 1000
    assert "k" * 200 not in message


MARKER = "qx-input-value-qx"


@settings(max_examples=examples(100))
@given(message_like(CLIENT_TYPES, CLIENT_FIELDS), st.sampled_from([
    parse_client_message, parse_supervisor_message, parse_voice_message]))
def test_an_error_message_never_quotes_the_input(data: dict[str, Any], parse: Any) -> None:
    def mark(value: Any) -> Any:
        if isinstance(value, str):
            return MARKER + value
        if isinstance(value, list):
            return [mark(v) for v in value]
        if isinstance(value, dict):
            return {k: mark(v) for k, v in value.items()}
        return value

    data = {k: (v if k == "type" else mark(v)) for k, v in data.items()}
    try:
        parse(json.dumps(data))
    except ProtocolError as exc:
        assert MARKER not in exc.message


# --- server events -----------------------------------------------------------------------

_finite = st.floats(allow_nan=False, allow_infinity=False)
_ids = st.none() | unicode_text
_stamp = {"session_id": _ids, "seq": st.integers(min_value=0), "turn_id": _ids}
_when = st.none() | st.datetimes(timezones=st.none() | st.just(UTC))
_agent = st.builds(AgentRef, id=unicode_text, name=unicode_text)
events = st.one_of(
    st.builds(SessionOpened, resumed=st.booleans(), last_seq=st.integers(),
              resume_token=_ids, channel=_ids, **_stamp),
    st.builds(UserMessage, text=unicode_text, id=_ids, **_stamp),
    st.builds(Delta, source=st.sampled_from(["ack", "answer", "human", "system"]),
              text=unicode_text, **_stamp),
    st.builds(Done, text=unicode_text, citations=st.lists(st.builds(
        CitationOut, doc_id=unicode_text, title=unicode_text, url=_ids, version=st.integers(),
        updated_at=_when), max_size=3), as_of=_when, confidence=st.floats(0, 1),
        timings_ms=st.builds(Timings, ack_first=st.none() | _finite,
                             answer_first=st.none() | _finite, total=_finite),
        decision=st.none() | st.sampled_from(["answer", "clarify", "fallback"]),
        prefetch_hit=st.none() | st.booleans(), rewritten_query=_ids,
        cancelled=st.booleans(), interrupted=st.booleans(), **_stamp),
    st.builds(Escalated, reason=unicode_text, queue_position=st.integers(min_value=1),
              message=_ids, supervisors_online=st.none() | st.integers(min_value=0), **_stamp),
    st.builds(AgentJoined, agent=_agent, **_stamp),
    st.builds(AgentLeft, agent=_agent, **_stamp),
    st.builds(ErrorEvent, code=unicode_text, message=unicode_text, **_stamp),
)


@settings(max_examples=examples(150))
@given(events)
def test_every_event_comes_back_from_its_wire_form(event: ServerEvent) -> None:
    wire = event.wire()
    assert parse_event(wire) == event
    assert parse_event(json.dumps(wire)) == event
    assert parse_event(json.dumps(wire, ensure_ascii=False).encode()) == event
    assert parse_event(event.model_dump_json()) == event  # the durable log's form


@settings(max_examples=examples(150))
@given(st.one_of(hostile_text, hostile_bytes, st.builds(json.dumps, message_like(
    ["session", "user_message", "delta", "done", "escalated", "agent_joined", "agent_left",
     "error"], ["text", "seq", "session_id", "turn_id", "source", "timings_ms", "agent",
                "citations", "reason", "queue_position", "code", "message", "resumed"]))))
def test_an_event_from_elsewhere_is_an_event_or_a_validation_error(raw: str | bytes) -> None:
    try:
        event = parse_event(raw)
    except pydantic.ValidationError as exc:
        assert validation_message(exc)
        return
    assert parse_event(event.wire()) == event


@settings(max_examples=examples(100))
@given(message_like(["delta", "done", "error"], ["text", "seq", "source", "timings_ms"]))
def test_an_event_from_a_dict_is_an_event_or_a_validation_error(data: dict[str, Any]) -> None:
    try:
        event = parse_event(data)
    except pydantic.ValidationError:
        return
    assert parse_event(event.wire()) == event


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_an_event_holds_only_finite_numbers(value: float) -> None:
    with pytest.raises(pydantic.ValidationError):
        Timings(total=value)
    with pytest.raises(pydantic.ValidationError):
        parse_event({"type": "done", "text": "", "timings_ms": {"total": value}})


# --- HTTP bodies: POST /v1/chat and POST /v1/documents -----------------------------------

_bodies = st.one_of(
    hostile_text, hostile_bytes,
    st.builds(json.dumps, message_like(["x"], ["text", "session_id", "customer_token", "id",
                                               "resume_token", "customer"])),
    st.builds(json.dumps, message_like(["CREATE", "UPDATE", "DELETE"], [
        "event_type", "doc_id", "version", "content", "metadata", "timestamp"])),
)


@settings(max_examples=examples(150))
@given(_bodies)
def test_an_http_body_is_a_request_or_a_validation_error(raw: str | bytes) -> None:
    for model in (ChatRequest, DocumentEvent):
        try:
            parsed = model.model_validate_json(raw)
        except pydantic.ValidationError as exc:
            assert validation_message(exc)
            continue
        assert model.model_validate_json(parsed.model_dump_json()) == parsed


_chat_requests = st.fixed_dictionaries(
    {"text": st.text(min_size=1, max_size=4000)},
    optional={"session_id": session_ids, "customer_token": st.text(min_size=1, max_size=50),
              "resume_token": st.text(min_size=1, max_size=200),
              "id": st.text(min_size=1, max_size=128),
              "customer": st.fixed_dictionaries({"id": st.text(min_size=1, max_size=20)})})


@settings(max_examples=examples(100))
@given(_chat_requests)
def test_every_valid_http_chat_request_is_accepted_as_sent(data: dict[str, Any]) -> None:
    request = ChatRequest.model_validate_json(json.dumps(data))
    assert request.model_dump(exclude_unset=True) == data
    assert ChatRequest.model_validate_json(json.dumps(data, ensure_ascii=False)) == request


_doc_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,20}(\.[A-Za-z0-9_\-]{1,5}){0,2}",
                         fullmatch=True)
_metadata = st.fixed_dictionaries({}, optional={
    "title": st.text(max_size=500), "url": st.text(max_size=100),
    "source": st.from_regex(r"[a-z0-9][a-z0-9_\-]{0,20}", fullmatch=True).filter(
        lambda s: s not in ("dlq", "results")),
    "acl": st.lists(st.text(min_size=1, max_size=100), max_size=5),
    "review_status": st.sampled_from(["reviewed", "unreviewed"]),
    "tier": st.integers(0, 9), "owner": json_values})
documents = st.builds(
    lambda kind, doc_id, version, content, metadata: {
        "event_type": kind, "doc_id": doc_id, "version": version, "metadata": metadata,
        **({} if kind == "DELETE" else {"content": content})},
    st.sampled_from(["CREATE", "UPDATE", "DELETE"]), _doc_ids,
    st.integers(0, 2**53), unicode_text, _metadata)


@settings(max_examples=examples(200))
@given(documents)
def test_every_valid_document_event_is_accepted_and_comes_back(data: dict[str, Any]) -> None:
    event = DocumentEvent.model_validate_json(json.dumps(data))
    assert event.doc_id == data["doc_id"] and event.version == data["version"]
    assert DocumentEvent.model_validate_json(event.model_dump_json()) == event
    assert len(event.content_hash()) == 64


# --- WhatsApp deliveries ------------------------------------------------------------------

@settings(max_examples=examples(150))
@given(st.one_of(hostile_text, hostile_bytes, st.builds(json.dumps, whatsapp_deliveries),
                 st.builds(lambda d: json.dumps(d).encode(), whatsapp_deliveries)))
def test_a_whatsapp_delivery_is_parsed_or_refused_as_a_value_error(raw: str | bytes) -> None:
    try:
        delivery = parse_delivery(raw)
    except ValueError:
        return
    assert isinstance(delivery, Delivery)
    for message in delivery.messages:
        assert message.text is None or message.text.strip() == message.text


# --- customer tokens ----------------------------------------------------------------------

SECRET = "fuzz-tests-signing-secret-0123456789abcdef"
TOKENS = CustomerTokens(Settings(_env_file=None, customer_token_secret=SECRET))


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _verified(token: str) -> Identity | None:
    try:
        return TOKENS.verify(token)
    except UnauthorizedError as exc:
        assert exc.message == "invalid customer token"  # says nothing about which check
        return None


_segment = st.one_of(
    st.builds(lambda v: _b64(json.dumps(v).encode()), json_values),
    st.builds(lambda raw: _b64(raw.encode("utf-8", "surrogatepass")), hostile_text),
    st.builds(_b64, st.binary(max_size=40)), nasty_text)


@settings(max_examples=examples(150))
@given(st.one_of(nasty_text, hostile_text,
                 st.builds(lambda h, p, s: f"{h}.{p}.{s}", _segment, _segment, _segment)))
def test_a_presented_token_is_an_identity_or_unauthorized(token: str) -> None:
    assert _verified(token) is None  # nothing unsigned gets through


_claim_values = json_values | st.sampled_from([float("nan"), float("inf"), float("-inf"),
                                               10**400, -(10**400), 2**63, 1e308])
_claims = st.fixed_dictionaries({}, optional={
    "sub": _claim_values | st.text(min_size=1, max_size=250),
    "exp": _claim_values | st.integers(2_000_000_000, 4_000_000_000),
    "iat": _claim_values, "nbf": _claim_values, "groups": _claim_values | st.lists(
        unicode_text, max_size=40), "aud": _claim_values, "iss": _claim_values})


@settings(max_examples=examples(100))
@given(_claims, st.sampled_from(["HS256", "other key", "none"]))
def test_signed_claims_are_an_identity_or_unauthorized(claims: dict[str, Any],
                                                       alg: str) -> None:
    key = {"HS256": SECRET, "other key": SECRET[::-1], "none": None}[alg]
    try:
        token = jwt.encode(claims, key, algorithm="none" if key is None else "HS256")
    except (TypeError, ValueError, jwt.PyJWTError, OverflowError):
        assume(False)  # not something a signer produces
    identity = _verified(token)
    if identity is None:
        return
    assert alg == "HS256" and identity.customer_id == claims["sub"]
    assert set(identity.groups) == {"public", *claims.get("groups", [])}


@settings(max_examples=examples(100))
@given(st.text(min_size=1, max_size=200), st.lists(st.text(min_size=1, max_size=100),
                                                   max_size=20))
def test_a_minted_token_proves_its_sub_and_groups(sub: str, groups: list[str]) -> None:
    try:
        token = TOKENS.mint(sub, groups)
    except (UnicodeEncodeError, ValueError):
        return
    identity = _verified(token)
    assert identity is not None and identity.customer_id == sub
    assert set(identity.groups) == {"public", *groups}


# --- the error edge -----------------------------------------------------------------------

_error_types = st.sampled_from([
    core_errors.DuetError, core_errors.ValidationError, core_errors.PayloadTooLargeError,
    core_errors.UnsupportedMediaError, core_errors.UnauthorizedError,
    core_errors.ForbiddenError, core_errors.NotFoundError, core_errors.ConflictError,
    core_errors.DependencyError, core_errors.TimeoutError_])


@settings(max_examples=examples(150))
@given(st.one_of(
    st.builds(ProtocolError, st.sampled_from(sorted(ERROR_CODES)) | nasty_text, nasty_text,
              retryable=st.booleans()),
    st.builds(lambda kind, message, retryable: kind(message, retryable=retryable),
              _error_types, nasty_text, st.booleans())))
def test_every_refusal_renders_as_the_error_shape(exc: core_errors.DuetError) -> None:
    status = status_for(exc)
    assert 400 <= status <= 599
    response = error_response(exc)
    body = json.loads(response.body)
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert (response.headers.get("retry-after") is not None) == (status == 503)
