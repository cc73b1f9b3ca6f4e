"""The WhatsApp channel end to end: signed webhook deliveries in Meta's documented format
into a real gateway (real NATS, Chroma, embedding model, agents), replies out to a local
Graph API server (tests/fakes_whatsapp.py) that fails on demand.

One gateway serves the module; every test writes from a number of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import uvicorn
import websockets

from channels.whatsapp import WEBHOOK_PATH, WhatsAppChannel
from channels.whatsapp.line import RenderOptions
from core.natsd import EmbeddedNats, connect
from core.settings import Settings
from gateway.channel import load_channels
from gateway.events import (
    AgentJoined,
    AgentLeft,
    AgentRef,
    Delta,
    Done,
    Timings,
    UserMessage,
)
from tests.conftest import make_settings
from tests.fakes import FakeLLM
from tests.fakes_whatsapp import (
    FakeGraph,
    message_delivery,
    signed,
    status_delivery,
    text_delivery,
    voice_note,
)

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

SECRET = "meta-app-secret-for-tests"
ALICE = "alice-token-0123456789abcdef"
VERIFY = "verify-me-please"
_numbers = itertools.count(15550100001)
_wamids = itertools.count(1)


def number() -> str:
    """A fresh sender number (digits, as Meta sends ``wa_id``)."""
    return str(next(_numbers))


def wamid() -> str:
    return f"wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQUZB{next(_wamids):08d}+/=="


class Site:
    """The gateway, its WhatsApp channel, the fake Graph API and the fake model."""

    def __init__(self, base_url: str, app: Any, channel: WhatsAppChannel, graph: FakeGraph,
                 llm: FakeLLM) -> None:
        self.base_url = base_url
        self.app = app
        self.channel = channel
        self.graph = graph
        self.llm = llm
        self.http = httpx.AsyncClient(base_url=base_url, timeout=30)

    @property
    def service(self):
        assert self.channel.service is not None
        return self.channel.service

    async def post(self, payload: dict[str, Any], *, secret: str = SECRET) -> httpx.Response:
        body, headers = signed(payload, secret)
        return await self.http.post(WEBHOOK_PATH, content=body, headers=headers)

    def options(self, **changes: Any) -> None:
        """How new conversations render (each test uses its own number)."""
        current = self.service.options
        self.service.options = RenderOptions(**{**current.__dict__, **changes})

    def session(self, sender: str):
        return self.service.lines[sender].conversation.session


@contextlib.asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[tuple[str, Any, WhatsAppChannel]]:
    from gateway.app import create_app, server_options

    channels = load_channels(settings)
    whatsapp = next(c for c in channels if isinstance(c, WhatsAppChannel))
    app = create_app(settings, channels=channels)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           **server_options(settings)))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("gateway stopped during start-up")
        await asyncio.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", app, whatsapp
    finally:
        server.should_exit = True
        await task


def whatsapp_settings(tmp: Path, nats_url: str, graph: FakeGraph, llm: FakeLLM,
                      **overrides: Any) -> Settings:
    return make_settings(
        tmp, nats_url, llm_base_url=llm.base_url, llm_first_token_timeout_s=8.0,
        whatsapp_access_token=graph.token, whatsapp_phone_number_id=graph.phone_number_id,
        whatsapp_api_base=graph.base_url, whatsapp_app_secret=SECRET,
        whatsapp_verify_token=VERIFY, whatsapp_groups="+1 555 0199 999=staff|vip",
        whatsapp_template="service_follow_up", chat_rate_burst=20,
        supervisor_tokens=f"alice:{ALICE}", **overrides)


HUB_RESET = ("# Resetting the hub\n\n## Factory reset\nHold the reset button for 15 seconds "
             "until the LED flashes red, then wait 5 minutes while the hub restarts.")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def site(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Site]:
    tmp = tmp_path_factory.mktemp("whatsapp")
    graph = await FakeGraph().start()
    llm = FakeLLM()
    await llm.start()
    async with EmbeddedNats(tmp / "nats") as nats:
        settings = whatsapp_settings(tmp, nats.url, graph, llm)
        async with serve(settings) as (base_url, app, channel):
            s = Site(base_url, app, channel, graph, llm)
            res = await s.http.post("/v1/documents", params={"wait": "true"}, json={
                "event_type": "CREATE", "doc_id": "hub-reset", "version": 1,
                "content": HUB_RESET, "metadata": {"title": "Resetting the hub",
                                                   "acl": ["public"], "source": "cms"}})
            assert res.status_code == 200, res.text
            yield s
            await s.http.aclose()
    await llm.close()
    await graph.close()


@pytest.fixture(autouse=True)
def _defaults(site: Site) -> None:
    """Each test starts from a healthy API, a fast model and the default window."""
    site.graph.failures.clear()
    site.graph.drop = 0
    site.llm.mode = "ok"
    site.options(ack_delay_s=30.0, window_s=86400.0, template="service_follow_up")


async def test_verification_handshake(site: Site) -> None:
    ok = await site.http.get(WEBHOOK_PATH, params={
        "hub.mode": "subscribe", "hub.verify_token": VERIFY, "hub.challenge": "1158201444"})
    assert ok.status_code == 200 and ok.text == "1158201444"
    for params in ({"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "x"},
                   {"hub.mode": "unsubscribe", "hub.verify_token": VERIFY, "hub.challenge": "x"},
                   {}):
        refused = await site.http.get(WEBHOOK_PATH, params=params)
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "forbidden" and "x" not in refused.text


async def test_a_bad_or_missing_signature_is_refused_and_nothing_is_processed(site: Site) -> None:
    sender = number()
    payload = text_delivery(sender, "How do I factory reset the hub?", wamid=wamid())
    body, headers = signed(payload, SECRET)
    forged = await site.post(payload, secret="not-the-app-secret")
    missing = await site.http.post(WEBHOOK_PATH, content=body,
                                   headers={"Content-Type": "application/json"})
    tampered = await site.http.post(WEBHOOK_PATH, content=body.replace(b"hub", b"hug"),
                                    headers=headers)
    for res in (forged, missing, tampered):
        assert res.status_code == 401 and res.json()["error"]["code"] == "unauthorized"
    # a good delivery after them is answered: the refused ones never reached the inbox
    good = await site.post(text_delivery(number(), "hello?", wamid=wamid()))
    assert good.status_code == 200
    info = await site.service.store.js.stream_info("DUET_WHATSAPP_INBOX")
    assert info.state.messages <= 1
    assert sender not in site.service.lines
    assert site.graph.sent(sender, "read") == [] and site.graph.sent(sender) == []


async def test_a_question_is_read_answered_and_the_session_is_the_senders(site: Site) -> None:
    sender = number()
    message_id = wamid()
    res = await site.post(text_delivery(sender, "How do I factory reset the hub?",
                                        wamid=message_id))
    assert res.status_code == 200 and res.text == "ok"
    await site.graph.wait_for(lambda: len(site.graph.sent(sender)) >= 1)
    reads = [c for c in site.graph.calls if c.kind == "read" and c.json["message_id"] == message_id]
    assert reads and reads[0].json["typing_indicator"] == {"type": "text"}
    first_text = site.graph.sent(sender)[0]
    assert reads[0].at < first_text.at  # read (and typing) first, then the answer
    # the answer is ready well within the ack delay: one message, no acknowledgment
    await asyncio.sleep(0.5)
    texts = site.graph.texts(sender)
    assert len(texts) == 1 and "15 seconds" in texts[0]
    call = first_text.json
    assert call["messaging_product"] == "whatsapp" and call["recipient_type"] == "individual"
    assert call["text"]["preview_url"] is False
    session = site.session(sender)
    assert session.channel == "whatsapp" and session.customer_id == f"whatsapp:+{sender}"
    assert session.groups == ("public",)
    # the conversation goes on in the same session
    await site.post(text_delivery(sender, "thanks, and how long does that take?", wamid=wamid()))
    await site.graph.wait_for(lambda: len(site.graph.sent(sender)) >= 2)
    assert site.session(sender).id == session.id
    assert [role for role, _ in session.history][:4] == ["user", "assistant", "user", "assistant"]


async def test_a_slow_answer_sends_the_acknowledgment_first(site: Site) -> None:
    site.options(ack_delay_s=0.2)
    site.llm.mode, site.llm.delay_s = "slow_first_token", 2.0
    sender = number()
    await site.post(text_delivery(sender, "How do I factory reset the hub?", wamid=wamid()))
    await site.graph.wait_for(lambda: len(site.graph.sent(sender)) >= 2)
    ack, answer = site.graph.texts(sender)[:2]
    assert "15 seconds" not in ack and "15 seconds" in answer
    assert not answer.startswith(ack)
    # the typing indicator is shown again after the acknowledgment
    reads = [c for c in site.graph.calls if c.kind == "read"
             and c.at > site.graph.sent(sender)[0].at]
    assert reads


async def test_metas_retries_are_processed_once(site: Site) -> None:
    sender = number()
    message_id = wamid()
    payload = text_delivery(sender, "How do I factory reset the hub?", wamid=message_id)
    first, again = await asyncio.gather(site.post(payload), site.post(payload))
    assert first.status_code == again.status_code == 200
    # a later retry with a different envelope (new timestamp, extra fields) but the same id
    later = text_delivery(sender, "How do I factory reset the hub?", wamid=message_id,
                          timestamp=int(time.time()) + 5, name="Sheena N.")
    assert (await site.post(later)).status_code == 200
    await site.graph.wait_for(lambda: len(site.graph.sent(sender)) >= 1)
    await site.post(text_delivery(sender, "ok", wamid=wamid()))  # a marker after them
    await site.graph.wait_for(lambda: len(site.graph.sent(sender)) >= 2)
    await asyncio.sleep(0.5)
    session = site.session(sender)
    users = [e for e in session.log if e.type == "user_message"]
    assert [e.id for e in users] == [message_id, users[1].id]
    assert len(site.graph.texts(sender)) == 2


async def test_429_and_5xx_are_retried_and_the_reply_goes_once(site: Site) -> None:
    sender = number()
    site.graph.fail(500, times=1)
    site.graph.fail(429, retry_after=0.1)
    site.graph.fail(400, 131056)  # Meta's pair rate limit, sent as a 400
    await site.post(text_delivery(sender, "How do I factory reset the hub?", wamid=wamid()))
    await site.graph.wait_for(lambda: len(site.graph.sent(sender)) >= 1)
    await asyncio.sleep(0.5)
    assert len(site.graph.texts(sender)) == 1
    assert site.graph.failures == []


async def test_a_send_that_may_have_reached_meta_is_not_sent_again(site: Site) -> None:
    sender = number()
    site.graph.drop = 1  # the answer's request is read, then the connection closes
    await site.post(text_delivery(sender, "How do I factory reset the hub?", wamid=wamid()))
    await site.graph.wait_for(lambda: any(c.status == 0 for c in site.graph.calls
                                          if c.json.get("to") == sender))
    await site.post(text_delivery(sender, "and the LED?", wamid=wamid()))
    await site.graph.wait_for(lambda: len(site.graph.sent(sender)) >= 1)
    await asyncio.sleep(0.5)
    attempts = [c for c in site.graph.calls if c.json.get("to") == sender and c.kind == "text"]
    assert len(attempts) == 2  # the dropped one, then the next turn's answer: no resend


async def test_interactive_replies_voice_notes_and_other_types(site: Site) -> None:
    sender = number()
    button = {"type": "interactive", "interactive": {
        "type": "button_reply", "button_reply": {"id": "reset", "title": "Factory reset the hub"}}}
    await site.post(message_delivery(sender, button, wamid=wamid()))
    await site.graph.wait_for(lambda: len(site.graph.sent(sender)) >= 1)
    assert "15 seconds" in site.graph.texts(sender)[0]
    voice = {"type": "audio", "audio": {"mime_type": "audio/ogg; codecs=opus",
                                        "sha256": "abc", "id": "1234567890", "voice": True}}
    await site.post(message_delivery(sender, voice, wamid=wamid()))
    await site.graph.wait_for(lambda: len(site.graph.sent(sender)) >= 2)
    assert "voice message" in site.graph.texts(sender)[1]  # it could not be fetched
    image = {"type": "image", "image": {"mime_type": "image/jpeg", "sha256": "x", "id": "99"}}
    await site.post(message_delivery(sender, image, wamid=wamid()))
    await site.graph.wait_for(lambda: len(site.graph.sent(sender)) >= 3)
    assert "text messages" in site.graph.texts(sender)[2]
    kinds = [e.text for e in site.session(sender).log if e.type == "user_message"]
    assert kinds == ["Factory reset the hub", "[voice message]", "[image message]"]


async def test_a_voice_note_is_transcribed_and_answered(site: Site) -> None:
    sender = number()
    site.graph.media["1001"] = await asyncio.to_thread(
        voice_note, "How do I factory reset the hub?")
    voice = {"type": "audio", "audio": {"mime_type": "audio/ogg; codecs=opus",
                                        "sha256": "x", "id": "1001", "voice": True}}
    await site.post(message_delivery(sender, voice, wamid=wamid()))
    await site.graph.wait_for(lambda: len(site.graph.sent(sender)) >= 1, 60)
    assert "15 seconds" in site.graph.texts(sender)[0]
    (said,) = [e.text for e in site.session(sender).log if e.type == "user_message"]
    assert "factory reset" in said.lower() and "hub" in said.lower()
    reads = [c for c in site.graph.calls if c.kind == "read" and c.json.get("to") is None
             and c.json["message_id"] in {e.id for e in site.session(sender).log
                                          if e.type == "user_message"}]
    assert reads and reads[0].json.get("typing_indicator") == {"type": "text"}


async def test_statuses_are_counted_and_never_answered(site: Site) -> None:
    sender = number()
    for status in ("sent", "delivered", "read", "failed"):
        assert (await site.post(status_delivery(sender, wamid(), status))).status_code == 200
    metrics = site.channel.metrics
    assert metrics is not None

    for _ in range(600):
        if metrics.statuses.labels("failed")._value.get() >= 1:
            break
        await asyncio.sleep(0.05)
    assert metrics.statuses.labels("failed")._value.get() == 1
    assert sender not in site.service.lines and site.graph.sent(sender) == []


async def test_messages_to_another_business_number_are_not_answered(site: Site) -> None:
    other = number()
    payload = text_delivery(other, "hello", wamid=wamid())
    payload["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"] = "999"
    assert (await site.post(payload)).status_code == 200
    mine = number()
    await site.post(text_delivery(mine, "hello", wamid=wamid()))  # processed after it
    await site.graph.wait_for(lambda: len(site.graph.sent(mine)) >= 1)
    assert other not in site.service.lines and site.graph.sent(other, "read") == []


async def test_configured_numbers_get_their_groups(site: Site) -> None:
    sender = "15550199999"
    await site.post(text_delivery(sender, "hello", wamid=wamid()))
    await site.graph.wait_for(lambda: len(site.graph.sent(sender)) >= 1)
    assert set(site.session(sender).groups) == {"public", "staff", "vip"}


async def test_a_supervisors_words_go_out_through_the_graph_api(site: Site) -> None:
    sender = number()
    await site.post(text_delivery(sender, "How do I factory reset the hub?", wamid=wamid()))
    await site.graph.wait_for(lambda: len(site.graph.sent(sender)) >= 1)
    session = site.session(sender)
    agent = AgentRef(id="sup-1", name="Anna")
    await session.emit(AgentJoined(agent=agent))
    # a person's message as the supervisor socket emits it: a human delta and its done
    said = "Hi, I'm looking at your hub now."
    await session.emit(Delta(turn_id="h1", source="human", text=said))
    await session.emit(Done(turn_id="h1", text=said, timings_ms=Timings(total=0.0)))
    await session.emit(AgentLeft(agent=agent))
    await site.graph.wait_for(lambda: len(site.graph.sent(sender)) >= 4)
    await asyncio.sleep(0.3)
    joined, message, left = site.graph.texts(sender)[1:]
    assert "Anna" in joined and message == f"*Anna*: {said}" and "Anna" in left


async def test_a_supervisor_on_the_console_socket_talks_to_a_whatsapp_customer(
        site: Site) -> None:
    """The supervisor socket (docs/protocol.md §3) sees a WhatsApp conversation like any
    other; the person's words go out through the Graph API, once."""
    sender = number()
    await site.post(text_delivery(sender, "How do I factory reset the hub?", wamid=wamid()))
    await site.graph.wait_for(lambda: len(site.graph.sent(sender)) >= 1)
    sup = await websockets.connect(site.base_url.replace("http", "ws") + "/v1/supervisor",
                                   additional_headers={"Authorization": f"Bearer {ALICE}"})

    async def until(kind: str, **match: Any) -> dict[str, Any]:
        while True:
            item = json.loads(await asyncio.wait_for(sup.recv(), 60))
            if item["type"] == kind and all(item.get(k) == v for k, v in match.items()):
                return item

    try:
        await until("queue")
        conversation = site.service.lines[sender].conversation
        await conversation.handoff("wants a person")
        sid = conversation.session_id
        entry = await until("escalation", session_id=sid)
        assert entry["channel"] == "whatsapp" and entry["customer_id"] == f"whatsapp:+{sender}"
        await site.graph.wait_for(lambda: len(site.graph.sent(sender)) >= 2)  # "escalated"
        await sup.send(json.dumps({"type": "claim", "session_id": sid}))
        claimed = await until("conversation", session_id=sid)
        assert [line["role"] for line in claimed["transcript"]][:2] == ["customer", "bot"]
        await site.graph.wait_for(lambda: len(site.graph.sent(sender)) >= 3)  # "joined"
        await sup.send(json.dumps({"type": "message", "session_id": sid,
                                   "text": "Hi, Alice here: it takes about 5 minutes."}))
        await site.graph.wait_for(lambda: len(site.graph.sent(sender)) >= 4)
        # the customer answers on WhatsApp: it reaches the supervisor, the bot stays out
        await site.post(text_delivery(sender, "great, thank you", wamid=wamid()))
        said = await until("customer_message", session_id=sid)
        assert said["text"] == "great, thank you"
        await sup.send(json.dumps({"type": "release", "session_id": sid}))
        await until("released", session_id=sid)
        await site.graph.wait_for(lambda: len(site.graph.sent(sender)) >= 5)  # "left"
        await asyncio.sleep(0.5)
        texts = site.graph.texts(sender)
        assert len(texts) == 5, texts
        assert "alice" in texts[2] and "alice" in texts[4]
        assert texts[3] == "*alice*: Hi, Alice here: it takes about 5 minutes."
    finally:
        await sup.close()


async def test_outside_the_window_only_the_template_goes(site: Site) -> None:
    sender = number()
    await site.post(text_delivery(sender, "How do I factory reset the hub?", wamid=wamid()))
    await site.graph.wait_for(lambda: len(site.graph.sent(sender)) >= 1)
    renderer = site.service.lines[sender]
    renderer.last_inbound = time.time() - 86400 - 60  # the customer wrote a day ago
    await renderer.conversation.session.emit(Delta(source="human", text="Any luck?"))
    await renderer.conversation.session.emit(Delta(source="human", text="Hello?"))
    await site.graph.wait_for(lambda: len(site.graph.sent(sender, "template")) >= 1)
    await asyncio.sleep(0.3)
    template = site.graph.sent(sender, "template")
    assert len(template) == 1 and template[0].json["template"] == {
        "name": "service_follow_up", "language": {"code": "en_US"}}
    assert len(site.graph.texts(sender)) == 1
    # Meta's own answer for a closed window (131047) is handled the same way
    other = number()
    await site.post(text_delivery(other, "hello", wamid=wamid()))
    await site.graph.wait_for(lambda: len(site.graph.sent(other)) >= 1)
    site.graph.closed.add(other)
    await site.session(other).emit(Delta(source="human", text="Still there?"))
    await site.graph.wait_for(lambda: len(site.graph.sent(other, "template")) >= 1)
    assert len(site.graph.texts(other)) == 1


async def test_the_gateways_own_words_in_a_turn_go_once(site: Site) -> None:
    """A turn the gateway answers itself (a ``system`` delta and its ``done``, e.g. while
    the customer waits for a person) is one message."""
    sender = number()
    await site.post(text_delivery(sender, "hello", wamid=wamid()))
    await site.graph.wait_for(lambda: len(site.graph.sent(sender)) >= 1)
    session = site.session(sender)
    said = "A person will be with you shortly; you are number 2 in the queue."
    await session.emit(UserMessage(turn_id="t-wait", text="anyone there?"))
    await session.emit(Delta(turn_id="t-wait", source="system", text=said))
    await session.emit(Done(turn_id="t-wait", text=said, timings_ms=Timings(total=1.0)))
    # a message while a person holds the conversation: an empty turn, nothing sent
    await session.emit(UserMessage(turn_id="t-held", text="hello?"))
    await session.emit(Done(turn_id="t-held", text="", timings_ms=Timings(total=1.0)))
    await session.emit(Delta(source="system", text="marker"))
    await site.graph.wait_for(lambda: len(site.graph.sent(sender)) >= 3)
    await asyncio.sleep(0.3)
    assert site.graph.texts(sender)[1:] == [said, "marker"]


async def test_long_answers_are_split_between_sentences(site: Site) -> None:
    sender = number()
    await site.post(text_delivery(sender, "hello", wamid=wamid()))
    await site.graph.wait_for(lambda: len(site.graph.sent(sender)) >= 1)
    sentence = "The hub keeps every setting in its own memory until you reset it. "
    long_text = sentence * 100  # 6,600 characters
    await site.session(sender).emit(Delta(source="system", text=long_text))
    await site.graph.wait_for(lambda: len(site.graph.sent(sender)) >= 3)
    parts = site.graph.texts(sender)[1:]
    assert all(len(p) <= 4096 for p in parts) and all(p.endswith(".") for p in parts)
    assert " ".join(parts) == long_text.strip()


async def test_a_delivery_persisted_before_a_restart_is_processed_after_it(
        tmp_path: Path) -> None:
    """What the webhook accepted is in JetStream before Meta gets its 200: a gateway that
    dies before processing it processes it when it comes back."""
    graph = await FakeGraph().start()
    llm = FakeLLM()
    await llm.start()
    sender = number()
    try:
        async with EmbeddedNats(tmp_path / "nats") as nats:
            settings = whatsapp_settings(tmp_path, nats.url, graph, llm)
            from channels.whatsapp.store import WhatsAppStore

            nc = await connect(nats.url, name="meta")
            store = await WhatsAppStore.open(nc.jetstream(), dedup_ttl_s=3600, lines_ttl_s=3600)
            body, _ = signed(text_delivery(sender, "hello there", wamid=wamid()), SECRET)
            await store.enqueue(body)  # exactly what the webhook does before its 200
            await nc.close()
            async with serve(settings):
                await graph.wait_for(lambda: len(graph.sent(sender)) >= 1)
    finally:
        await llm.close()
        await graph.close()
