"""WhatsApp channel pieces on their own: signatures, Meta's payloads, splitting, groups, and
the Graph API client against the local Graph API server."""

from __future__ import annotations

import json

import pytest

from channels.whatsapp.graph import GraphClient, GraphError, WindowClosed
from channels.whatsapp.payload import parse_delivery, sign, signature_ok
from channels.whatsapp.service import parse_groups
from channels.whatsapp.text import split_message
from tests.fakes_whatsapp import FakeGraph, message_delivery, status_delivery, text_delivery

pytestmark = pytest.mark.unit

# The example of Meta's "Webhooks: messages" reference, as posted.
META_TEXT = b"""{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[{"value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550783881","phone_number_id":"106540352242922"},"contacts":[{"profile":{"name":"Sheena Nelson"},"wa_id":"16505551234"}],"messages":[{"from":"16505551234","id":"wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQUZCMTY0MDc2MUYwNzBDNTY5MAA=","timestamp":"1749416383","type":"text","text":{"body":"Does it come in another color?"}}]},"field":"messages"}]}]}"""


def test_signatures_are_hmac_sha256_of_the_raw_body() -> None:
    secret = b"app-secret"
    header = sign(secret, META_TEXT)
    assert header.startswith("sha256=") and len(header) == 7 + 64
    assert signature_ok(secret, META_TEXT, header)
    assert not signature_ok(secret, META_TEXT + b" ", header)
    assert not signature_ok(b"other", META_TEXT, header)
    assert not signature_ok(secret, META_TEXT, header.replace("sha256=", "sha1="))
    assert not signature_ok(secret, META_TEXT, None) and not signature_ok(secret, META_TEXT, "")
    # the raw bytes count: the same JSON re-serialized is another body
    reserialized = json.dumps(json.loads(META_TEXT)).encode()
    assert not signature_ok(secret, reserialized, header)


def test_meta_payloads_are_parsed() -> None:
    delivery = parse_delivery(META_TEXT)
    (message,) = delivery.messages
    assert message.sender == "16505551234" and message.kind == "text"
    assert message.text == "Does it come in another color?" and message.timestamp == 1749416383
    assert message.profile_name == "Sheena Nelson" and message.id.startswith("wamid.")
    assert message.phone_number_id == "106540352242922"
    list_reply = parse_delivery(message_delivery("1555", {"type": "interactive", "interactive": {
        "type": "list_reply", "list_reply": {"id": "r1", "title": "Returns", "description": "x"}}},
        wamid="wamid.A")).messages[0]
    assert (list_reply.kind, list_reply.text) == ("interactive", "Returns")
    quick = parse_delivery(message_delivery("1555", {"type": "button", "button": {
        "payload": "YES", "text": "Yes please"}}, wamid="wamid.B")).messages[0]
    assert quick.text == "Yes please"
    voice = parse_delivery(message_delivery("1555", {"type": "audio", "audio": {
        "id": "1", "mime_type": "audio/ogg; codecs=opus", "voice": True}},
        wamid="wamid.C")).messages[0]
    assert (voice.kind, voice.text) == ("voice", None)
    sticker = parse_delivery(message_delivery("1555", {"type": "sticker", "sticker": {"id": "2"}},
                                              wamid="wamid.D")).messages[0]
    assert (sticker.kind, sticker.text) == ("sticker", None)
    blank = parse_delivery(text_delivery("1555", "   ", wamid="wamid.E")).messages[0]
    assert blank.text is None
    failed = parse_delivery(status_delivery("1555", "wamid.F", "failed"))
    assert failed.messages == [] and failed.statuses[0].error_codes == (131047,)
    # other webhook fields (account updates, templates) carry no messages
    other = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [
        {"field": "message_template_status_update", "value": {"event": "APPROVED"}}]}]}
    assert parse_delivery(other).messages == []
    for bad in (b"not json", b"[]", b'{"entry": "x"}'):
        with pytest.raises(ValueError):
            parse_delivery(bad)


def test_long_replies_split_between_sentences() -> None:
    assert split_message("") == [] and split_message("Short.") == ["Short."]
    sentences = [f"Sentence number {i} says something useful about the hub." for i in range(200)]
    text = " ".join(sentences)
    parts = split_message(text, 4096)
    assert len(parts) > 1 and all(len(p) <= 4096 for p in parts)
    assert all(p.endswith("hub.") for p in parts)
    assert " ".join(parts) == text
    # one sentence longer than a message: cut between words
    words = "word " * 2000
    parts = split_message(words, 4096)
    assert all(len(p) <= 4096 for p in parts) and " ".join(parts).split() == words.split()
    # no spaces at all: cut anywhere
    assert split_message("x" * 9000, 4096) == ["x" * 4096, "x" * 4096, "x" * 808]
    # paragraphs are boundaries too
    assert split_message("A" * 3000 + "\n\n" + "B" * 3000, 4096) == ["A" * 3000, "B" * 3000]


def test_groups_come_from_configuration() -> None:
    assert parse_groups(None) == {} and parse_groups("") == {}
    assert parse_groups("+1 555 0100=staff|beta, +44 20 7946 0000=vip") == {
        "15550100": ("staff", "beta"), "442079460000": ("vip",)}
    with pytest.raises(ValueError):
        parse_groups("+15550100")


@pytest.fixture
async def graph():
    server = await FakeGraph().start()
    yield server
    await server.close()


def client(graph: FakeGraph, **kwargs) -> GraphClient:
    return GraphClient(base_url=graph.base_url, version=graph.version,
                       phone_number_id=graph.phone_number_id, access_token=graph.token,
                       backoff_s=0.01, **kwargs)


async def test_graph_client_sends_the_documented_shapes(graph: FakeGraph) -> None:
    api = client(graph)
    try:
        wamid = await api.send_text("15550100", "Hello there")
        assert wamid.startswith("wamid.")
        await api.mark_read("wamid.IN1", typing=True)
        await api.send_template("15550100", "service_follow_up", "en_US")
        text, read, template = graph.calls
        assert text.path == f"/{graph.version}/{graph.phone_number_id}/messages"
        assert text.headers["authorization"] == f"Bearer {graph.token}"
        assert text.json == {"messaging_product": "whatsapp", "recipient_type": "individual",
                             "to": "15550100", "type": "text",
                             "text": {"preview_url": False, "body": "Hello there"}}
        assert read.json == {"messaging_product": "whatsapp", "status": "read",
                             "message_id": "wamid.IN1", "typing_indicator": {"type": "text"}}
        assert template.json["template"] == {"name": "service_follow_up",
                                             "language": {"code": "en_US"}}
        with pytest.raises(ValueError):
            await api.send_text("15550100", "x" * 4097)
    finally:
        await api.aclose()


async def test_graph_client_retries_what_may_be_retried_and_nothing_else(graph: FakeGraph) -> None:
    api = client(graph, attempts=4)
    try:
        graph.fail(503)
        graph.fail(429, retry_after=0.05)
        graph.fail(400, 130429)  # Meta's throughput limit
        assert (await api.send_text("15550100", "once")).startswith("wamid.")
        assert [c.status for c in graph.calls] == [503, 429, 400, 200]
        graph.calls.clear()
        graph.fail(500, times=4)
        with pytest.raises(GraphError) as failed:
            await api.send_text("15550100", "never")
        assert failed.value.retryable and len(graph.calls) == 4
        graph.calls.clear()
        graph.fail(400, 100)  # a bad request is not tried again
        with pytest.raises(GraphError) as bad:
            await api.send_text("15550100", "bad")
        assert not bad.value.retryable and len(graph.calls) == 1
        graph.calls.clear()
        graph.closed.add("15550100")
        with pytest.raises(WindowClosed):
            await api.send_text("15550100", "late")
        graph.closed.clear()
        graph.calls.clear()
        graph.drop = 1  # the request arrived; the answer never did
        with pytest.raises(GraphError):
            await api.send_text("15550100", "maybe sent")
        assert len(graph.calls) == 1  # not sent a second time
    finally:
        await api.aclose()


async def test_a_wrong_token_is_refused(graph: FakeGraph) -> None:
    api = GraphClient(base_url=graph.base_url, version=graph.version,
                      phone_number_id=graph.phone_number_id, access_token="wrong")
    try:
        with pytest.raises(GraphError) as refused:
            await api.send_text("15550100", "hi")
        assert refused.value.code == 190 and refused.value.status == 401
    finally:
        await api.aclose()


async def test_media_is_fetched_with_the_token_and_checked(graph: FakeGraph) -> None:
    api = client(graph)
    try:
        graph.media["2002"] = b"OggS-not-really-audio"
        assert await api.download_media("2002") == b"OggS-not-really-audio"
        info, data = graph.calls
        assert info.method == data.method == "GET"
        assert info.path == f"/{graph.version}/2002" and data.path == "/media/2002"
        assert data.headers["authorization"] == f"Bearer {graph.token}"
        with pytest.raises(GraphError) as missing:
            await api.download_media("3003")
        assert missing.value.status == 404 and not missing.value.retryable
        with pytest.raises(GraphError):
            await api.download_media("../me")  # only media ids reach the URL
    finally:
        await api.aclose()
